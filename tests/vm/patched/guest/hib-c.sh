# Scenario "patched_hib_c": kernel C, booted fresh from B, confined to the
# same window, with the image in its initramfs: 'kexec-py resume' +
# 'kexec-py exec' enter A at its jump-back entry.
step c-meminfo sed -n '1,3p' /proc/meminfo
step c-image ls -l /image.bin
step c-resume kexec-py --json resume /image.bin
echo "@@EXEC uptime=$(now)"
kexec-py exec

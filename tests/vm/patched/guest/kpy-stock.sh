# Scenario "patched_kpy_stock": Debian's kernel has no /proc/kexec_pgmap:
# kexec-py refuses staged loads with its message, and nothing is loaded.
K="/usr/bin/python3 /patched/kstage.py"
step kpy-status kexec-py --json status
step kpy-load kexec-py load --staged=always /boot/vmlinuz --initrd /boot/stage2.cpio.gz \
    --append "console=ttyS0"
step kpy-loaded-after-load cat /sys/kernel/kexec_loaded
step kpy-mkcore $K mkcore /tmp/kernel.core marker 60
entry=$(cat /tmp/kernel.core.entry)
step kpy-resume kexec-py resume --entry "$entry" /tmp/kernel.core
step kpy-loaded-after-resume cat /sys/kernel/kexec_loaded
step kpy-pgmap kexec-py pgmap

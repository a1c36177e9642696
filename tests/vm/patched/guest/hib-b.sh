# Scenario "patched_hib_b": the hibernating kernel B, entered from A by a
# kexec jump, confined to the window.  /proc/vmcore (from the elfcorehdr=
# kexec-py injected) must hold A's markers at their physical addresses;
# 'kexec-py save-image', then kernel C (hib-c.sh) is booted with the image
# in its initramfs, confined to the same window.
H="/usr/bin/python3 /patched/hib.py"
seed=$(param kexec_py.seed)
w0=$(param kexec_py.w0)
w1=$(param kexec_py.w1)
wmax=$(printf '%#x' $((w1 - 1)))
step b-cmdline cat /proc/cmdline
step b-meminfo sed -n '1,3p' /proc/meminfo
step b-vmcore $H vmcore "$seed" "$(param kexec_py.in)" "$(param kexec_py.out)" "$w0" "$w1"
# rootfs is a tmpfs capped at half of RAM: the image may take more
mount -o remount,size=90% /
step b-save kexec-py --json save-image /tmp/image.bin
step b-census $H census /tmp/image.bin "$w0" "$w1"
step b-mkinitrd $H mkinitrd /boot/hib-c.img /tmp/image.bin /tmp/c.img
# C: confined to the same window (memmap= as B's), its initramfs root a
# ramfs (rootfstype=): a tmpfs root is capped at half of the RAM left
# while the initrd is still reserved, which the image does not fit in
step b-load kexec-py --json load -c --mem-min "$w0" --mem-max "$wmax" --initrd /tmp/c.img \
    --append "console=ttyS0 panic=-1 rootfstype=ramfs kexec_py.scenario=patched_hib_c $($H confine)" \
    /boot/vmlinuz
rm -f /tmp/c.img
echo "@@EXEC uptime=$(now)"
kexec-py exec

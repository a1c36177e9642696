#!/bin/sh
# /init of the kexec'd (or crash) kernel in the kexec-py QEMU tests: prove
# that it booted, with the command line kexec-py gave it, then power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# keep kernel messages from splitting the @@STAGE2 lines below
dmesg -n 1 2>/dev/null
read -r up _ < /proc/uptime
echo "@@STAGE2 uptime=$up"
echo "@@STAGE2 kernel=$(uname -r)"
echo "@@STAGE2 cmdline=$(cat /proc/cmdline)"
for w in $(cat /proc/cmdline); do
    case "$w" in KEXEC_PY_MARKER=*) echo "@@STAGE2 marker=${w#*=}" ;; esac
done
if [ -e /proc/vmcore ]; then
    echo "@@STAGE2 vmcore=$(stat -c %s /proc/vmcore)"
    echo "@@STAGE2 vmcore_magic=$(head -c 4 /proc/vmcore | od -An -c | tr -d ' ')"
fi
echo "@@STAGE2 memtotal=$(sed -n 's/^MemTotal: *//p' /proc/meminfo | tr -d ' ')"
echo "@@STAGE2 done"
poweroff -f

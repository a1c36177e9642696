# Scenario "crash" (issue 2), sourced by /init: a crash kernel loaded with
# kexec-py load -p boots on a panic.  Needs crashkernel= (the test boots
# with 1 GiB and crashkernel=256M).
#
# Command line: kexec_py.marker=M (echoed by the crash kernel).

K=/boot/vmlinuz
I=/boot/stage2.cpio.gz
marker=$(param kexec_py.marker) || marker=none
A="console=ttyS0 panic=-1 nr_cpus=1 reset_devices KEXEC_PY_MARKER=$marker"

step status-json-initial kexec-py --json status
step crash-size cat /sys/kernel/kexec_crash_size

# load -p, unload -p clears it, load -p again
step load-p-first kexec-py load -p -s "$K" --initrd "$I" --append "$A"
step crash-loaded-first cat /sys/kernel/kexec_crash_loaded
step unload-p kexec-py unload -p
step crash-loaded-unloaded cat /sys/kernel/kexec_crash_loaded
step load-p kexec-py load -p -s "$K" --initrd "$I" --append "$A"
step status-json-loaded kexec-py --json status
step crash-loaded cat /sys/kernel/kexec_crash_loaded
step normal-loaded cat /sys/kernel/kexec_loaded

echo "@@CRASH uptime=$(now)"
echo c > /proc/sysrq-trigger
echo "@@STEP sysrq-returned rc=1"

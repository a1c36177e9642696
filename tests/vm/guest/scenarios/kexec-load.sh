# Scenario "kexec-load" (issue 3), sourced by /init: kexec-py loads a
# kernel through kexec_load (-c: kexec-py parses the image and places the
# segments) and kexec-py exec boots it; the second kernel's /init
# (stage2-init.sh) prints the marker.  kexec-tools is deleted from the
# guest before the proof, so the load cannot lean on it.
#
# Command line: kexec_py.marker=M (echoed by the second kernel),
# kexec_py.kernel=PATH (default /boot/vmlinuz; /boot/vmlinux for the ELF
# case, added as an extra file), kexec_py.reps=N (N rounds of the timing of
# kexec -c -l, kexec-py load -c, kexec -s -l and kexec-py load -s before the
# proof, with kexec-tools still there; default 0), kexec_py.auto=1 (also load
# without -c first, traced, then unload).

K=$(param kexec_py.kernel) || K=/boot/vmlinuz
I=/boot/stage2.cpio.gz
marker=$(param kexec_py.marker) || marker=none
reps=$(param kexec_py.reps) || reps=0
auto=$(param kexec_py.auto) || auto=0
A="console=ttyS0 panic=-1 KEXEC_PY_MARKER=$marker"

step sizes stat -c "%n %s" "$K" "$I"
step memtotal sed -n 's/^MemTotal: *//p' /proc/meminfo

# Timing, with kexec-tools still in the guest: the peer and kexec-py
# alternately, same kernel, initrd and command line.  kexec-py's own time
# splits into start-up (~ unload), the plan (--dry-run --json) and the call.
i=0
while [ $i -lt "$reps" ]; do
    timed kexec-tools-load-c kexec -c -l "$K" --initrd="$I" --append="$A"
    timed kexec-tools-unload kexec -u
    # -i: no digest of the segments, as kexec-py's entry stub has none
    timed kexec-tools-load-ci kexec -i -c -l "$K" --initrd="$I" --append="$A"
    timed kexec-tools-unload kexec -u
    timed kexec-py-load-c kexec-py load -c "$K" --initrd "$I" --append "$A"
    timed kexec-py-plan-c kexec-py --json load -c "$K" --initrd "$I" --append "$A" --dry-run
    timed kexec-py-unload kexec-py unload
    timed kexec-tools-load-s kexec -s -l "$K" --initrd="$I" --append="$A"
    timed kexec-tools-unload kexec -u
    timed kexec-py-load-s kexec-py load -s "$K" --initrd "$I" --append "$A"
    timed kexec-py-unload kexec-py unload
    i=$((i + 1))
done

# From here on there is no kexec-tools in this guest.
rm -f /usr/sbin/kexec /sbin/kexec /usr/bin/kexec /bin/kexec
step no-kexec-tools sh -c '! command -v kexec'

step loaded-initial cat /sys/kernel/kexec_loaded
step inspect kexec-py --json inspect "$K"
step dry-run kexec-py load -c "$K" --initrd "$I" --append "$A" --dry-run
step dry-run-json kexec-py --json load -c "$K" --initrd "$I" --append "$A" --dry-run
step loaded-after-dry-run cat /sys/kernel/kexec_loaded

if [ "$auto" = 1 ]; then
    # without -c: the default picks kexec_load for what kexec_file_load cannot take
    step load-auto kexec-py -vv load "$K" --initrd "$I" --append "$A"
    step loaded-auto cat /sys/kernel/kexec_loaded
    step unload-auto kexec-py unload
    step loaded-auto-unloaded cat /sys/kernel/kexec_loaded
fi

# the proof: load -c (every system call traced on stderr), then exec
step load kexec-py -vv load -c "$K" --initrd "$I" --append "$A"
step loaded cat /sys/kernel/kexec_loaded
step status-json-loaded kexec-py --json status
echo "@@EXEC uptime=$(now)"
step exec kexec-py exec

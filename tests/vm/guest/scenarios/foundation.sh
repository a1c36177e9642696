# Scenario "foundation" (issue 2), sourced by /init: kexec-py against the
# real kexec_file_load of the running kernel, then a kexec into the same
# kernel whose /init (stage2-init.sh) prints the marker.
#
# Command line: kexec_py.marker=M (echoed by the second kernel),
# kexec_py.reps=N (timing repetitions, default 3).

K=/boot/vmlinuz
I=/boot/stage2.cpio.gz
marker=$(param kexec_py.marker) || marker=none
reps=$(param kexec_py.reps) || reps=3
A="console=ttyS0 panic=-1 KEXEC_PY_MARKER=$marker"
# util-linux's, by path: busybox sh would run its own setpriv applet
SETPRIV=/usr/bin/setpriv

step version kexec-py --version
step kexec-tools-version kexec --version
step status kexec-py status
step status-json-initial kexec-py --json status

# The peer and kexec-py, alternately, with the same kernel, initrd and
# command line: the kexec_file_load call is the same, the rest is tool cost.
i=0
while [ $i -lt "$reps" ]; do
    timed kexec-tools-load kexec -s -l "$K" --initrd="$I" --append="$A"
    timed kexec-tools-unload kexec -u
    timed kexec-py-load kexec-py load -s "$K" --initrd "$I" --append "$A"
    timed kexec-py-unload kexec-py unload
    timed kexec-py-version kexec-py --version
    timed kexec-py-status kexec-py status
    timed python-start python3 -c pass
    timed python-import-click python3 -c "import click"
    i=$((i + 1))
done

# where kexec-py's start-up time goes (recorded by the test, not asserted)
step importtime-load python3 -X importtime /usr/bin/kexec-py load -s "$K" --initrd "$I" \
    --append "$A"
step importtime-unload kexec-py unload

# A file that is not a kernel: exit 1, a clear message, nothing loaded.
echo "this is not a kernel" > /tmp/not-a-kernel
step not-a-kernel kexec-py load -s /tmp/not-a-kernel --initrd "$I" --append "$A"
step not-a-kernel-loaded cat /sys/kernel/kexec_loaded

# Without CAP_SYS_BOOT: as another user, and as root with the capability
# dropped from the bounding set (util-linux setpriv).
step eperm-nonroot $SETPRIV --reuid=65534 --regid=65534 --clear-groups \
    kexec-py load -s "$K" --initrd "$I" --append "$A"
step eperm-nocap $SETPRIV --bounding-set=-sys_boot \
    kexec-py load -s "$K" --initrd "$I" --append "$A"
step eperm-nocap-status $SETPRIV --bounding-set=-sys_boot kexec-py --json status
step eperm-loaded cat /sys/kernel/kexec_loaded

# load, then unload clears the state
step unload-load kexec-py load -s "$K" --initrd "$I" --append "$A"
step unload-loaded cat /sys/kernel/kexec_loaded
step unload kexec-py unload
step unload-status-json kexec-py --json status
step unload-after cat /sys/kernel/kexec_loaded

# load, status, exec: the second kernel's /init prints the marker
step load kexec-py load -s "$K" --initrd "$I" --append "$A"
step status-json-loaded kexec-py --json status
echo "@@EXEC uptime=$(now)"
step exec kexec-py exec

#!/bin/sh
# /init of the first kernel in the kexec-py QEMU tests (run by busybox sh).
#
# Mounts the pseudo file systems, refuses a truncated initramfs, then runs
# /scenarios/$SCENARIO.sh where SCENARIO comes from kexec_py.scenario= on the
# kernel command line.  Scenarios report through the helpers below as
# "@@..." lines on the serial console; tests/vm/harness.py parses them.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run /root

# Value of NAME=... on the kernel command line (first one wins).
param() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}

now() { read -r up _ < /proc/uptime; echo "$up"; }

# step NAME CMD...: run CMD, report its exit status, stdout and stderr.
step() {
    _name=$1; shift
    "$@" >/tmp/step.out 2>/tmp/step.err </dev/null
    _rc=$?
    echo "@@STEP $_name rc=$_rc"
    awk -v p="@@O $_name|" '{ print p $0 }' /tmp/step.out
    awk -v p="@@E $_name|" '{ print p $0 }' /tmp/step.err
    echo "@@END $_name"
    return $_rc
}

# timed LABEL CMD...: run CMD with its output discarded, report the wall
# time from /proc/uptime (10 ms resolution) around it.
timed() {
    _label=$1; shift
    _t0=$(now)
    "$@" >/tmp/timed.out 2>&1 </dev/null
    _rc=$?
    _t1=$(now)
    echo "@@TIME $_label t0=$_t0 t1=$_t1 rc=$_rc"
    [ $_rc = 0 ] || awk -v p="@@E $_label|" '{ print p $0 }' /tmp/timed.out
    return $_rc
}

fatal() { echo "@@FATAL $*"; poweroff -f; }

echo "@@INIT uptime=$(now) kernel=$(uname -r)"
bad=$(dmesg | grep -i "initramfs unpacking failed")
[ -z "$bad" ] || fatal "initramfs: $bad"

scenario=$(param kexec_py.scenario) || fatal "no kexec_py.scenario= on the command line"
[ -f "/scenarios/$scenario.sh" ] || fatal "no scenario $scenario in /scenarios"
# kernel messages would interleave with the steps' output from here on
[ "$(param kexec_py.quiet)" = 0 ] || dmesg -n 1
echo "@@SCENARIO $scenario"
. "/scenarios/$scenario.sh"
echo "@@DONE uptime=$(now)"
poweroff -f

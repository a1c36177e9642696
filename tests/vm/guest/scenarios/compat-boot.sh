# Scenario "compat-boot" (issue 7), sourced by /init: the kexec-tools
# compatibility rows that boot a second kernel, one boot each.
#
# Command line: kexec_py.tool=tools|py (kexec-tools, or kexec-py invoked as
# kexec), kexec_py.mode=e (kexec -l, then kexec -e) or f (kexec -f),
# kexec_py.marker=M (echoed by the second kernel).

K=/boot/vmlinuz
I=/boot/stage2.cpio.gz
marker=$(param kexec_py.marker) || marker=none
tool=$(param kexec_py.tool) || fatal "no kexec_py.tool="
mode=$(param kexec_py.mode) || fatal "no kexec_py.mode="
A="console=ttyS0 panic=-1 KEXEC_PY_MARKER=$marker"
mkdir -p /tmp/py
ln -s /usr/bin/kexec-py /tmp/py/kexec
case "$tool" in
tools) KEXEC=/usr/sbin/kexec ;;
py) KEXEC=/tmp/py/kexec ;;
*) fatal "kexec_py.tool=$tool" ;;
esac

case "$mode" in
e)
    step load "$KEXEC" -l "$K" --initrd="$I" --append="$A"
    step loaded cat /sys/kernel/kexec_loaded
    echo "@@EXEC uptime=$(now)"
    step exec "$KEXEC" -e
    ;;
f)
    echo "@@EXEC uptime=$(now)"
    step force "$KEXEC" -f "$K" --initrd="$I" --append="$A"
    ;;
*) fatal "kexec_py.mode=$mode" ;;
esac

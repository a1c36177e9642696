# Scenario "compat" (issue 7), sourced by /init: the kexec-tools
# compatibility table.  Each row runs kexec-tools (/usr/sbin/kexec) and
# kexec-py invoked as kexec (a symlink named kexec to /usr/bin/kexec-py) with
# the same arguments from the same starting state, and reports, per tool,
# the step "ROW.TOOL" (exit status, stdout, stderr) and "ROW.TOOL.state"
# (/sys/kernel/kexec_loaded and kexec_crash_loaded afterwards).  No row
# boots a second kernel (compat-boot.sh does).  Boot with crashkernel=.

K=/boot/vmlinuz
I=/boot/stage2.cpio.gz
A="console=ttyS0 panic=-1 KEXEC_PY_MARKER=compat"
TOOLS=/usr/sbin/kexec
mkdir -p /tmp/py
ln -s /usr/bin/kexec-py /tmp/py/kexec
PY=/tmp/py/kexec
head -c 20000 /dev/urandom > /tmp/junk
# kexec-tools runs /sbin/shutdown -r now after a load without -l or -e
rm -f /sbin/shutdown
printf '#!/bin/sh\necho "@@SHUTDOWN $*"\nexit 0\n' > /sbin/shutdown
chmod 755 /sbin/shutdown

state() { echo "$(cat /sys/kernel/kexec_loaded) $(cat /sys/kernel/kexec_crash_loaded)"; }

reset() {
    $TOOLS -u >/dev/null 2>&1
    $TOOLS -p -u >/dev/null 2>&1
}

setup() {
    case "$1" in
    none) ;;
    loaded) $TOOLS -s -l "$K" --initrd="$I" --append="$A" ;;
    crash) $TOOLS -s -p "$K" --initrd="$I" --append="$A nr_cpus=1" ;;
    esac
}

# row NAME SETUP ARGS...: both tools, the same start, the same arguments
row() {
    _row=$1 _setup=$2
    shift 2
    for _tool in tools py; do
        reset
        setup "$_setup" >/dev/null 2>&1
        if [ "$_tool" = tools ]; then _bin=$TOOLS; else _bin=$PY; fi
        step "$_row.$_tool" "$_bin" "$@"
        step "$_row.$_tool.state" state
    done
}

step versions sh -c "$TOOLS --version; $PY --version"
row load-s none -s -l "$K" --initrd="$I" --append="$A"
row load-c none -c -l "$K" --initrd="$I" --append="$A"
row load-default none -l "$K" --initrd="$I" --append="$A"
row load-a none -a -l "$K" --initrd="$I" --append="$A"
row load-aliases none -sl "$K" --ramdisk "$I" --command-line "$A"
row load-reuse none -s -l "$K" --initrd="$I" --reuse-cmdline --append=x=1
row load-memrange none -c -l --mem-min=0x1000000 --mem-max=0x1fffffff "$K" --initrd="$I" \
    --append="$A"
row load-debug none -d -s -l "$K" --initrd="$I" --append="$A"
row load-type none -l -t bzImage64 "$K" --initrd="$I" --append="$A"
row load-type-wrong none -l -t elf-x86_64 "$K"
row load-missing none -l /nonexistent/vmlinuz
row load-junk none -l /tmp/junk
row load-junk-s none -s -l /tmp/junk
row load-nokernel none -l
row panic-s none -s -p "$K" --initrd="$I" --append="$A nr_cpus=1"
row panic-default none -p "$K" --initrd="$I" --append="$A nr_cpus=1"
row unload loaded -u
row unload-s loaded -s -u
row unload-c loaded -c -u
row unload-p crash -p -u
row status-none none -S
row status-crash crash -S
row status-crash-p crash -S -p
row status-l-none none -S -l
row status-l-loaded loaded -S -l
row bogus none --bogus
row bogus-short none -Z
row missing-value none -l -t
row unimplemented none -l --reuseinitrd "$K"
row preserve-nomax none --load-preserve-context "$K"
row print-ckr-size none --print-ckr-size
row version none -v
row shutdown none "$K" --initrd="$I" --append="$A" -x
row exec-nothing none -e
row exec-loader-option loaded -e --append=x
reset

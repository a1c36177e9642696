# Scenario "patched_kpy": kexec-py itself on the patched kernel.
#  5. kexec jump: kexec-py loads a one-page ELF (incq counter; ret) with
#     --load-preserve-context, in one call and staged; 'kexec-py exec'
#     jumps there and back; the counter went up.
#  2. kexec-py's executor with a KS_mid the kernel refuses: nothing stays
#     loaded.  'kexec-py resume --staged=always' of a 60-PT_LOAD core: four
#     calls or more; the map parses.
#  1. 'kexec-py load --staged=always --segments-per-call 1' of the kernel +
#     initrd (KS_start, two KS_mid, KS_final); the map.  Then staged loads
#     that fail (a KS_mid the kernel refuses) or are interrupted (SIGINT,
#     SIGTERM): the kernel stays loaded and its map still matches memory;
#     'kexec-py exec' into it: its /init prints the marker.
K="/usr/bin/python3 /patched/kstage.py"
m=$(param kexec_py.marker)
args="console=ttyS0 panic=-1 KEXEC_PY_MARKER=$m"
J="kexec-py --json load -c -t elf-x86_64 --load-preserve-context --entry 0x400000 --mem-min 0x400000 --mem-max 0x7fffff"

step kpy-status kexec-py --json status
step kpy-mkjump $K mkjump /tmp/jump.elf 0x400000
step kpy-jump-load $J /tmp/jump.elf
step kpy-jump-exec kexec-py --json exec
step kpy-jump-check $K jump-check 0x400 1
step kpy-jump-unload kexec-py unload
step kpy-jump-staged-load $J --staged=always /tmp/jump.elf
step kpy-jump-staged-exec kexec-py --json exec
step kpy-jump-staged-check $K jump-check 0x400 1
step kpy-jump-staged-unload kexec-py unload

step kpy-failed-mid $K kpy-failed-mid 0
step kpy-mkcore $K mkcore /tmp/kernel.core "$m" 60
entry=$(cat /tmp/kernel.core.entry)
step kpy-resume kexec-py --json resume --staged=always --entry "$entry" /tmp/kernel.core
step kpy-resume-pgmap $K pgmap
step kpy-resume-unload kexec-py unload
rm -f /tmp/kernel.core /tmp/kernel.core.entry

step kpy-load kexec-py --json load --staged=always --segments-per-call 1 /boot/vmlinuz \
    --initrd /boot/stage2.cpio.gz --append "$args"
step kpy-loaded cat /sys/kernel/kexec_loaded
step kpy-pgmap-raw kexec-py pgmap --raw
step kpy-pgmap-json kexec-py --json pgmap
step kpy-pgmap-check $K pgmap
step kpy-failed-kept $K kpy-failed-mid 1
step kpy-interrupted-kept $K kpy-interrupted 1
step kpy-pgmap-check-kept $K pgmap
if [ "$(cat /sys/kernel/kexec_loaded)" = 1 ]; then
    echo "@@EXEC uptime=$(now)"
    kexec-py exec
fi

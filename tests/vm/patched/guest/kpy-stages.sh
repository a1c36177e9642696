# Scenario "patched_kpy_stages": kexec-py's planner and executor load the
# kernel + initrd, cut into 60 PT_LOADs of an ELF core, in four calls or
# more (KS_start, KS_mid..., KS_final), with 'kexec-py pgmap' checked
# after every call; then the exec: the kernel's /init prints the marker.
K="/usr/bin/python3 /patched/kstage.py"
step kpy-mkcore $K mkcore /tmp/kernel.core "$(param kexec_py.marker)" 60
entry=$(cat /tmp/kernel.core.entry)
if step kpy-stages $K kpy-stages /tmp/kernel.core "$entry"; then
    echo "@@EXEC uptime=$(now)"
    kexec-py exec
fi

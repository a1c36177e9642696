# Scenario "patched_kstage": sourced by tests/vm/guest/init.sh (step, param,
# now) in the patched kernel, booted with mem= below the VM's RAM.  Raw
# kexec_load checks of the multi-stage load (kstage.py), kexec jumps there
# and back, then a staged load of the kernel in /boot/vmlinuz and the exec
# into it: its /init prints the marker.
K="/usr/bin/python3 /patched/kstage.py"
step kstage-synthetic $K synthetic
step kstage-jump-classic $K jump classic
step kstage-jump-staged $K jump staged
if step kstage-load $K load "$(param kexec_py.marker)"; then
    echo "@@EXEC uptime=$(now)"
    $K exec
fi

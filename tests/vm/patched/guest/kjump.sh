# Scenario "patched_kjump": the two kexec jumps of kstage.sh alone, run with
# two CPUs (the jump takes CPU 1 offline and brings it back).
K="/usr/bin/python3 /patched/kstage.py"
step kstage-jump-classic $K jump classic
step kstage-jump-staged $K jump staged

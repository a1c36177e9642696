# Scenario "patched_kstage_stock": sourced by tests/vm/guest/init.sh in
# Debian's stock kernel: the stage bits are refused and nothing is loaded.
step kstage-stock /usr/bin/python3 /patched/kstage.py stock

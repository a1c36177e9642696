# Scenario "patched_hib", kernel A (issue 6 scenarios 3 and 4): markers at
# physical addresses inside and outside the window, a marker file, a
# counter loop; 'kexec-py load --staged --load-preserve-context' of the
# hibernating kernel B confined to the window, 'kexec-py exec'.  B (hib-b.sh)
# checks /proc/vmcore, saves the image and boots kernel C (hib-c.sh), which
# resumes the image: A's 'kexec-py exec' returns here, and A checks that it
# carried on.
H="/usr/bin/python3 /patched/hib.py"
seed=$(param kexec_py.seed)
set -- $($H window $(param kexec_py.window | tr : ' '))
w0=$1 w1=$2
wmax=$(printf '%#x' $((w1 - 1)))
echo "hibernation file of A, seed $seed" > /root/hib-marker

# the counter: "N UPTIME" in /tmp/counter, five times a second
( i=0
  while :; do
      i=$((i + 1))
      echo "$i $(now)" > /tmp/counter.new && mv /tmp/counter.new /tmp/counter
      usleep 200000
  done ) </dev/null >/dev/null 2>&1 &
counter_pid=$!

$H hold "$seed" "$w0" "$w1" 16 /tmp/markers </dev/null >/tmp/hold.out 2>&1 &
hold_pid=$!
i=0
while [ ! -e /tmp/markers ] && [ $i -lt 600 ] && kill -0 $hold_pid 2>/dev/null; do
    usleep 100000; i=$((i + 1))
done
step a-markers cat /tmp/markers /tmp/hold.out
pin=$(sed -n 's/^in //p' /tmp/markers)
pout=$(sed -n 's/^out //p' /tmp/markers)

step a-window echo "$w0 $w1"
step a-load kexec-py --json load --staged=always --load-preserve-context \
    --mem-min "$w0" --mem-max "$wmax" --initrd /boot/hib-b.img \
    --append "console=ttyS0 panic=-1 kexec_py.scenario=patched_hib_b kexec_py.seed=$seed kexec_py.w0=$w0 kexec_py.w1=$w1 kexec_py.in=$pin kexec_py.out=$pout" \
    /boot/vmlinuz
# what A no longer needs goes (init_on_free=1 zeroes it: it stays out of the image)
rm -f /boot/hib-b.img /boot/vmlinuz /boot/stage2.cpio.gz
step a-meminfo sed -n '1,3p' /proc/meminfo
step a-cpus-before cat /sys/devices/system/cpu/online
step a-counter-before $H counter /tmp/counter
echo "@@EXEC uptime=$(now)"
step a-exec kexec-py --json exec
echo "@@HIB-A-BACK uptime=$(now)"
step a-counter-after $H counter /tmp/counter
usleep 1500000
step a-counter-later $H counter /tmp/counter
step a-counter-alive kill -0 $counter_pid
step a-marker-file cat /root/hib-marker
step a-verify $H verify
step a-cpus-after cat /sys/devices/system/cpu/online
# B is still loaded, but its entry is now what C left on the stack (0): a
# second exec would jump there; unload it
step a-loaded-after cat /sys/kernel/kexec_loaded
step a-unload kexec-py unload
kill $counter_pid
echo "@@HIB-A-DONE seed=$seed"

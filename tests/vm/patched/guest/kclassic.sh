# Scenario "patched_kclassic": one-call loads still work on the patched
# kernel (they go through the new page map too).  kexec_py.how=file loads
# with kexec_file_load (kexec-py load -s), how=tools with kexec_load
# (kexec-tools' kexec -l); then the map parses and the exec boots
# /boot/vmlinuz, whose /init prints the marker.
args="console=ttyS0 panic=-1 KEXEC_PY_MARKER=$(param kexec_py.marker)"
case "$(param kexec_py.how)" in
    file) step classic-load kexec-py load -s /boot/vmlinuz --initrd /boot/stage2.cpio.gz \
              --append "$args" ;;
    tools) step classic-load kexec -l /boot/vmlinuz --initrd=/boot/stage2.cpio.gz \
              --append="$args" ;;
    *) fatal "kexec_py.how= must be file or tools" ;;
esac
if [ "$(cat /sys/kernel/kexec_loaded)" = 1 ]; then
    step classic-pgmap /usr/bin/python3 /patched/kstage.py pgmap
    echo "@@EXEC uptime=$(now)"
    case "$(param kexec_py.how)" in
        file) kexec-py exec ;;
        tools) kexec -e ;;
    esac
fi

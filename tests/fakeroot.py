"""A fake / with /proc and /sys for the linux backend (tests only)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"

# the firmware map of a 512 MiB QEMU/SeaBIOS guest (/sys/firmware/memmap)
QEMU_MEMMAP = [
    (0x0, 0x9FBFF, "System RAM"),
    (0x9FC00, 0x9FFFF, "Reserved"),
    (0xF0000, 0xFFFFF, "Reserved"),
    (0x100000, 0x1FFDFFFF, "System RAM"),
    (0x1FFE0000, 0x1FFFFFFF, "Reserved"),
    (0xFEFFC000, 0xFEFFFFFF, "Reserved"),
    (0xFFFC0000, 0xFFFFFFFF, "Reserved"),
]


def make_root(tmp: Path, *, iomem: str | None = None, memmap: list[tuple[int, int, str]] | None
              = None, cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/vda console=ttyS0",
              loaded: int = 0, crash_loaded: int = 0, crash_size: int = 0,
              lockdown: str | None = "[none] integrity confidentiality",
              load_disabled: int | None = 0, cap_sys_boot: bool = True,
              pgmap: str | None = None) -> Path:
    """Build a /proc + /sys tree under ``tmp`` and return it."""
    (tmp / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (tmp / "sys/kernel/security").mkdir(parents=True, exist_ok=True)
    (tmp / "proc/self").mkdir(parents=True, exist_ok=True)
    (tmp / "proc/cmdline").write_text(cmdline + "\n")
    (tmp / "proc/iomem").write_text(iomem if iomem is not None
                                    else (DATA / "iomem-qemu-512m.txt").read_text())
    (tmp / "sys/kernel/kexec_loaded").write_text(f"{loaded}\n")
    (tmp / "sys/kernel/kexec_crash_loaded").write_text(f"{crash_loaded}\n")
    (tmp / "sys/kernel/kexec_crash_size").write_text(f"{crash_size}\n")
    if lockdown is not None:
        (tmp / "sys/kernel/security/lockdown").write_text(lockdown + "\n")
    if load_disabled is not None:
        (tmp / "proc/sys/kernel/kexec_load_disabled").write_text(f"{load_disabled}\n")
    cap = 0x1FFFFFFFFFF if cap_sys_boot else 0x1FFFFFFFFFF & ~(1 << 22)
    (tmp / "proc/self/status").write_text(f"Name:\tkexec-py\nCapEff:\t{cap:016x}\n")
    if memmap is not None:
        for i, (s, e, kind) in enumerate(memmap):
            d = tmp / f"sys/firmware/memmap/{i}"
            d.mkdir(parents=True)
            (d / "start").write_text(f"{s:#x}\n")
            (d / "end").write_text(f"{e:#x}\n")
            (d / "type").write_text(kind + "\n")
    if pgmap is not None:
        (tmp / "proc/kexec_pgmap").write_text(pgmap)
    return tmp

from __future__ import annotations

from pathlib import Path

import pytest
from fakeroot import DATA, QEMU_MEMMAP, make_root
from hypothesis import given
from hypothesis import strategies as st

from kexec_py.boundary import procfs
from kexec_py.errors import ProcfsError
from kexec_py.ranges import Range


def test_iomem_qemu_top_level_and_crash_region() -> None:
    entries = procfs.parse_iomem((DATA / "iomem-qemu-512m.txt").read_text())
    ram = [e for e in entries if e.name == "System RAM"]
    assert [e.range for e in ram] == [Range(0x1000, 0x9FC00), Range(0x100000, 0x1FFE0000)]
    crash = [e for e in entries if e.name == "Crash kernel"]
    assert crash[0].range == Range(0xC000000, 0x1C000000) and crash[0].depth == 1
    mm = procfs.iomem_to_memmap(entries)
    kinds = [(r.start, r.end, r.kind) for r in mm if r.start < 0x20000000]
    assert (0x100000, 0xC000000, "System RAM") in kinds
    assert (0xC000000, 0x1C000000, "Crash kernel") in kinds
    assert (0x1C000000, 0x1FFE0000, "System RAM") in kinds


def test_iomem_firecracker_large_addresses() -> None:
    entries = procfs.parse_iomem((DATA / "iomem-firecracker.txt").read_text())
    assert entries[-1].range == Range(0x4000000000, 0x4000080000)
    assert entries[-1].depth == 2
    ram = procfs.iomem_to_memmap(entries)
    assert Range(0x100000000, 0x640000000) in [r.range for r in ram if r.is_ram]


def test_iomem_unprivileged_zeros_are_refused() -> None:
    text = "00000000-00000000 : System RAM\n00000000-00000000 : Reserved\n"
    with pytest.raises(ProcfsError, match="only zero addresses") as e:
        procfs.iomem_to_memmap(procfs.parse_iomem(text))
    assert "run as root" in e.value.hint


@pytest.mark.parametrize("line", ["garbage", "1000-0fff : backwards", "zz-10 : x"])
def test_iomem_bad_lines_name_the_line(line: str) -> None:
    with pytest.raises(ProcfsError, match="line 2"):
        procfs.parse_iomem("00001000-00001fff : System RAM\n" + line + "\n")


def test_memory_map_prefers_firmware_memmap(tmp_path: Path) -> None:
    root = make_root(tmp_path, memmap=QEMU_MEMMAP)
    mm = procfs.memory_map(root)
    assert mm[0].range == Range(0, 0x9FC00) and mm[0].is_ram
    # the crash kernel region of iomem splits the firmware's RAM
    assert any(r.kind == "Crash kernel" and r.range == Range(0xC000000, 0x1C000000) for r in mm)
    assert procfs.crash_region(root) == Range(0xC000000, 0x1C000000)


def test_memory_map_falls_back_to_iomem(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert procfs.firmware_memmap(root) is None
    assert procfs.memory_map(root)[1].range == Range(0x1000, 0x9FC00)


def test_memory_map_missing_everything(tmp_path: Path) -> None:
    with pytest.raises(ProcfsError, match="no memory map") as e:
        procfs.memory_map(tmp_path)
    assert "mount /proc" in e.value.hint


def test_simple_readers(tmp_path: Path) -> None:
    root = make_root(tmp_path, loaded=1, crash_size=0x10000000,
                     lockdown="none [integrity] confidentiality", load_disabled=1)
    assert procfs.kexec_loaded(root) is True
    assert procfs.kexec_crash_loaded(root) is False
    assert procfs.kexec_crash_size(root) == 0x10000000
    assert procfs.lockdown(root) == "integrity"
    assert procfs.kexec_load_disabled(root) is True
    assert procfs.cmdline(root) == "BOOT_IMAGE=/vmlinuz root=/dev/vda console=ttyS0"
    assert procfs.kexec_loaded(tmp_path / "nothing") is None
    assert procfs.pgmap_supported(root) is False


@pytest.mark.parametrize(
    ("current", "append", "crash", "expected"),
    [
        ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet", None, False, "root=/dev/sda1 quiet"),
        ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet", "quiet", False, "root=/dev/sda1 quiet"),
        ("root=/dev/sda1 console=tty0", "console=ttyS0", False, "root=/dev/sda1 console=ttyS0"),
        ("root=/dev/sda1 crashkernel=256M", "irqpoll", True, "root=/dev/sda1 irqpoll"),
        ("root=/dev/sda1 crashkernel=256M", None, False, "root=/dev/sda1 crashkernel=256M"),
        ('root=/dev/sda1 dyndbg="file x +p" ro', "ro", False,
         'root=/dev/sda1 dyndbg="file x +p" ro'),
        ("", "a=1", False, "a=1"),
    ],
)
def test_reuse_cmdline(current: str, append: str | None, crash: bool, expected: str) -> None:
    assert procfs.reuse_cmdline(current, append, crash) == expected


def test_pgmap_roundtrip_and_order() -> None:
    pairs = [(0x1FFFF, 0x1234), (5, 0xFFFFFFFFFFFFFFFF), (0, 7)]
    m = procfs.parse_pgmap(procfs.format_pgmap(pairs).encode())
    assert m.pairs() == pairs and len(m) == 3
    assert procfs.format_pgmap(pairs).splitlines()[0] == "0x000000000001ffff\t0x0000000000001234"


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=50))
def test_pgmap_fast_path_equals_slow_path(pairs: list[tuple[int, int]]) -> None:
    text = procfs.format_pgmap(pairs).encode()
    fast = procfs.parse_pgmap(text)
    # a trailing blank line forces the line-by-line parser
    slow = procfs.parse_pgmap(text + b"\n")
    assert fast.pairs() == slow.pairs() == pairs


def test_pgmap_bad_line() -> None:
    with pytest.raises(ProcfsError, match="line 2"):
        procfs.parse_pgmap(b"0x1\t0x2\nhello\n")
    assert len(procfs.parse_pgmap(b"")) == 0

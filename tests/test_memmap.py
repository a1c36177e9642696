"""The memory map: region kinds, regions, MemoryMap and its views of RAM
(kexec_py/memmap.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from fakeroot import DATA, make_root
from hypothesis import given
from hypothesis import strategies as st

from kexec_py.boundary import procfs
from kexec_py.memmap import Kind, MemoryMap, MemRegion, kind_of
from kexec_py.model.config import ModelConfig, pc_layout, with_crash_region
from kexec_py.ranges import Range, merge

#: one line per kind, as /proc/iomem prints them (E820 names and iomem's own)
IOMEM_EVERY_KIND = """\
00000000-00000fff : Reserved
00001000-0009efff : System RAM
0009f000-0009ffff : reserved
000a0000-000bffff : PCI Bus 0000:00
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-1fffffff : System RAM
  04000000-07ffffff : Crash kernel
  1d000000-1de02576 : Kernel code
20000000-2000ffff : ACPI Tables
20010000-2001ffff : ACPI Non-volatile Storage
20020000-2002ffff : Unusable memory
20030000-2003ffff : Soft Reserved
40000000-7fffffff : Persistent Memory
80000000-bfffffff : Persistent Memory (legacy)
"""


def regions(*spec: tuple[int, int, str]) -> list[MemRegion]:
    return [MemRegion(Range(s, e), k) for s, e, k in spec]


def test_kinds_are_the_kernels_names() -> None:
    assert Kind.SYSTEM_RAM == "System RAM" and f"{Kind.CRASH_KERNEL}" == "Crash kernel"
    assert {str(k) for k in Kind} == {
        "System RAM", "Crash kernel", "Reserved", "reserved", "ACPI Tables",
        "ACPI Non-volatile Storage", "Unusable memory", "Persistent Memory",
        "Persistent Memory (legacy)", "Soft Reserved"}
    assert json.dumps([Kind.ACPI_NVS]) == '["ACPI Non-volatile Storage"]'


def test_kind_of_names_a_member_or_keeps_the_text() -> None:
    assert kind_of("System RAM") is Kind.SYSTEM_RAM
    assert kind_of("reserved") is Kind.RESERVED_LOWER_CASE
    assert kind_of("PCI Bus 0000:00") == "PCI Bus 0000:00"
    assert not isinstance(kind_of("PCI Bus 0000:00"), Kind)
    assert not isinstance(kind_of("system ram"), Kind)  # names are exact


def test_region_kind_becomes_the_member() -> None:
    r = MemRegion(Range(0x1000, 0x2000), "System RAM")
    assert r.kind is Kind.SYSTEM_RAM and r.is_ram and (r.start, r.end) == (0x1000, 0x2000)
    assert r == MemRegion(Range(0x1000, 0x2000), Kind.SYSTEM_RAM)
    assert not MemRegion(Range(0x1000, 0x2000), Kind.CRASH_KERNEL).is_ram


def test_kinds_round_trip_from_iomem() -> None:
    mm = procfs.iomem_to_memmap(procfs.parse_iomem(IOMEM_EVERY_KIND))
    assert isinstance(mm, MemoryMap)
    assert [(r.start, r.end, r.kind) for r in mm] == [
        (0x0, 0x1000, Kind.RESERVED),
        (0x1000, 0x9F000, Kind.SYSTEM_RAM),
        (0x9F000, 0xA0000, Kind.RESERVED_LOWER_CASE),
        (0xA0000, 0xC0000, "PCI Bus 0000:00"),
        (0xF0000, 0x100000, Kind.RESERVED),
        (0x100000, 0x4000000, Kind.SYSTEM_RAM),
        (0x4000000, 0x8000000, Kind.CRASH_KERNEL),
        (0x8000000, 0x20000000, Kind.SYSTEM_RAM),
        (0x20000000, 0x20010000, Kind.ACPI_TABLES),
        (0x20010000, 0x20020000, Kind.ACPI_NVS),
        (0x20020000, 0x20030000, Kind.UNUSABLE),
        (0x20030000, 0x20040000, Kind.SOFT_RESERVED),
        (0x40000000, 0x80000000, Kind.PERSISTENT_MEMORY),
        (0x80000000, 0xC0000000, Kind.PERSISTENT_MEMORY_LEGACY),
    ]
    # every known name became its member, and printing gives back the text
    lines = IOMEM_EVERY_KIND.splitlines()
    for r in mm:
        assert isinstance(r.kind, Kind) == (r.kind != "PCI Bus 0000:00")
        assert any(line.endswith(f" : {r.kind}") for line in lines)


def test_unknown_names_survive() -> None:
    text = ("00000000-0009ffff : System RAM\n000a0000-000bffff : Video RAM area\n"
            "000c0000-000c7fff : Video ROM\n00100000-00ffffff : System RAM\n"
            "fed00000-fed003ff : HPET 0\n")
    mm = procfs.iomem_to_memmap(procfs.parse_iomem(text))
    assert [r.kind for r in mm if not isinstance(r.kind, Kind)] == [
        "Video RAM area", "Video ROM", "HPET 0"]
    assert type(mm[1].kind) is str
    # and they leave RAM alone
    assert mm.system_ram() == [Range(0, 0xA0000), Range(0x100000, 0x1000000)]


def test_firmware_memmap_kinds(tmp_path: Path) -> None:
    root = make_root(tmp_path, memmap=[(0x0, 0x9FBFF, "System RAM"),
                                       (0x9FC00, 0x9FFFF, "Reserved"),
                                       (0x100000, 0x1FFDFFFF, "System RAM"),
                                       (0x1FFE0000, 0x1FFEFFFF, "ACPI Tables"),
                                       (0x1FFF0000, 0x1FFFFFFF, "Flash (vendor)")])
    mm = procfs.memory_map(root)
    assert isinstance(mm, MemoryMap)
    assert [r.kind for r in mm] == [Kind.SYSTEM_RAM, Kind.RESERVED, Kind.SYSTEM_RAM,
                                    Kind.CRASH_KERNEL, Kind.SYSTEM_RAM, Kind.ACPI_TABLES,
                                    "Flash (vendor)"]
    assert mm.crash_region() == Range(0xC000000, 0x1C000000)


QEMU = procfs.iomem_to_memmap(procfs.parse_iomem((DATA / "iomem-qemu-512m.txt").read_text()))


def test_views_of_ram() -> None:
    assert QEMU.system_ram() == [Range(0x1000, 0x9FC00), Range(0x100000, 0xC000000),
                                 Range(0x1C000000, 0x1FFE0000)]
    assert QEMU.loadable_ram() == [Range(0x1000, 0x9FC00), Range(0x100000, 0x1FFE0000)]
    assert QEMU.ram_bytes() == (0x9FC00 - 0x1000) + (0x1FFE0000 - 0x100000) - 0x10000000
    assert QEMU.crash_region() == Range(0xC000000, 0x1C000000)


def test_views_without_ram_or_crash() -> None:
    mm = MemoryMap(regions((0, 0x1000, "Reserved"), (0xA0000, 0xC0000, "PCI Bus 0000:00")))
    assert (mm.system_ram(), mm.loadable_ram(), mm.ram_bytes(), mm.crash_region()) == \
        ([], [], 0, None)
    assert MemoryMap().system_ram() == [] and len(MemoryMap()) == 0


def test_views_merge_touching_ram_but_count_bytes_per_region() -> None:
    mm = MemoryMap(regions((0x2000, 0x3000, "System RAM"), (0x1000, 0x2000, "System RAM"),
                           (0x3000, 0x4000, "Crash kernel"), (0x8000, 0x9000, "System RAM")))
    assert mm.system_ram() == [Range(0x1000, 0x3000), Range(0x8000, 0x9000)]
    assert mm.loadable_ram() == [Range(0x1000, 0x4000), Range(0x8000, 0x9000)]
    assert mm.ram_bytes() == 0x3000


@st.composite
def memory_maps(draw: st.DrawFn) -> list[MemRegion]:
    kinds = st.sampled_from([*Kind, "PCI Bus 0000:00", "Video ROM"])
    out = []
    pos = 0
    for _ in range(draw(st.integers(0, 8))):
        pos += draw(st.integers(0, 4)) << 12
        size = draw(st.integers(1, 4)) << 12
        out.append(MemRegion(Range(pos, pos + size), draw(kinds)))
        pos += size
    return out


@given(memory_maps())
def test_views_agree_with_the_regions(rs: list[MemRegion]) -> None:
    mm = MemoryMap(rs)
    assert list(mm) == rs and len(mm) == len(rs) and mm == MemoryMap(tuple(rs))
    ram = [r.range for r in rs if r.kind == "System RAM"]
    crash = [r.range for r in rs if r.kind == "Crash kernel"]
    assert mm.system_ram() == merge(ram)
    assert mm.loadable_ram() == merge(ram + crash)
    assert mm.ram_bytes() == sum(r.size for r in ram)
    assert mm.crash_region() == (crash[0] if crash else None)


def test_memory_map_is_an_immutable_sequence() -> None:
    rs = regions((0, 0x1000, "Reserved"), (0x1000, 0x9F000, "System RAM"))
    mm = MemoryMap(rs)
    assert isinstance(mm, Sequence) and mm[1] == rs[1] and mm[-1] == rs[1]
    assert mm[1:] == MemoryMap(rs[1:]) and isinstance(mm[1:], MemoryMap)
    assert [r.kind for r in mm] == [Kind.RESERVED, Kind.SYSTEM_RAM] and rs[0] in mm
    assert mm != rs and hash(mm) == hash(MemoryMap(list(rs)))
    rs.append(MemRegion(Range(0x100000, 0x200000), "System RAM"))
    assert len(mm) == 2  # a copy, not a view of the list
    assert MemoryMap.of(mm) is mm and MemoryMap.of(rs) == MemoryMap(rs)
    with pytest.raises(AttributeError):
        mm.append(rs[0])  # type: ignore[attr-defined]
    assert "System RAM" in repr(mm)


def test_carve_splits_ram_around_an_inner_region() -> None:
    mm = MemoryMap(regions((0, 0x1000, "Reserved"), (0x1000, 0x100000, "System RAM")))
    out = mm.carve(regions((0x10000, 0x20000, "Crash kernel")))
    assert [(r.start, r.end, r.kind) for r in out] == [
        (0, 0x1000, "Reserved"), (0x1000, 0x10000, "System RAM"),
        (0x10000, 0x20000, "Crash kernel"), (0x20000, 0x100000, "System RAM")]
    assert mm.carve([]) is mm


def test_model_config_holds_a_memory_map() -> None:
    assert isinstance(pc_layout(), MemoryMap)
    cfg = ModelConfig(regions=list(reversed(pc_layout(64 << 20))))
    assert isinstance(cfg.regions, MemoryMap) and cfg.regions == pc_layout(64 << 20)
    assert ModelConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    crash = with_crash_region(pc_layout(64 << 20), 0x1000000, 0x800000)
    assert isinstance(crash, MemoryMap)
    assert crash.crash_region() == Range(0x1000000, 0x1800000)
    assert crash.loadable_ram() == pc_layout(64 << 20).system_ram()
    assert crash.ram_bytes() == pc_layout(64 << 20).ram_bytes() - 0x800000

"""The machine the model kernel runs on: memory map, allocator seed, limits.

A :class:`ModelConfig` is fixed when a model state is created (or reset):
the memory map comes from ``ROOT/proc/iomem`` (or ``ROOT/sys/firmware/
memmap``) when ``--root`` has one that can be read, else it is the default
512 MiB PC::

    [0x0,      0x1000)      Reserved
    [0x1000,   0x9f000)     System RAM
    [0x9f000,  0x100000)    Reserved
    [0x100000, 0x20000000)  System RAM

All ranges are half-open.  The map is a :class:`kexec_py.memmap.MemoryMap`.
The allocator's pool is the System RAM (the ``Crash kernel`` reservation
is not in it); physical memory exists from 0 to the end of the highest RAM
or crash range (:meth:`~kexec_py.memmap.MemoryMap.loadable_ram`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexec_py.boundary import procfs
from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.errors import KexecError, ProcfsError
from kexec_py.memmap import Kind, MemoryMap, MemRegion
from kexec_py.ranges import Range

DEFAULT_SOURCE = "default 512 MiB PC"


def pc_layout(ram_bytes: int = 512 << 20) -> MemoryMap:
    """A BIOS PC with ``ram_bytes`` of memory: low RAM up to 0x9f000, the
    legacy hole, RAM from 1 MiB to ``ram_bytes``.

    Pre-condition: ``ram_bytes`` is a multiple of 4096 and at least 2 MiB."""
    if ram_bytes % PAGE_SIZE or ram_bytes < 2 << 20:
        raise KexecError(f"model memory size {ram_bytes:#x} is not a multiple of 4096 of at "
                         "least 2 MiB", "give e.g. 512M or 4G")
    return MemoryMap([
        MemRegion(Range(0x0, 0x1000), Kind.RESERVED),
        MemRegion(Range(0x1000, 0x9F000), Kind.SYSTEM_RAM),
        MemRegion(Range(0x9F000, 0x100000), Kind.RESERVED),
        MemRegion(Range(0x100000, ram_bytes), Kind.SYSTEM_RAM),
    ])


def with_crash_region(regions: Sequence[MemRegion], start: int, size: int) -> MemoryMap:
    """``regions`` with ``[start, start + size)`` carved out of System RAM
    as the ``Crash kernel`` reservation (as /proc/iomem shows crashkernel=)."""
    crash = Range(start, start + size)
    if start % PAGE_SIZE or size % PAGE_SIZE or size == 0:
        raise KexecError(f"crash region {crash} is not page aligned or empty",
                         "give crashkernel=SIZE@OFFSET in whole pages, e.g. 64M@256M")
    if not any(r.is_ram and r.range.covers(crash) for r in regions):
        raise KexecError(f"crash region {crash} does not lie inside one System RAM range",
                         "choose an offset inside the model's RAM")
    return MemoryMap.of(regions).carve([MemRegion(crash, Kind.CRASH_KERNEL)])


_SIZE = re.compile(r"^(0x[0-9a-f]+|\d+)([kmgt]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``4G``, ``0x1000``, ``4096`` -> bytes."""
    m = _SIZE.match(text.strip().lower())
    if not m:
        raise KexecError(f"{text!r} is not a size", "write e.g. 512M, 4G or 0x20000000")
    return int(m.group(1), 0) * _UNITS[m.group(2)]


def parse_crashkernel(text: str) -> tuple[int, int]:
    """``SIZE@OFFSET`` (as crashkernel= takes it) -> (start, size)."""
    if "@" not in text:
        raise KexecError(f"crash region {text!r} is not SIZE@OFFSET", "write e.g. 64M@256M")
    size, at = text.split("@", 1)
    return parse_size(at), parse_size(size)


@dataclass
class ModelConfig:
    """What the model machine is.  Accessible attributes:

    ``regions`` (the memory map, sorted by start: a list of regions given
    becomes a :class:`~kexec_py.memmap.MemoryMap`), ``seed`` (the
    allocator's order), ``collide`` (probability that the allocator first
    tries a page that is a destination of the image being loaded),
    ``source_limit`` (pages at or above this address are "unusable" as
    source pages, like KEXEC_SOURCE_MEMORY_LIMIT on 32-bit; None: none),
    ``cap_sys_boot`` (False: every load and exec fails with EPERM),
    ``ram_source`` (where the memory map came from, in words).
    """

    regions: MemoryMap = field(default_factory=pc_layout)
    seed: int = 0
    collide: float = 0.25
    source_limit: int | None = None
    cap_sys_boot: bool = True
    ram_source: str = DEFAULT_SOURCE

    def __post_init__(self) -> None:
        self.regions = MemoryMap(sorted(self.regions, key=lambda r: r.start))
        if not self.pool_ranges():
            raise KexecError("the model's memory map has no System RAM",
                             "give a memory map with at least one System RAM range")
        if not 0.0 <= self.collide <= 1.0:
            raise KexecError(f"collide={self.collide} is not a probability", "use 0.0 .. 1.0")

    # --- derived views -----------------------------------------------------------

    def pool_ranges(self) -> list[tuple[int, int]]:
        """Whole pages of System RAM as pfn ranges ``[first, end)``: the
        page allocator's pool (the crash reservation is not in it)."""
        out: list[tuple[int, int]] = []
        for r in self.regions.system_ram():
            first = (r.start + PAGE_SIZE - 1) >> PAGE_SHIFT
            end = r.end >> PAGE_SHIFT
            if first < end:
                out.append((first, end))
        return out

    def memory_size(self) -> int:
        """Physical memory is modelled from 0 to the end of the last run of
        memory that holds bytes (System RAM and the crash reservation)."""
        end = max(r.end for r in self.regions.loadable_ram())
        return (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

    # --- (de)serialisation ----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "regions": [[r.start, r.end, r.kind] for r in self.regions],
            "seed": self.seed,
            "collide": self.collide,
            "source_limit": self.source_limit,
            "cap_sys_boot": self.cap_sys_boot,
            "ram_source": self.ram_source,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            regions=MemoryMap(MemRegion(Range(int(s), int(e)), str(k))
                              for s, e, k in d["regions"]),
            seed=int(d["seed"]),
            collide=float(d["collide"]),
            source_limit=None if d["source_limit"] is None else int(d["source_limit"]),
            cap_sys_boot=bool(d["cap_sys_boot"]),
            ram_source=str(d["ram_source"]),
        )


def regions_from_root(root: Path) -> tuple[MemoryMap, str] | None:
    """The memory map under ``root`` and a description of where it came
    from, or None when ``root`` has neither /proc/iomem nor
    /sys/firmware/memmap, or they cannot be read (an unprivileged reader
    sees only zeros in /proc/iomem)."""
    if not ((root / "proc/iomem").exists() or (root / "sys/firmware/memmap").exists()):
        return None
    try:
        regions = procfs.memory_map(root)
    except ProcfsError:
        return None
    if not regions.system_ram():
        return None
    where = root / ("sys/firmware/memmap" if (root / "sys/firmware/memmap").exists()
                    else "proc/iomem")
    return regions, str(where)


def config_for_root(root: Path) -> ModelConfig:
    """The configuration of a fresh model state for ``--root root``."""
    found = regions_from_root(root)
    if found is None:
        return ModelConfig()
    regions, where = found
    return ModelConfig(regions=regions, ram_source=where)

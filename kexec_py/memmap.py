"""The physical memory map: the kinds of its regions, its regions, and the
map itself with its views of RAM.

The kernel names every region of the map it shows: /proc/iomem and
/sys/firmware/memmap print the names of ``e820_type_to_string()``
(arch/x86/kernel/e820.c): "System RAM", "Reserved", "ACPI Tables", ...;
/proc/iomem also nests the crashkernel= reservation, "Crash kernel", inside
System RAM, and lists other regions (PCI windows, ROMs) by their drivers'
names.  :class:`Kind` declares the names kexec-py knows, once; a
:class:`MemRegion` whose name is one of them has the member as its
``kind``, and any other name keeps its text.

:class:`MemoryMap` is the map as it travels through kexec-py (what
:meth:`kexec_py.boundary.backends.Backend.memory_map` returns,
:func:`kexec_py.boundary.procfs.memory_map` reads and
:class:`kexec_py.model.config.ModelConfig` holds): an immutable sequence of
regions in the order they were given (the kernel's: by address), whose
views of RAM are methods:

- :meth:`~MemoryMap.system_ram`: the System RAM, merged;
- :meth:`~MemoryMap.loadable_ram`: the System RAM and the crash kernel
  region, merged: where the segments of a load may go, what a hibernation
  image may occupy, the memory a model machine has;
- :meth:`~MemoryMap.ram_bytes`: the bytes of System RAM (what the kernel's
  half-of-RAM rule for kexec_load counts, the crash reservation not in it);
- :meth:`~MemoryMap.crash_region`: the crash kernel region, or None.

Ranges are half-open (:mod:`kexec_py.ranges`, which holds the arithmetic).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import overload

from kexec_py.ranges import Range, merge

__all__ = ["Kind", "MemRegion", "MemoryMap", "kind_of"]


class Kind(StrEnum):
    """The region names of the kernel's memory map that kexec-py knows.

    Members are strings (``Kind.SYSTEM_RAM == "System RAM"``), so a region's
    kind prints, compares and serialises as the kernel's name."""

    #: RAM the running kernel manages (e820 type 1)
    SYSTEM_RAM = "System RAM"
    #: the crashkernel= reservation: RAM inside System RAM that the running
    #: kernel keeps for a crash kernel (/proc/iomem, a child of System RAM)
    CRASH_KERNEL = "Crash kernel"
    RESERVED = "Reserved"
    #: the lower-case spelling /proc/iomem also uses for reserved memory
    RESERVED_LOWER_CASE = "reserved"
    ACPI_TABLES = "ACPI Tables"
    ACPI_NVS = "ACPI Non-volatile Storage"
    UNUSABLE = "Unusable memory"
    PERSISTENT_MEMORY = "Persistent Memory"
    PERSISTENT_MEMORY_LEGACY = "Persistent Memory (legacy)"
    SOFT_RESERVED = "Soft Reserved"


def kind_of(name: str) -> Kind | str:
    """The :class:`Kind` member named ``name``, or ``name`` itself when it
    names none."""
    try:
        return Kind(name)
    except ValueError:
        return name


@dataclass(frozen=True, slots=True)
class MemRegion:
    """A region of the physical memory map: ``range`` and its ``kind``, a
    :class:`Kind` member when its name is one (a name given as a plain
    string becomes the member), else the name as the kernel printed it."""

    range: Range
    kind: Kind | str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", kind_of(self.kind))

    @property
    def start(self) -> int:
        return self.range.start

    @property
    def end(self) -> int:
        return self.range.end

    @property
    def is_ram(self) -> bool:
        """System RAM (the crash kernel region is not)."""
        return self.kind == Kind.SYSTEM_RAM


class MemoryMap(Sequence[MemRegion]):
    """A physical memory map: an immutable sequence of :class:`MemRegion`,
    in the order given, with its views of RAM (see the module docstring).

    Equal to another map with the same regions in the same order; a slice
    is a map too."""

    __slots__ = ("_regions",)

    def __init__(self, regions: Iterable[MemRegion] = ()) -> None:
        self._regions: tuple[MemRegion, ...] = tuple(regions)

    @classmethod
    def of(cls, regions: Iterable[MemRegion]) -> MemoryMap:
        """``regions`` as a map: itself when it is one already."""
        return regions if isinstance(regions, MemoryMap) else cls(regions)

    # --- the sequence ----------------------------------------------------------------

    @overload
    def __getitem__(self, index: int) -> MemRegion: ...

    @overload
    def __getitem__(self, index: slice) -> MemoryMap: ...

    def __getitem__(self, index: int | slice) -> MemRegion | MemoryMap:
        if isinstance(index, slice):
            return MemoryMap(self._regions[index])
        return self._regions[index]

    def __len__(self) -> int:
        return len(self._regions)

    def __iter__(self) -> Iterator[MemRegion]:
        return iter(self._regions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryMap):
            return NotImplemented
        return self._regions == other._regions

    def __hash__(self) -> int:
        return hash(self._regions)

    def __repr__(self) -> str:
        return f"MemoryMap({list(self._regions)!r})"

    # --- views of RAM ----------------------------------------------------------------

    def system_ram(self) -> list[Range]:
        """The System RAM, merged: the running kernel's RAM."""
        return merge(r.range for r in self._regions if r.is_ram)

    def loadable_ram(self) -> list[Range]:
        """The System RAM and the crash kernel region, merged.

        Where the segments of a normal load may go (kexec-tools places there
        too: it reads RAM from /sys/firmware/memmap, or top-level
        /proc/iomem, which both contain the reservation; destination pages
        are only written at the jump, when the reservation no longer
        matters), what a hibernation image may occupy, and the memory a
        model machine has (the reservation is RAM the running kernel does
        not use)."""
        return merge(r.range for r in self._regions
                     if r.is_ram or r.kind == Kind.CRASH_KERNEL)

    def ram_bytes(self) -> int:
        """The bytes of System RAM, the crash reservation not counted: the
        RAM the running kernel counts (``totalram_pages()``) for kexec_load's
        half-of-RAM rule."""
        return sum(r.range.size for r in self._regions if r.is_ram)

    def crash_region(self) -> Range | None:
        """The (first) crash kernel region, or None."""
        return next((r.range for r in self._regions if r.kind == Kind.CRASH_KERNEL), None)

    # --- building --------------------------------------------------------------------

    def carve(self, inner: Sequence[MemRegion]) -> MemoryMap:
        """This map with each region of ``inner`` cut out of the System RAM
        it lies in and standing as a region of its own, sorted by start:
        how /proc/iomem's crash kernel region, a child of System RAM,
        becomes a region of the map.  ``inner`` empty: the map itself."""
        if not inner:
            return self
        out: list[MemRegion] = []
        for r in self._regions:
            pieces = [r]
            for c in inner:
                nxt: list[MemRegion] = []
                for p in pieces:
                    if p.is_ram and p.range.overlaps(c.range):
                        if p.start < c.start:
                            nxt.append(MemRegion(Range(p.start, c.start), p.kind))
                        nxt.append(c)
                        if c.end < p.end:
                            nxt.append(MemRegion(Range(c.end, p.end), p.kind))
                    else:
                        nxt.append(p)
                pieces = nxt
            out.extend(pieces)
        return MemoryMap(sorted(out, key=lambda r: r.start))

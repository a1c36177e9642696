"""Half-open physical address ranges ``[start, end)`` and page math (pure).

Every range in kexec-py is half-open.  The kernel's /proc/iomem and
/sys/firmware/memmap print inclusive ends; their parsers convert at the
boundary (``procfs.py``) and nothing past it sees an inclusive end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kexec_py.abi import PAGE_SIZE


@dataclass(frozen=True, slots=True, order=True)
class Range:
    """``[start, end)``; empty when ``start == end``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"range end {self.end:#x} below start {self.start:#x}")

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, addr: object) -> bool:
        return isinstance(addr, int) and self.start <= addr < self.end

    def overlaps(self, other: Range) -> bool:
        return self.start < other.end and other.start < self.end

    def covers(self, other: Range) -> bool:
        return self.start <= other.start and other.end <= self.end

    def intersect(self, other: Range) -> Range | None:
        lo, hi = max(self.start, other.start), min(self.end, other.end)
        return Range(lo, hi) if lo < hi else None

    def __str__(self) -> str:
        return f"[{self.start:#x}, {self.end:#x})"


@dataclass(frozen=True, slots=True)
class MemRegion:
    """A region of the physical memory map: ``range`` and its ``kind``.

    ``kind`` uses the firmware's names: "System RAM", "Reserved",
    "ACPI Tables", "ACPI Non-volatile Storage", "Crash kernel", ...
    """

    range: Range
    kind: str

    @property
    def start(self) -> int:
        return self.range.start

    @property
    def end(self) -> int:
        return self.range.end

    @property
    def is_ram(self) -> bool:
        return self.kind == "System RAM"


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, with overlapping and touching ranges joined."""
    out: list[Range] = []
    for r in sorted(ranges):
        if r.size == 0:
            continue
        if out and r.start <= out[-1].end:
            if r.end > out[-1].end:
                out[-1] = Range(out[-1].start, r.end)
        else:
            out.append(r)
    return out


def subtract(ranges: Iterable[Range], holes: Iterable[Range]) -> list[Range]:
    """``ranges`` minus every range of ``holes``, merged and sorted."""
    result = merge(ranges)
    for h in merge(holes):
        nxt: list[Range] = []
        for r in result:
            if not r.overlaps(h):
                nxt.append(r)
                continue
            if r.start < h.start:
                nxt.append(Range(r.start, h.start))
            if h.end < r.end:
                nxt.append(Range(h.end, r.end))
        result = nxt
    return result


def total(ranges: Iterable[Range]) -> int:
    return sum(r.size for r in ranges)


def ram_ranges(memmap: Sequence[MemRegion]) -> list[Range]:
    """The System RAM of a memory map, merged."""
    return merge(r.range for r in memmap if r.is_ram)


def pages(r: Range) -> range:
    """The page frame numbers of whole pages inside ``r``."""
    first = (r.start + PAGE_SIZE - 1) // PAGE_SIZE
    return range(first, r.end // PAGE_SIZE)


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def align_down(x: int, a: int) -> int:
    return x // a * a

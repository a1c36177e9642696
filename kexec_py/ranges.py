"""Half-open physical address ranges ``[start, end)``: their arithmetic,
page math and hole finding (pure).

Every range in kexec-py is half-open.  The kernel's /proc/iomem and
/sys/firmware/memmap print inclusive ends; their parsers convert at the
boundary (``procfs.py``) and nothing past it sees an inclusive end.  The
memory map built of such ranges (regions, their kinds, the views of RAM)
is :mod:`kexec_py.memmap`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kexec_py.boundary.abi import PAGE_SIZE


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


def pages(r: Range) -> range:
    """The page frame numbers of whole pages inside ``r``."""
    first = (r.start + PAGE_SIZE - 1) // PAGE_SIZE
    return range(first, r.end // PAGE_SIZE)


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def align_down(x: int, a: int) -> int:
    return x // a * a


# --- hole finding ----------------------------------------------------------------

#: one past the highest physical address a 64-bit kernel can name
ADDR_LIMIT = 1 << 64


def window(mem_min: int = 0, mem_max: int | None = None) -> Range:
    """The placement window of ``--mem-min``/``--mem-max`` as ``[start, end)``.

    ``mem_max`` is the highest usable address, inclusive, as kexec-tools
    takes it (``--mem-max=0x3fffffff`` ends the window at 1 GiB); None means
    no upper bound.
    """
    end = ADDR_LIMIT if mem_max is None else mem_max + 1
    if mem_min < 0 or end <= mem_min:
        raise ValueError(f"empty window: mem_min {mem_min:#x}, mem_max {mem_max!r}")
    return Range(mem_min, min(end, ADDR_LIMIT))


def free_ranges(ram: Iterable[Range], used: Iterable[Range],
                within: Range | None = None) -> list[Range]:
    """``ram`` minus ``used``, clipped to ``within``: merged, sorted.

    Post-conditions: the result ranges are disjoint, non-empty, sorted, and
    each lies in one range of ``ram`` and outside every range of ``used``.
    """
    free = subtract(ram, used)
    if within is None:
        return free
    return [r for f in free if (r := f.intersect(within)) is not None]


def find_hole(free: Sequence[Range], size: int, align: int = PAGE_SIZE, lo: int = 0,
              hi: int = ADDR_LIMIT, top_down: bool = True) -> int | None:
    """The start ``s`` of a hole ``[s, s + size)`` for a buffer, or None.

    Pre-conditions: ``free`` is sorted and disjoint (as :func:`free_ranges`
    returns it), ``size > 0``, ``align`` is a power of two.
    Post-conditions: ``s % align == 0``, ``lo <= s``, ``s + size <= hi`` and
    ``[s, s + size)`` lies inside one range of ``free``.  Top-down gives the
    highest such ``s`` (kexec-tools' ``locate_hole`` with ``hole_end < 0``),
    bottom-up the lowest (``hole_end > 0``).
    """
    if size <= 0:
        raise ValueError(f"hole size must be positive, not {size}")
    if align <= 0 or align & (align - 1):
        raise ValueError(f"alignment must be a power of two, not {align:#x}")
    order = reversed(free) if top_down else iter(free)
    for r in order:
        start, end = max(r.start, lo), min(r.end, hi)
        if top_down:
            s = align_down(end - size, align)
            if end - size >= 0 and s >= start:
                return s
        else:
            s = align_up(start, align)
            if s + size <= end:
                return s
    return None


def describe(ranges: Sequence[Range], limit: int = 3) -> str:
    """The first ``limit`` ranges as text, and how many more there are."""
    shown = ", ".join(str(r) for r in ranges[:limit])
    return shown + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "")

"""Kexec segments and the kernel's rules for a list of them (pure).

A segment is ``struct kexec_segment``: ``bufsz`` bytes from ``buf`` are
copied to physical ``[mem, mem + memsz)`` and the rest is zero-filled.
:func:`check_segments` applies the checks of the kernel's
``sanity_check_segment_list()`` (kernel/kexec_core.c) *before* the system
call and raises :class:`PlanError` with the errno the kernel would give, so
that the operator gets a message that names the offending segment.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from kexec_py.boundary.abi import KEXEC_SEGMENT_MAX, PAGE_SIZE
from kexec_py.errors import PlanError
from kexec_py.ranges import ADDR_LIMIT, Range, find_hole, free_ranges, merge

#: anything the buffer protocol accepts and ``len()`` measures in bytes
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``struct kexec_segment``.

    ``buf`` is None for a segment whose bytes are all zero (bufsz 0) or when
    a plan is only printed; otherwise ``len(buf)`` is ``bufsz``.  ``name``
    says what the segment holds ("kernel", "initrd", "load[3]", ...).
    """

    mem: int
    memsz: int
    bufsz: int
    buf: Buffer | None = None
    name: str = ""

    @property
    def end(self) -> int:
        """End of the destination, exclusive: ``[mem, end)``."""
        return self.mem + self.memsz

    def with_buf(self, buf: Buffer | None) -> Segment:
        return Segment(self.mem, self.memsz, self.bufsz, buf, self.name)

    def describe(self) -> str:
        label = f"{self.name} " if self.name else ""
        return f"{label}[{self.mem:#x}, {self.end:#x}) bufsz {self.bufsz:#x}"


def make_segment(mem: int, data: Buffer | None, memsz: int | None = None,
                 name: str = "", bufsz: int | None = None) -> Segment:
    """A segment at ``mem`` holding ``data``, memsz rounded up to whole pages.

    ``bufsz`` defaults to ``len(data)`` (0 without data).
    """
    size = (len(data) if data is not None else 0) if bufsz is None else bufsz
    want = size if memsz is None else max(memsz, size)
    return Segment(mem, page_align_up(want), size, data, name)


def page_align_up(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def page_align_down(x: int) -> int:
    return x & ~(PAGE_SIZE - 1)


#: x86_64 ``KEXEC_DESTINATION_MEMORY_LIMIT`` (``MAXMEM - 1`` with 4-level paging)
X86_64_DESTINATION_LIMIT = (1 << 46) - 1


def _pages(nbytes: int) -> int:
    """The kernel's ``PAGE_COUNT()``: whole pages needed for ``nbytes``."""
    return (nbytes + PAGE_SIZE - 1) // PAGE_SIZE


def check_segments(segments: Sequence[Segment], ram_bytes: int | None = None,
                   limit: int | None = None, crash_region: tuple[int, int] | None = None,
                   max_segments: int = KEXEC_SEGMENT_MAX) -> None:
    """Refuse what ``kexec_load`` refuses for one call, with its errno.

    The rules and their order are those of ``kexec_load_check()`` (more than
    ``KEXEC_SEGMENT_MAX`` segments) and ``sanity_check_segment_list()``
    (kernel/kexec_core.c, 6.1): first every segment's addresses (wrap-around,
    page alignment, ``end >= limit``: EADDRNOTAVAIL), then overlap (EINVAL),
    then ``bufsz > memsz`` (EINVAL), then "more than half of RAM" per segment
    and in total (EINVAL), then the crash region (EADDRNOTAVAIL).  When a
    list breaks several rules, the error is the one the kernel reports.

    ``ram_bytes`` enables the half-of-RAM rule (the kernel counts
    ``totalram_pages()``, a little less than the firmware's RAM, so it may
    refuse a list this check lets through); ``limit`` is the architecture's
    ``KEXEC_DESTINATION_MEMORY_LIMIT`` (refused: ``end >= limit``);
    ``crash_region`` is ``[start, end)`` of the crashkernel= reservation,
    inside which every segment of a crash load must lie.

    Pre-conditions: none.  Post-conditions: when it returns, the kernel's
    own checks of one kexec_load call pass, as far as userspace can know.
    """
    if len(segments) > max_segments:
        raise PlanError(
            f"{len(segments)} segments in one call; the kernel takes at most {max_segments}",
            "use --staged (needs a kernel with the multi-stage load protocol)",
            errno.EINVAL,
        )
    for seg in segments:
        if seg.mem < 0 or seg.memsz < 0 or seg.end >= 1 << 64:
            raise PlanError(
                f"segment {seg.describe()} wraps around the address space",
                "this is a bug in the image or the plan",
                errno.EADDRNOTAVAIL,
            )
        if seg.mem % PAGE_SIZE or seg.end % PAGE_SIZE:
            raise PlanError(
                f"segment {seg.describe()} is not page aligned",
                "mem and memsz must be multiples of 4096",
                errno.EADDRNOTAVAIL,
            )
        if limit is not None and seg.end >= limit:
            raise PlanError(
                f"segment {seg.describe()} ends at or above the kernel's destination limit "
                f"{limit:#x}",
                "lower --mem-max or the image's addresses",
                errno.EADDRNOTAVAIL,
            )
    for i, a in enumerate(segments):
        for b in segments[:i]:
            if a.end > b.mem and a.mem < b.end:
                raise PlanError(
                    f"segments overlap: {b.describe()} and {a.describe()}",
                    "segments of one call must not share a page",
                    errno.EINVAL,
                )
    for seg in segments:
        if seg.bufsz > seg.memsz:
            raise PlanError(
                f"segment {seg.describe()} has bufsz larger than memsz {seg.memsz:#x}",
                "this is a bug in the image or the plan",
                errno.EINVAL,
            )
        if seg.buf is not None and len(seg.buf) != seg.bufsz:
            raise PlanError(
                f"segment {seg.describe()} has a buffer of {len(seg.buf)} bytes",
                "this is a bug in kexec-py; please report it",
                errno.EFAULT,
            )
    if ram_bytes is not None:
        half = (ram_bytes // PAGE_SIZE) // 2
        total = 0
        for seg in segments:
            if _pages(seg.memsz) > half:
                raise PlanError(
                    f"segment {seg.describe()} is larger than half of RAM "
                    f"({half * PAGE_SIZE:#x} bytes)",
                    "the kernel refuses that in one call; --staged lifts the total limit",
                    errno.EINVAL,
                )
            total += _pages(seg.memsz)
        if total > half:
            raise PlanError(
                f"segments total {total * PAGE_SIZE:#x} bytes, more than half of RAM "
                f"({half * PAGE_SIZE:#x})",
                "the kernel refuses that in one call; --staged splits the load",
                errno.EINVAL,
            )
    if crash_region is not None:
        lo, hi = crash_region
        for seg in segments:
            if seg.mem < lo or seg.end > hi:
                raise PlanError(
                    f"crash segment {seg.describe()} lies outside the crashkernel region "
                    f"[{lo:#x}, {hi:#x})",
                    "crash segments must be placed inside the crashkernel= reservation",
                    errno.EADDRNOTAVAIL,
                )


def check_in_ram(segments: Sequence[Segment], ram: Sequence[Range],
                 within: Range | None = None) -> None:
    """Refuse segments outside System RAM (or outside ``within``, the
    --mem-min/--mem-max window), as kexec-tools' ``valid_memory_range()``
    does.  The kernel itself would accept them and write over whatever is
    there, so this is the last chance to say so."""
    for seg in segments:
        r = Range(seg.mem, seg.end)
        if r.size == 0:
            continue
        if not any(m.covers(r) for m in merge(ram)):
            raise PlanError(
                f"segment {seg.describe()} is not inside System RAM",
                "the image asks for an address the memory map does not offer as RAM; "
                "check the image and the memory map",
                errno.EADDRNOTAVAIL,
            )
        if within is not None and not within.covers(r):
            raise PlanError(
                f"segment {seg.describe()} lies outside --mem-min/--mem-max {within}",
                "widen --mem-min/--mem-max or load an image whose addresses fit",
                errno.EADDRNOTAVAIL,
            )


class Layout:
    """Places buffers in free System RAM, as kexec-tools' ``add_buffer()``.

    Holds the RAM of a memory map, a placement window (--mem-min/--mem-max)
    and the ranges already taken.  :meth:`place` finds a hole (top-down or
    bottom-up, aligned, inside ``[lo, hi)`` and the window) and takes it;
    :meth:`take` takes a fixed range (an ELF PT_LOAD).  Nothing is copied.
    Post-conditions: every range handed out is page aligned, inside RAM and
    the window, and disjoint from every other.
    """

    def __init__(self, ram: Sequence[Range], within: Range | None = None,
                 reserved: Sequence[Range] = ()) -> None:
        self.ram = merge(ram)
        self.within = within
        self.taken: list[Range] = list(reserved)

    def free(self) -> list[Range]:
        """Free whole pages: RAM minus what is taken, inside the window."""
        out = []
        for r in free_ranges(self.ram, self.taken, self.within):
            lo, hi = page_align_up(r.start), page_align_down(r.end)
            if lo < hi:
                out.append(Range(lo, hi))
        return out

    def take(self, r: Range, name: str) -> None:
        """Claim ``r`` (page aligned) for ``name``; refuse RAM it cannot have."""
        seg = Segment(r.start, r.size, 0, None, name)
        check_in_ram([seg], self.ram, self.within)
        for t in self.taken:
            if t.overlaps(r):
                raise PlanError(
                    f"{name} {r} overlaps {t}, which is already taken",
                    "the image's own segments overlap, or lie on a reserved region",
                    errno.EINVAL,
                )
        self.taken.append(r)

    def place(self, name: str, size: int, align: int = PAGE_SIZE, lo: int = 0,
              hi: int = ADDR_LIMIT, top_down: bool = True) -> int:
        """Take a hole of ``size`` bytes (rounded up to pages) and return its start."""
        memsz = page_align_up(size)
        a = max(align, PAGE_SIZE)
        start = find_hole(self.free(), memsz, a, lo, hi, top_down)
        if start is None:
            where = f"[{lo:#x}, {hi:#x})" if hi < ADDR_LIMIT else f"above {lo:#x}"
            win = f" inside --mem-min/--mem-max {self.within}" if self.within else ""
            raise PlanError(
                f"no room for the {name}: {memsz:#x} bytes aligned to {a:#x} {where}{win} "
                f"(free RAM: {describe_ranges(self.free())})",
                "the memory map has no hole that large: check --mem-min/--mem-max, a "
                "smaller initrd, or the memory map (kexec-py inspect shows the sizes)",
                errno.ENOMEM,
            )
        self.taken.append(Range(start, start + memsz))
        return start


def describe_ranges(ranges: Sequence[Range], limit: int = 4) -> str:
    if not ranges:
        return "none"
    shown = ", ".join(str(r) for r in ranges[:limit])
    more = f" and {len(ranges) - limit} more" if len(ranges) > limit else ""
    return shown + more


def fill_window(taken: Sequence[Segment], ram: Sequence[Range], within: Range,
                name: str = "window") -> list[Segment]:
    """Zero-filled segments (bufsz 0) over every free page of RAM in
    ``within``: kexec-tools' ``add_backup_segments()`` for
    ``--load-preserve-context``.  With a preserve-context image the kernel
    swaps every destination page with its source page at the jump, so the
    loaded kernel may use this window and the original contents come back
    when it jumps back."""
    used = [Range(s.mem, s.end) for s in taken]
    out: list[Segment] = []
    for r in free_ranges(ram, used, within):
        lo, hi = page_align_up(r.start), page_align_down(r.end)
        if lo < hi:
            out.append(Segment(lo, hi - lo, 0, None, name))
    return out

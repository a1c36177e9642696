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

from kexec_py.abi import KEXEC_SEGMENT_MAX, PAGE_SIZE
from kexec_py.errors import PlanError

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


def check_segments(segments: Sequence[Segment], ram_bytes: int | None = None,
                   limit: int | None = None, crash_region: tuple[int, int] | None = None,
                   max_segments: int = KEXEC_SEGMENT_MAX) -> None:
    """Refuse what ``sanity_check_segment_list()`` refuses, with its errno.

    Pre-conditions: none.  Post-conditions: when it returns, the kernel's
    own checks of one kexec_load call would pass (as far as they can be
    known from userspace).  ``ram_bytes`` enables the "more than half of
    RAM" rule; ``limit`` is the highest usable destination (exclusive);
    ``crash_region`` is ``[start, end)`` of the crashkernel= reservation,
    inside which every segment must lie for a crash load.
    """
    if len(segments) > max_segments:
        raise PlanError(
            f"{len(segments)} segments in one call; the kernel takes at most {max_segments}",
            "use --staged (needs a kernel with the multi-stage load protocol)",
            errno.EINVAL,
        )
    for seg in segments:
        if seg.mem % PAGE_SIZE or seg.end % PAGE_SIZE:
            raise PlanError(
                f"segment {seg.describe()} is not page aligned",
                "mem and memsz must be multiples of 4096",
                errno.EADDRNOTAVAIL,
            )
        if limit is not None and seg.end > limit:
            raise PlanError(
                f"segment {seg.describe()} ends above the highest usable address {limit:#x}",
                "lower --mem-max or the image's addresses",
                errno.EADDRNOTAVAIL,
            )
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
    ordered = sorted(segments, key=lambda s: s.mem)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.mem < a.end:
            raise PlanError(
                f"segments overlap: {a.describe()} and {b.describe()}",
                "segments of one call must not share a page",
                errno.EINVAL,
            )
    if ram_bytes is not None:
        half = ram_bytes // 2
        total = 0
        for seg in segments:
            if seg.memsz > half:
                raise PlanError(
                    f"segment {seg.describe()} is larger than half of RAM ({half:#x} bytes)",
                    "the kernel refuses that in one call; --staged lifts the total limit",
                    errno.EINVAL,
                )
            total += seg.memsz
        if total > half:
            raise PlanError(
                f"segments total {total:#x} bytes, more than half of RAM ({half:#x})",
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

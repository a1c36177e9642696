"""Resuming a hibernation image: every PT_LOAD of the image at its physical
address, entered at the image's jump-back entry."""

from __future__ import annotations

import errno
from bisect import bisect_right
from collections.abc import Sequence

from kexec_py.boundary.abi import KEXEC_SEGMENT_MAX
from kexec_py.boundary.backends import Backend
from kexec_py.errors import FormatError, PlanError
from kexec_py.formats.vmcore import CoreImage
from kexec_py.load.kernel import kexec_load_flags
from kexec_py.load.staging import StagedPlan, call_budget, plan_load
from kexec_py.memmap import MemoryMap, MemRegion
from kexec_py.ranges import describe
from kexec_py.segments import Segment

__all__ = ["check_image_in_ram", "plan_resume"]


def check_image_in_ram(segs: Sequence[Segment], memmap: Sequence[MemRegion]) -> None:
    """Every segment of an image must lie in RAM of this machine (the
    kernel would write wherever it is told; kexec-tools refuses too)."""
    ram = MemoryMap.of(memmap).loadable_ram()
    starts = [r.start for r in ram]
    for s in segs:
        k = bisect_right(starts, s.mem) - 1
        if k < 0 or s.end > ram[k].end:
            raise PlanError(
                f"the image's memory {s.describe()} is not inside this machine's RAM "
                f"({describe(ram)})",
                "resume the image on the machine it was saved on (same memory map)",
                errno.EADDRNOTAVAIL)


def plan_resume(backend: Backend, image: CoreImage, *, entry: int | None = None,
                staged: str = "auto", max_segments: int = KEXEC_SEGMENT_MAX) -> StagedPlan:
    """Plan loading every PT_LOAD of ``image`` at its physical address,
    entered at ``entry`` (default: the jump-back entry in the image's
    note).  A normal load (not preserve context): ``exec`` then jumps into
    the hibernated kernel, which restores itself."""
    if entry is None:
        entry = image.jump_back_entry
        if entry is None:
            raise FormatError(
                f"{image.name} does not say where to jump: it has no kexec-py note with the "
                "jump-back entry", "give --entry (the kexec_jump_back_entry= value the "
                "hibernating kernel saw on its command line)")
    memmap = backend.memory_map()
    segs = image.segments()
    check_image_in_ram(segs, memmap)
    sp = plan_load(segs, entry, flags=kexec_load_flags(), staged=staged,
                   supported=backend.staged_supported(),
                   max_call_bytes=call_budget(memmap, backend),
                   max_segments=max_segments)
    runs = len(segs)
    sp.plan.notes.insert(0, f"{image.name}: {len(image.loads)} PT_LOAD(s) as {runs} segment(s), "
                            f"{image.loads.total_memsz:#x} bytes of memory, "
                            f"{image.loads.total_filesz:#x} from the file; entry {entry:#x}")
    return sp

"""The kexec core of the patched kernel, modelled page by page.

This follows the 2008 multi-stage load patch (kernel/kexec.c of 2.6.25 plus
the stages) as kernel/patches ports it to Linux 6.1 (kernel/README.md states
the ABI), with the prototype's defects fixed:

- a staged load is kept apart from the installed image until KS_final:
  ``/sys/kernel/kexec_loaded`` and ``reboot(KEXEC)`` never see a half
  loaded image, while ``/proc/kexec_pgmap`` shows the map of the load in
  progress (userspace reads it between stages);
- an error in any call of a staged load (any call with stage bits, except
  EPERM and EBUSY, which do not reach the image) drops the whole staged
  load; the next call must be KS_start or KS_full;
- KS_mid and KS_final are refused (EINVAL) unless a staged load is in
  progress -- after KS_full, after KS_final, or with nothing loaded;
- "in place" is recorded in the map as ``src == dst`` (not in
  ``page->lru``); /proc/kexec_pgmap leaves those entries out;
- the allocator without a destination (indirection pages) does not look
  up ``pfn_to_page(KIMAGE_NO_DEST)``;
- fix_old_pages() and the relocation list are built from a snapshot, not
  by walking the table while the allocator deletes from it;
- KS_final with no segments finishes the load (the seed made it a no-op).

KS_start with no segments abandons the staged load in progress and leaves
the loaded image alone (the seed unloaded both; kernel/patches 0003 makes
it the way userspace gives up a staged load without losing the image
loaded before), KS_mid with none does nothing.  An image preserves context if any of its calls set
KEXEC_PRESERVE_CONTEXT (the seed only ever sets the bit).

The page allocator (:meth:`ModelKernel._alloc_page`) is the seed's
``kimage_alloc_page``: a destination already placed returns its page; else
pages are taken from the free pool until one is usable:

1. *unusable*: at or above ``source_limit`` -> kept aside until the image
   is freed;
2. *in place*: the page is the destination itself;
3. *swap*: the page is the destination of an earlier page whose content
   waits in a source page -> the content moves home, the source page is
   considered instead;
4. the page is a destination of the current call, not yet loaded ->
   reserved in place for it, try again;
5. otherwise it becomes the source page of the destination.

Before a later stage loads, every source page that the stage's segments
target is *re-homed* (the seed's ``fix_old_pages``).  A later stage that
writes a destination placed earlier writes the same source page (the
seed's "parameter passing"): the last write wins.

To make every path run, the free pool is handed out in a seeded order
(:class:`~.order.PageOrder`) and, with probability ``collide``, the
allocator first offers a page that is a destination of the image being
loaded (the one asked for, one of this call's, or one of an earlier
call's).

Per-page state is kept in the compact tables of :mod:`.tables` (no
object per page): ``owner`` (pfn -> image id; 0 = the running kernel's own
memory; -1 = memory of a kernel frozen by a kexec jump), and per image
``map`` (dst -> src, a dict in behaviour) and its reverse ``rev`` (src ->
dst, for pages not in place).  Memory use is proportional to the pages
touched: ~24 bytes per page loaded, and a few bytes per page of the
machine where something was touched.

The allocator's loop (:meth:`ModelKernel._alloc`) works on those tables'
arrays directly and takes the seeded order's pages from a buffer
computed ahead; what it does page by page is the seed's algorithm above,
in the seed's order.
"""

from __future__ import annotations

import errno
import random
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from typing import Any

from kexec_py.boundary import abi
from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE, Stage
from kexec_py.model.config import ModelConfig
from kexec_py.model.order import PageOrder, Pool
from kexec_py.model.physmem import PhysMem
from kexec_py.model.tables import DEAD, Owners, PageTable, RevView
from kexec_py.segments import Segment

FLAVOURS = ("patched", "stock-6.1", "stock-6.6")

#: flag bits below KEXEC_ARCH_MASK each kernel accepts for kexec_load
LOAD_FLAGS = {
    "patched": abi.KEXEC_ON_CRASH | abi.KEXEC_PRESERVE_CONTEXT | abi.KEXEC_STAGE_MASK,
    "stock-6.1": abi.KEXEC_ON_CRASH | abi.KEXEC_PRESERVE_CONTEXT,
    "stock-6.6": abi.KEXEC_ON_CRASH | abi.KEXEC_PRESERVE_CONTEXT | abi.KEXEC_UPDATE_ELFCOREHDR
    | abi.KEXEC_CRASH_HOTPLUG_SUPPORT,
}
#: KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS (6.1, 6.6)
FILE_FLAGS = abi.KEXEC_FILE_UNLOAD | abi.KEXEC_FILE_ON_CRASH | abi.KEXEC_FILE_NO_INITRAMFS
#: x86_64 KEXEC_DESTINATION_MEMORY_LIMIT (MAXMEM - 1, 4-level paging)
DEST_LIMIT = (1 << 46) - 1
#: kimage entries per indirection page (the last slot links the next page)
ENTRIES_PER_PAGE = PAGE_SIZE // 8 - 1
U64_MAX = (1 << 64) - 1

STAGE_NAME = {Stage.FULL: "KS_full", Stage.START: "KS_start", Stage.MID: "KS_mid",
              Stage.FINAL: "KS_final"}


class KernelErr(Exception):
    """A system call of the model failed: ``errno`` and the model's reason."""

    def __init__(self, err: int, why: str) -> None:
        super().__init__(why)
        self.errno = err
        self.why = why


#: destinations for the allocator: (pfns, data, first, bufsz); see ModelKernel._alloc
Run = tuple[Iterable[int], "memoryview | None", int, int]


def _u64s(values: Any = ()) -> array[int]:
    """An array of unsigned 64-bit integers (the page tables' columns)."""
    return array("Q", values)


@dataclass(eq=False)
class Image:
    """A ``struct kimage``.  ``stage`` is the stage of its last successful
    call; the image is complete (executable) at KS_full or KS_final.

    Segments of every call are kept in parallel arrays (``seg_call`` is the
    call number).  ``pages`` are the pages the allocator gave this image
    (source pages, pages in place, indirection pages: the seed's
    ``dest_pages``), ``unusable`` and ``control`` (control code page, swap
    page) the others it holds; ``ind`` lists which of ``pages`` are
    indirection pages.  ``reloc_dst``/``reloc_src``
    are the relocation list built when the image is finished.  ``file``
    says what kexec_file_load placed where (None for kexec_load).
    """

    id: int
    kind: str
    crash: bool
    entry: int
    preserve_context: bool = False
    stage: Stage = Stage.FULL
    calls: int = 0
    seg_mem: array[int] = field(default_factory=_u64s)
    seg_memsz: array[int] = field(default_factory=_u64s)
    seg_bufsz: array[int] = field(default_factory=_u64s)
    seg_call: array[int] = field(default_factory=_u64s)
    map: PageTable = field(default_factory=PageTable)
    pages: array[int] = field(default_factory=_u64s)
    unusable: array[int] = field(default_factory=_u64s)
    control: array[int] = field(default_factory=_u64s)
    ind: array[int] = field(default_factory=_u64s)
    reloc_dst: array[int] = field(default_factory=_u64s)
    reloc_src: array[int] = field(default_factory=_u64s)
    file: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.stage in (Stage.FULL, Stage.FINAL)

    @property
    def rev(self) -> RevView:
        """src -> dst of the pages not in place."""
        return self.map.rev

    def pgmap_arrays(self) -> tuple[array[int], array[int]]:
        """(dst, src) of every page not in place, in insertion order (the
        map's arrays until it changes: not to be modified)."""
        return self.map.moved_arrays()

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "crash": self.crash,
            "entry": self.entry,
            "stage": STAGE_NAME[self.stage],
            "complete": self.complete,
            "calls": self.calls,
            "segments": len(self.seg_mem),
            "preserve_context": self.preserve_context,
            "destination_pages": len(self.map),
            "in_place": len(self.map) - len(self.rev),
            "mapped": len(self.rev),
            "unusable_pages": len(self.unusable),
            "control_pages": [p << PAGE_SHIFT for p in self.control],
            "indirection_pages": len(self.ind),
        }

    def segments(self) -> list[tuple[int, int, int]]:
        return list(zip(self.seg_mem, self.seg_memsz, self.seg_bufsz, strict=True))


@dataclass(eq=False)
class JumpRecord:
    """One transfer of control: ``what`` is "exec" (copy, no way back),
    "jump" (preserve context: pages swapped) or "return" (swapped back).

    ``entry`` is where the CPU went; ``segments`` the image's
    (mem, memsz, bufsz) in load order; ``cmdline`` and ``boot_params`` are
    what the booted kernel finds (the boot_params page among the segments:
    "HdrS" at 0x202, cmd_line_ptr at 0x228 and ext_cmd_line_ptr at 0x0c8);
    ``jump_back_entry`` is where a preserve-context image returns to (the
    control code page of the kernel that jumped); ``pages`` how many pages
    were copied or swapped; ``lost_bytes`` what went to addresses the model
    has no memory for.
    """

    what: str
    entry: int
    preserve_context: bool
    kind: str
    from_kernel: str
    to_kernel: str
    seg_mem: array[int] = field(default_factory=_u64s)
    seg_memsz: array[int] = field(default_factory=_u64s)
    seg_bufsz: array[int] = field(default_factory=_u64s)
    cmdline: str | None = None
    boot_params: int | None = None
    jump_back_entry: int | None = None
    pages: int = 0
    lost_bytes: int = 0

    def segments(self) -> list[tuple[int, int, int]]:
        return list(zip(self.seg_mem, self.seg_memsz, self.seg_bufsz, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what, "entry": self.entry, "preserve_context": self.preserve_context,
            "kind": self.kind, "from": self.from_kernel, "to": self.to_kernel,
            "segments": len(self.seg_mem), "cmdline": self.cmdline,
            "boot_params": self.boot_params, "jump_back_entry": self.jump_back_entry,
            "pages": self.pages, "lost_bytes": self.lost_bytes,
        }


@dataclass(eq=False)
class Level:
    """A kernel: the running one, or one frozen by a preserve-context jump.

    ``owner`` holds every pool page that is not free; ``nfree`` counts the
    rest.  ``entered`` says how this kernel was entered (None: booted by
    the model's firmware)."""

    name: str
    owner: Owners
    nfree: int
    cmdline: str
    kexec: Image | None = None
    staging: Image | None = None
    crash: Image | None = None
    entered: JumpRecord | None = None


class ModelKernel:
    """The model kernel.  Methods named after system calls raise
    :class:`KernelErr`; they assume the caller holds the kexec lock."""

    def __init__(self, config: ModelConfig, flavour: str, mem: PhysMem, *,
                 copy_contents: bool = True, cmdline: str = "") -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown model kernel {flavour!r}")
        self.config = config
        self.flavour = flavour
        self.mem = mem
        self.copy = copy_contents
        self.pool = Pool(config.pool_ranges())
        #: pages of the machine (every pool page is below)
        self.npfn = config.memory_size() >> PAGE_SHIFT
        self.order = PageOrder(self.pool, config.seed)
        self.rng = random.Random(config.seed ^ 0x6B65786563)
        self.collide = config.collide
        self.src_limit = (None if config.source_limit is None
                          else (config.source_limit + PAGE_SIZE - 1) >> PAGE_SHIFT)
        self.next_id = 1
        self.levels: list[Level] = [Level("original", Owners(self.npfn), self.pool.n, cmdline)]
        self.last_jump: JumpRecord | None = None
        #: remarks for `status` (e.g. recovery after an interrupted invocation)
        self.notes: list[str] = []
        #: pages handed out from a script before the seeded order (tests)
        self.script: list[int] = []
        # the current call's destinations: sorted pfn ranges
        self._new_starts: list[int] = []
        self._new_ends: list[int] = []
        self._call_segs: list[tuple[int, int]] = []

    # --- views ------------------------------------------------------------------------

    @property
    def level(self) -> Level:
        return self.levels[-1]

    @property
    def staged_supported(self) -> bool:
        return self.flavour == "patched"

    def pgmap_image(self) -> Image | None:
        """The image /proc/kexec_pgmap shows: the staged load in progress,
        else the installed image."""
        lvl = self.level
        return lvl.staging if lvl.staging is not None else lvl.kexec

    def free_pages(self) -> int:
        return self.level.nfree

    def stage_of(self, flags: int) -> Stage:
        return abi.flags_stage(flags) if self.flavour == "patched" else Stage.FULL

    # --- kexec_load ------------------------------------------------------------------------

    def precheck_load(self, nr_segments: int, flags: int) -> None:
        """What ``kexec_load_check`` and the architecture check refuse before
        the kexec lock is taken (EPERM is the caller's)."""
        allowed = LOAD_FLAGS[self.flavour]
        bad = flags & ~abi.KEXEC_ARCH_MASK & ~allowed
        if bad:
            known = {"patched": "KEXEC_ON_CRASH, KEXEC_PRESERVE_CONTEXT and the stage field "
                                "0xc",
                     "stock-6.1": "only KEXEC_ON_CRASH and KEXEC_PRESERVE_CONTEXT",
                     "stock-6.6": "KEXEC_ON_CRASH, KEXEC_PRESERVE_CONTEXT, "
                                  "KEXEC_UPDATE_ELFCOREHDR and KEXEC_CRASH_HOTPLUG_SUPPORT"}
            raise KernelErr(errno.EINVAL, f"flag bits {bad:#x} are unknown to this kernel "
                                          f"({self.flavour} knows {known[self.flavour]})")
        if nr_segments > abi.KEXEC_SEGMENT_MAX:
            raise KernelErr(errno.EINVAL, f"{nr_segments} segments: at most "
                                          f"{abi.KEXEC_SEGMENT_MAX} per call")
        arch = flags & abi.KEXEC_ARCH_MASK
        if arch not in (abi.KEXEC_ARCH_DEFAULT, abi.KEXEC_ARCH_X86_64):
            raise KernelErr(errno.EINVAL, f"architecture {arch >> 16} in the flags: the model "
                                          "is an x86_64 machine")

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        """``do_kexec_load`` with the seed's stages.  On error a staged load
        in progress is dropped when the call carried stage bits."""
        stage = self.stage_of(flags)
        try:
            self._kexec_load(entry, segments, flags, stage)
        except KernelErr:
            if stage != Stage.FULL:
                self.drop_staging()
            raise

    def drop_staging(self) -> None:
        lvl = self.level
        if lvl.staging is not None:
            self._free_image(lvl.staging)
            lvl.staging = None

    def _kexec_load(self, entry: int, segs: Sequence[Segment], flags: int, stage: Stage) -> None:
        lvl = self.level
        crash = bool(flags & abi.KEXEC_ON_CRASH)
        preserve = bool(flags & abi.KEXEC_PRESERVE_CONTEXT)
        if crash and stage != Stage.FULL:
            raise KernelErr(errno.EINVAL, "the multi-stage load is not supported for crash "
                                          "kernels (KEXEC_ON_CRASH with stage bits)")
        if stage in (Stage.MID, Stage.FINAL) and lvl.staging is None:
            if lvl.kexec is not None and lvl.kexec.stage == Stage.FINAL:
                why = "the staged load was finished by KS_final"
            elif lvl.kexec is not None:
                why = "the loaded image was loaded with KS_full"
            else:
                why = "no staged load is in progress"
            raise KernelErr(errno.EINVAL, f"{STAGE_NAME[stage]}: {why}; the next call must be "
                                          "KS_start or KS_full")
        if stage in (Stage.MID, Stage.FINAL) and lvl.staging is not None \
                and lvl.staging.preserve_context != preserve:
            raise KernelErr(errno.EINVAL, f"{STAGE_NAME[stage]}: KEXEC_PRESERVE_CONTEXT differs "
                                          "from the staged load's KS_start")
        if not segs:
            self._no_segments(stage, crash, preserve)
            return
        if crash:
            self._load_crash(entry, segs, "kexec_load", None)
            return
        self.check_segments(segs, crash=False)
        created = stage in (Stage.FULL, Stage.START)
        if created:
            img = self._new_image("kexec_load", entry)
        else:
            assert lvl.staging is not None
            img = lvl.staging
        try:
            self._load_call(img, segs, fix=not created)
            if stage in (Stage.FULL, Stage.FINAL):
                self._finish(img)
        except BaseException:
            if created:
                self._free_image(img)
            raise
        img.preserve_context |= preserve
        img.stage = stage
        img.calls += 1
        self._install(img, stage)

    def _no_segments(self, stage: Stage, crash: bool, preserve: bool) -> None:
        lvl = self.level
        if crash:
            self._free_image(lvl.crash)
            lvl.crash = None
        elif stage == Stage.FULL:
            self._free_image(lvl.kexec)
            self._free_image(lvl.staging)
            lvl.kexec = lvl.staging = None
        elif stage == Stage.START:  # abandon the staged load, keep the loaded image
            self._free_image(lvl.staging)
            lvl.staging = None
        elif stage == Stage.FINAL:
            img = lvl.staging
            assert img is not None
            self._finish(img)
            img.preserve_context |= preserve
            img.stage = stage
            img.calls += 1
            self._install(img, stage)

    def _install(self, img: Image, stage: Stage) -> None:
        lvl = self.level
        if stage in (Stage.FULL, Stage.START):
            old, old_staging = lvl.kexec, lvl.staging
            if stage == Stage.FULL:
                lvl.kexec, lvl.staging = img, None
                self._free_image(old)
            else:
                # the image loaded before stays loaded (and executable) until
                # KS_final replaces it, as in kernel/patches 0003
                lvl.staging = img
            self._free_image(old_staging)
        elif stage == Stage.FINAL:
            old = lvl.kexec
            lvl.kexec, lvl.staging = img, None
            self._free_image(old)

    def _new_image(self, kind: str, entry: int, crash: bool = False) -> Image:
        img = Image(self.next_id, kind, crash, entry, map=PageTable(0 if crash else self.npfn))
        self.next_id += 1
        return img

    # --- the kernel's segment rules ---------------------------------------------------------

    def check_segments(self, segs: Sequence[Segment], crash: bool) -> None:
        """``sanity_check_segment_list()`` of 6.1, in its order."""
        if not crash and self._segments_fine(segs):
            return
        for s in segs:
            mem, memsz = s.mem, s.memsz
            if mem < 0 or memsz < 0 or mem + memsz > U64_MAX:
                raise KernelErr(errno.EADDRNOTAVAIL, f"segment {s.describe()} wraps around")
            if mem & (PAGE_SIZE - 1) or (mem + memsz) & (PAGE_SIZE - 1):
                raise KernelErr(errno.EADDRNOTAVAIL,
                                f"segment {s.describe()} is not page aligned")
            if mem + memsz >= DEST_LIMIT:
                raise KernelErr(errno.EADDRNOTAVAIL, f"segment {s.describe()} ends above the "
                                                     "x86_64 destination limit")
        # sorted by address, segments overlap only if one starts before the
        # end of one before it; then the kernel's pairwise loop names them
        end = -1
        for a, b in sorted((s.mem, s.mem + s.memsz) for s in segs):
            if a < end:
                self._check_overlap(segs)
                break
            end = max(end, b)
        for s in segs:
            if s.bufsz > s.memsz or s.bufsz < 0:
                raise KernelErr(errno.EINVAL, f"segment {s.describe()} has bufsz > memsz")
        half = self.pool.n // 2
        total = 0
        for s in segs:
            count = (s.memsz + PAGE_SIZE - 1) >> PAGE_SHIFT
            if count > half:
                raise KernelErr(errno.EINVAL, f"segment {s.describe()} is more than half of "
                                              f"RAM ({half} pages)")
            total += count
            if total > half:
                raise KernelErr(errno.EINVAL, f"the segments of this call take {total}+ pages, "
                                              f"more than half of RAM ({half} pages)")
        if crash:
            region = self.config.regions.crash_region()
            for s in segs:
                if region is None or s.mem < region.start or s.mem + s.memsz > region.end:
                    where = "no crash region is reserved" if region is None else \
                        f"the crash region is {region}"
                    raise KernelErr(errno.EADDRNOTAVAIL,
                                    f"crash segment {s.describe()} is outside it: {where}")

    def _segments_fine(self, segs: Sequence[Segment]) -> bool:
        """Whether :meth:`check_segments` finds nothing wrong (crash
        segments aside), in one pass; if not, it finds what."""
        total = 0
        spans: list[tuple[int, int]] = []
        for s in segs:
            mem, memsz, bufsz = s.mem, s.memsz, s.bufsz
            end = mem + memsz
            if mem < 0 or memsz < 0 or (mem | end) & (PAGE_SIZE - 1) or end >= DEST_LIMIT \
                    or not 0 <= bufsz <= memsz:
                return False
            total += memsz
            spans.append((mem, end))
        # (a segment of more than half of RAM is more than half in all)
        if total >> PAGE_SHIFT > self.pool.n // 2:
            return False
        last = -1
        for a, b in sorted(spans):
            if a < last:
                return False
            if b > last:
                last = b
        return True

    @staticmethod
    def _check_overlap(segs: Sequence[Segment]) -> None:
        for i, a in enumerate(segs):
            for b in segs[:i]:
                if a.mem + a.memsz > b.mem and a.mem < b.mem + b.memsz:
                    raise KernelErr(errno.EINVAL, f"segments {b.describe()} and {a.describe()} "
                                                  "overlap")

    # --- loading -------------------------------------------------------------------------

    def _load_call(self, img: Image, segs: Sequence[Segment], fix: bool) -> None:
        """Record the call's segments, re-home earlier source pages they
        target, and load them page by page."""
        mems = [s.mem for s in segs]
        sizes = [s.memsz for s in segs]
        bufszs = [s.bufsz for s in segs]
        img.seg_mem.extend(mems)
        img.seg_memsz.extend(sizes)
        img.seg_bufsz.extend(bufszs)
        img.seg_call.extend(repeat(img.calls, len(segs)))
        firsts = [m >> PAGE_SHIFT for m in mems]
        ends = [(m + z) >> PAGE_SHIFT for m, z in zip(mems, sizes, strict=True)]
        ranges = sorted(r for r in zip(firsts, ends, strict=True) if r[0] < r[1])
        self._new_starts = [a for a, _ in ranges]
        self._new_ends = [b for _, b in ranges]
        self._call_segs = [(a, b - a) for a, b in ranges]
        try:
            if fix and img.map.moved:
                self._fix_old_pages(img)
            # a segment without its buffer: the segments before it are loaded
            # first, as in the seed
            bad = [j for j, s in enumerate(segs)
                   if s.bufsz and (s.buf is None or len(s.buf) < s.bufsz)]
            n = bad[0] if bad else len(segs)
            runs: list[Run]
            if self.copy:
                runs = [(range(f, e), memoryview(s.buf).cast("B") if s.bufsz and s.buf is not None
                         else memoryview(b""), f, s.bufsz)
                        for f, e, s in zip(firsts[:n], ends[:n], segs[:n], strict=True)]
            else:  # nothing per segment: their pages as one run
                runs = [(chain.from_iterable(map(range, firsts[:n], ends[:n])), None, 0, 0)]
            self._alloc(img, runs)
            if bad:
                s = segs[n]
                have = "no buffer" if s.buf is None else f"a buffer of {len(s.buf)} bytes"
                raise KernelErr(errno.EFAULT, f"segment {s.describe()} has {have} for bufsz "
                                              f"{s.bufsz:#x}")
        finally:
            self._new_starts, self._new_ends, self._call_segs = [], [], []

    def _is_new_dest(self, pfn: int) -> bool:
        """Whether ``pfn`` is a destination of the current call."""
        i = bisect_right(self._new_starts, pfn)
        return i > 0 and pfn < self._new_ends[i - 1]

    def _fix_old_pages(self, img: Image) -> None:
        """Re-home every source page that a destination of this call is:
        its content moves to a newly allocated page for its destination,
        and the page stays, reserved in place for this call."""
        m = img.map
        starts, ends = self._new_starts, self._new_ends
        if m.moved < sum(ends) - sum(starts):
            cands = [p for p in m.rev if self._is_new_dest(p)]
        else:  # the call's pages in the index: sources (and destinations, skipped)
            if ends[-1] > m.npfn:
                starts = [min(a, m.npfn) for a in starts]
                ends = [min(e, m.npfn) for e in ends]
            cands = list(chain.from_iterable(map(compress, map(range, starts, ends),
                                                 map(m.idx.__getitem__,
                                                     map(slice, starts, ends)))))
        self._alloc(img, [(cands, None, 0, 0)], rehome=True)

    def _alloc_page(self, img: Image, dest: int) -> int:
        """``kimage_alloc_page``: the page that will hold destination pfn
        ``dest`` until execution (-1: a page that is nobody's destination)."""
        return self._alloc(img, [((dest,), None, 0, 0)])

    def _alloc(self, img: Image, runs: Iterable[Run], rehome: bool = False) -> int:
        """The seed's ``kimage_alloc_page`` for each destination of ``runs``
        in turn; returns the last page.

        For a destination already placed, its page; else pages are taken
        from the pool (:meth:`_hand_out`, inlined) until one is usable:
        unusable (at or above the source limit, kept aside), in place, a
        swap (an earlier destination: its content moves home from its
        source page, which is considered instead), a destination of this
        call not loaded yet (reserved in place, try again), else the source
        page of the destination.

        A run is (destinations, data, first, bufsz): with ``data``
        (contents are copied), destination ``d`` gets ``data[(d - first) *
        PAGE_SIZE:]`` up to ``bufsz``, zeros past it, right after its page is
        allocated (the next allocation may move it).  With ``rehome``, the
        destinations are source pages that this call loads
        (``fix_old_pages``): each one's destination is removed from the map
        and allocated again, its content copied there, and the page
        reserved in place.  Destination -1 asks for a page that is nobody's
        destination.

        The map, the owners and the order are the tables' arrays, used
        directly; their counters are brought up to date at the end, also
        on error."""
        m = img.map
        idx, key, ldst, lsrc, far = m.idx, m.key, m.ldst, m.lsrc, m.far
        npfn = self.npfn
        lvl = self.level
        owner = lvl.owner
        codes = owner.codes
        code = owner.code_for(img.id)
        limit = 1 << 64 if self.src_limit is None else self.src_limit
        add_page, add_unusable = img.pages.append, img.unusable.append
        order = self.order
        it = order.it
        starts, ends = self._new_starts, self._new_ends
        lo, hi = (starts[0], ends[-1]) if starts else (0, 0)
        offer = bool(self.script) or bool(self.collide)
        copy, mem, write = self.copy, self.mem, self.mem.write_page
        nfree0 = nfree = lvl.nfree
        nlog0 = nlog = len(ldst)
        kept = dropped = swapped = 0  # entries added in place, deleted, turned in place
        p = x = dest = -1
        rehoming = False  # a destination's entry is gone, its new one not yet there

        def keep(q: int, n: int) -> int:
            """Log entry ``n + 1``: page ``q`` in place; returns ``n + 1``.
            (A call costs ~30 ns, under 1 % of bench/bench_model.py's load.)"""
            ldst.append(q)
            lsrc.append(q)
            idx[q] = n + 1
            key[q] = 1
            return n + 1
        try:
            for dests, data, first, bufsz in runs:
                for x in dests:
                    if rehome:
                        i = idx[x]
                        if not i or key[x]:
                            continue  # no source (any more: re-homed by the allocator)
                        # del rev[x], del map[dest]; their index entries are
                        # left to the new entries (nothing reads them before)
                        dest = ldst[i - 1]
                        if dest >= npfn:
                            m.set_far(dest, 0)
                        ldst[i - 1] = DEAD
                        dropped += 1
                        rehoming = True
                    else:
                        dest = x
                        i = idx[dest] if 0 <= dest < npfn else far.get(dest, 0)
                        if i and ldst[i - 1] == dest:  # placed: a later stage writes it again
                            p = lsrc[i - 1]
                            if data is not None:
                                off = (dest - first) << PAGE_SHIFT
                                write(p, data[off:min(off + PAGE_SIZE, bufsz)]
                                      if off < bufsz else b"")
                            continue
                    while True:
                        if nfree <= 0:
                            raise self._enomem()
                        if offer and (p := self._offer(img, dest)) >= 0:
                            pass
                        else:  # the next free page in the seeded order
                            while True:
                                for p in it:
                                    if not codes[p]:
                                        break
                                else:
                                    order.refill()
                                    it = order.it
                                    continue
                                break
                        codes[p] = code
                        nfree -= 1
                        if p >= limit:
                            add_unusable(p)
                            continue
                        add_page(p)
                        if p == dest:  # in place
                            nlog = keep(p, nlog)
                            kept += 1
                            break
                        if key[p]:
                            # p is an earlier destination whose content waits in s: move it home
                            i = idx[p]
                            s = lsrc[i - 1]
                            if copy:
                                mem.copy_pages(p, s)
                            lsrc[i - 1] = p
                            idx[s] = 0
                            swapped += 1
                            p = s
                        if lo <= p < hi:
                            j = bisect_right(starts, p)
                            if j and p < ends[j - 1]:  # reserved in place for a page of this call
                                nlog = keep(p, nlog)
                                kept += 1
                                continue
                        if dest >= 0:
                            ldst.append(dest)
                            lsrc.append(p)
                            nlog += 1
                            if dest < npfn:
                                idx[dest] = nlog
                                key[dest] = 1
                            else:
                                m.set_far(dest, nlog)
                            idx[p] = nlog
                        break
                    if rehome:
                        if copy:
                            mem.copy_pages(p, x)
                        nlog = keep(x, nlog)
                        kept += 1
                        rehoming = False
                    elif data is not None:
                        off = (dest - first) << PAGE_SHIFT
                        write(p, data[off:min(off + PAGE_SIZE, bufsz)] if off < bufsz else b"")
        finally:
            if rehoming:  # an error between an entry's deletion and the new entries
                idx[x] = 0
                if dest < npfn and ldst[idx[dest] - 1] != dest:
                    idx[dest] = key[dest] = 0
            lvl.nfree = nfree
            owner.add_count(nfree0 - nfree)
            added = nlog - nlog0
            if added or dropped or swapped:
                m.n += added - dropped
                m.moved += added - kept - dropped - swapped
                m.touch()
        return p

    def _enomem(self) -> KernelErr:
        return KernelErr(errno.ENOMEM, f"out of memory: all {self.pool.n} pages of RAM are in "
                                       "use")

    def _offer(self, img: Image, dest: int) -> int:
        """What the allocator offers before the seeded order: a scripted
        page, or (with probability ``collide``) a destination of ``img``;
        -1: neither."""
        owner = self.level.owner
        while self.script:
            p = self.script.pop(0)
            if p in self.pool and p not in owner:
                return p
        if self.collide and self.rng.random() < self.collide:
            p = self._pick_destination(img, dest)
            if p >= 0 and p not in owner and p in self.pool:
                return p
        return -1

    def _hand_out(self, img: Image, dest: int) -> int:
        """A free pool page: a scripted one, a destination of ``img`` (with
        probability ``collide``), or the next free one in the seeded order."""
        lvl = self.level
        if lvl.nfree <= 0:
            raise self._enomem()
        p = self._offer(img, dest)
        if p >= 0:
            return p
        codes, nxt = lvl.owner.codes, self.order.next
        while True:
            p = nxt()
            if not codes[p]:
                return p

    def _pick_destination(self, img: Image, dest: int) -> int:
        rng = self.rng
        which = rng.randrange(3)
        if which == 0 and dest >= 0:
            return dest
        if which == 1 and self._call_segs:
            a, n = self._call_segs[rng.randrange(len(self._call_segs))]
            return a + rng.randrange(n)
        if len(img.seg_mem):
            i = rng.randrange(len(img.seg_mem))
            n = img.seg_memsz[i] >> PAGE_SHIFT
            if n:
                return (img.seg_mem[i] >> PAGE_SHIFT) + rng.randrange(n)
        return -1

    def _release(self, pages: Iterable[int]) -> None:
        lvl = self.level
        lvl.nfree += lvl.owner.release(pages)

    def _free_image(self, img: Image | None) -> None:
        """``kimage_free``: every page the image holds goes back to the pool."""
        if img is None:
            return
        for arr in (img.pages, img.unusable, img.control):  # ind pages are in pages
            self._release(arr)
        img.pages, img.unusable, img.control, img.ind = _u64s(), _u64s(), _u64s(), _u64s()
        img.map = PageTable()

    # --- finishing: control pages and the relocation list ----------------------------------

    def _finish(self, img: Image) -> None:
        """KS_final / KS_full: control code page and swap page, then the
        relocation list (``kimage_create_swap_map``)."""
        for _ in range(2):
            self._alloc_control(img)
        self._build_relocation(img)

    def _alloc_control(self, img: Image) -> None:
        """``kimage_alloc_normal_control_pages``: a page that is no
        destination; pages that are go on an extra list, freed at the end."""
        extra: list[int] = []
        owner = self.level.owner
        limit = self.src_limit
        try:
            while True:
                p = self._hand_out(img, -1)
                owner[p] = img.id
                self.level.nfree -= 1
                if (limit is not None and p >= limit) or p in img.map or self._is_new_dest(p):
                    extra.append(p)
                    continue
                img.control.append(p)
                return
        finally:
            self._release(extra)

    def _build_relocation(self, img: Image) -> None:
        """Indirection pages for the kimage entry list (one IND_DESTINATION
        and one IND_SOURCE entry per page not in place, as the seed writes
        them, 511 entries per page), then the list itself from the map."""
        def need() -> int:
            return -(-2 * len(img.rev) // ENTRIES_PER_PAGE)

        while len(img.ind) < need():
            img.ind.append(self._alloc_page(img, -1))
        img.reloc_dst, img.reloc_src = img.pgmap_arrays()

    # --- crash images ----------------------------------------------------------------------

    def _load_crash(self, entry: int, segs: Sequence[Segment], kind: str,
                    file: dict[str, Any] | None) -> None:
        """A crash image: the old one is freed first (as 6.1 does), then the
        segments are copied straight to their place in the crash region."""
        lvl = self.level
        self._free_image(lvl.crash)
        lvl.crash = None
        region = self.config.regions.crash_region()
        if region is None or not region.start <= entry < region.end:
            where = "no crash region is reserved" if region is None else \
                f"outside the crash region {region}"
            raise KernelErr(errno.EADDRNOTAVAIL, f"crash entry {entry:#x}: {where}")
        self.check_segments(segs, crash=True)
        img = self._new_image(kind, entry, crash=True)
        img.file = file
        for s in segs:
            bufsz, buf = s.bufsz, s.buf
            if bufsz and (buf is None or len(buf) < bufsz):
                raise KernelErr(errno.EFAULT, f"segment {s.describe()} has no buffer of "
                                              f"{bufsz:#x} bytes")
            img.seg_mem.append(s.mem)
            img.seg_memsz.append(s.memsz)
            img.seg_bufsz.append(bufsz)
            img.seg_call.append(0)
            if self.copy:
                mv = memoryview(buf).cast("B") if bufsz and buf is not None else \
                    memoryview(b"")
                for k in range(s.memsz >> PAGE_SHIFT):
                    off = k << PAGE_SHIFT
                    chunk = mv[off:min(off + PAGE_SIZE, bufsz)] if off < bufsz else b""
                    self.mem.write_page((s.mem >> PAGE_SHIFT) + k, chunk)
        img.stage = Stage.FULL
        img.calls = 1
        lvl.crash = img

    # --- kexec_file_load -------------------------------------------------------------------

    def file_load(self, entry: int, segs: Sequence[Segment], crash: bool,
                  file: dict[str, Any]) -> None:
        """Load what kexec_file_load's loader placed (one KS_full call)."""
        if crash:
            self._load_crash(entry, segs, "kexec_file_load", file)
            return
        self.check_segments(segs, crash=False)
        img = self._new_image("kexec_file_load", entry)
        img.file = file
        try:
            self._load_call(img, segs, fix=False)
            self._finish(img)
        except BaseException:
            self._free_image(img)
            raise
        img.stage = Stage.FULL
        img.calls = 1
        self._install(img, Stage.FULL)

    def unload(self, crash: bool) -> None:
        self._no_segments(Stage.FULL, crash, False)

    # --- execution ---------------------------------------------------------------------------

    def reboot(self) -> JumpRecord:
        """``kernel_kexec()``: copy (or, with preserve context, swap) every
        page of the relocation list and "jump" to the entry.  In a kernel
        entered by a preserve-context jump with nothing loaded, this
        returns to the kernel that jumped (kexec-tools' jump-back helper)."""
        lvl = self.level
        img = lvl.kexec
        if img is None:
            if len(self.levels) > 1:
                return self.jump_back()
            raise KernelErr(errno.EINVAL, "no kexec image is loaded")
        lost0 = self.mem.lost_bytes
        moved = self._relocate(img, swap=img.preserve_context)
        bp, cmd = self._boot_params(img)
        name = f"image@{img.entry:#x}"
        rec = JumpRecord(
            "jump" if img.preserve_context else "exec", img.entry, img.preserve_context,
            img.kind, lvl.name, name, _u64s(img.seg_mem), _u64s(img.seg_memsz),
            _u64s(img.seg_bufsz),
            cmd, bp, (img.control[0] << PAGE_SHIFT) if img.preserve_context and img.control
            else None, moved, self.mem.lost_bytes - lost0)
        owner = lvl.owner.frozen() if img.preserve_context else Owners(self.npfn)
        owner.set_many(self.pool.select(img.map), 0)
        if img.preserve_context:
            self.levels.append(Level(name, owner, self.pool.n - len(owner), cmd or "",
                                     entered=rec))
        else:
            self.levels = [Level(name, owner, self.pool.n - len(owner), cmd or "",
                                 entered=rec)]
        self.last_jump = rec
        return rec

    def jump_back(self) -> JumpRecord:
        """Return from a kernel entered by a preserve-context jump: swap
        back, and the kernel that jumped runs again with its image still
        loaded."""
        if len(self.levels) < 2:
            raise KernelErr(errno.EINVAL, "this kernel was not entered by a preserve-context "
                                          "jump: there is no kernel to return to")
        top = self.levels.pop()
        below = self.level
        img = below.kexec
        assert img is not None
        lost0 = self.mem.lost_bytes
        moved = self._relocate(img, swap=True)
        back = (img.control[0] << PAGE_SHIFT) if img.control else 0
        rec = JumpRecord("return", back, True, img.kind, top.name, below.name,
                         pages=moved, lost_bytes=self.mem.lost_bytes - lost0)
        self.last_jump = rec
        return rec

    def _relocate(self, img: Image, swap: bool) -> int:
        """Copy (or swap) every (dst, src) of the relocation list, a run of
        consecutive pages at a time.  Returns the number of pages."""
        dst, src = img.reloc_dst, img.reloc_src
        n = len(dst)
        if not self.copy:
            return n
        op = self.mem.swap_pages if swap else self.mem.copy_pages
        i = 0
        while i < n:
            d0, s0 = dst[i], src[i]
            j = i + 1
            while j < n and dst[j] == d0 + (j - i) and src[j] == s0 + (j - i):
                j += 1
            op(d0, s0, j - i)
            i = j
        return n

    def _boot_params(self, img: Image) -> tuple[int | None, str | None]:
        """Where the booted kernel's boot_params page is and its command
        line, found as an x86 kernel would: "HdrS" at 0x202 of a page that
        starts a segment, cmd_line_ptr at 0x228 (high half at 0x0c8)."""
        if not self.copy:
            if img.file is not None:
                return img.file.get("boot_params"), img.file.get("cmdline")
            return None, None
        read = self.mem.read
        for i in range(len(img.seg_mem)):
            a = img.seg_mem[i]
            if img.seg_memsz[i] < PAGE_SIZE or read(a + 0x202, 4) != b"HdrS":
                continue
            lo, = struct.unpack("<I", read(a + 0x228, 4))
            hi, = struct.unpack("<I", read(a + 0xC8, 4))
            ptr = lo | hi << 32
            if ptr == 0:
                continue
            raw = read(ptr, PAGE_SIZE)
            return a, raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return None, None

    # --- the running kernel's memory --------------------------------------------------------

    def claim(self, addr: int, size: int) -> None:
        """Mark the pool pages of ``[addr, addr + size)`` as the running
        kernel's (so the allocator never hands them out).  Refuses pages an
        image holds, or that belong to a kernel frozen by a jump."""
        lvl = self.level
        first, end = addr >> PAGE_SHIFT, (addr + size + PAGE_SIZE - 1) >> PAGE_SHIFT
        pages = [p for p in range(first, end) if p in self.pool]
        for p in pages:
            o = lvl.owner.get(p)
            if o is not None and o != 0:
                what = ("belongs to a kernel frozen by a kexec jump" if o < 0
                        else "holds a page of a loaded kexec image")
                raise KernelErr(errno.EFAULT, f"page {p << PAGE_SHIFT:#x} {what}")
        for p in pages:
            if p not in lvl.owner:
                lvl.owner[p] = 0
                lvl.nfree -= 1

    # --- checks for tests ----------------------------------------------------------------------

    def check_invariants(self) -> list[str]:
        """Every violated invariant of the allocator and the map, in words
        (empty: all hold).  O(pages held)."""
        bad: list[str] = []
        lvl = self.level
        owner = lvl.owner
        if lvl.nfree != self.pool.n - len(owner):
            bad.append(f"nfree {lvl.nfree} != {self.pool.n} - {len(owner)}")
        for p in owner:
            if p not in self.pool:
                bad.append(f"owned page {p:#x} is not in the pool")
                break
        if len(owner) != sum(1 for _ in owner):
            bad.append(f"owner counts {len(owner)} pages, holds {sum(1 for _ in owner)}")
        held: dict[int, int] = {}
        for img in (lvl.kexec, lvl.staging, lvl.crash):
            if img is None:
                continue
            bad += [f"image {img.id}: {why}" for why in img.map.check()]
            for arr in (img.pages, img.unusable, img.control):
                for p in arr:
                    if p in held:
                        bad.append(f"page {p:#x} held twice")
                    held[p] = img.id
                    if owner.get(p) != img.id:
                        bad.append(f"page {p:#x} of image {img.id} not owned by it")
            pages = set(img.pages)
            for d, s in img.map.items():
                if d == s:
                    if d not in pages:
                        bad.append(f"in-place page {d:#x} not allocated to the image")
                else:
                    if img.rev.get(s) != d:
                        bad.append(f"rev[{s:#x}] != {d:#x}")
                    if s not in pages:
                        bad.append(f"source page {s:#x} not allocated to the image")
                    if s in img.map:
                        bad.append(f"source page {s:#x} is also a destination")
            if len(img.rev) != sum(1 for d, s in img.map.items() if d != s):
                bad.append("rev has entries the map does not")
            if img.complete and not img.crash:
                if sorted(img.reloc_dst) != sorted(d for d, s in img.map.items() if d != s):
                    bad.append("relocation list differs from the map")
                for p in img.control:
                    if p in img.map:
                        bad.append(f"control page {p:#x} is a destination")
        for p, o in owner.items():
            if o > 0 and p not in held:
                bad.append(f"page {p:#x} owned by image {o} that does not hold it")
                break
        return bad

    # --- iteration helpers -----------------------------------------------------------------

    def images(self) -> Iterator[Image]:
        for lvl in self.levels:
            for img in (lvl.kexec, lvl.staging, lvl.crash):
                if img is not None:
                    yield img

"""The staged load: a segment list -> kexec_load calls, and running them.

Planning (pure): :func:`plan_load` turns the segments of a load into calls
of at most 16 segments.  One ``KS_full`` call when everything fits and no
parameter needs the kernel's page map; otherwise ``KS_start`` (the entry
point, and the zero placeholder of the parameter segment when there is
one), ``KS_mid`` calls, and ``KS_final`` -- which, with a parameter,
carries only the parameter's real content at the placeholder's address
(overlap across stages is the seed's "parameter passing": the later write
lands in the same source page, so the page map read before KS_final stays
true after it).

Execution: :func:`execute` runs a plan on a :class:`Backend`, reads
``/proc/kexec_pgmap`` before KS_final when a parameter needs it, checks it
against the plan, builds the parameter, and -- on any error, SIGINT or
SIGTERM -- abandons the staged load before it re-raises (the image loaded
before stays loaded), naming the call, its stage and the errno.

Stage bits are sent only to a kernel that says it speaks the protocol
(``/proc/kexec_pgmap`` exists): on mainline 0x4 and 0x8 mean
``KEXEC_UPDATE_ELFCOREHDR`` (6.6) and ``KEXEC_CRASH_HOTPLUG_SUPPORT``, so a
stock kernel would not refuse a staged call, it would misread it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from kexec_py.boundary.abi import KEXEC_SEGMENT_MAX, PAGE_SHIFT, PAGE_SIZE, Stage, stage_flags
from kexec_py.boundary.backends import Backend
from kexec_py.boundary.procfs import PageMap
from kexec_py.errors import KexecError, PlanError, SyscallError, UnsupportedError
from kexec_py.load.plan import Call, Plan
from kexec_py.memmap import MemoryMap, MemRegion
from kexec_py.segments import Segment, check_segments

StagedMode = Literal["auto", "always", "never"]
STAGED_MODES: tuple[str, ...] = ("auto", "always", "never")

#: why the stage bits are never sent to a kernel without /proc/kexec_pgmap
STOCK_KERNEL_DANGER = (
    "kexec-py sends the stage bits only to a kernel with /proc/kexec_pgmap: stock kernels "
    "since 6.6 take 0x4 as KEXEC_UPDATE_ELFCOREHDR (and later 0x8 as "
    "KEXEC_CRASH_HOTPLUG_SUPPORT) and would misread a staged call instead of refusing it; "
    "boot a kernel with the kexec multi-stage load patch (kernel/ in the kexec-py sources)"
)


@dataclass
class Parameter:
    """A segment whose content exists only once the kernel has placed the
    other segments: a zero placeholder of worst-case size ``memsz`` at
    ``mem`` goes into KS_start, and ``build(pagemap)`` (at most ``memsz``
    bytes) overwrites it in KS_final.  ``name`` is for messages."""

    name: str
    mem: int
    memsz: int
    build: Callable[[PageMap], bytes]

    def placeholder(self) -> Segment:
        return Segment(self.mem, self.memsz, 0, None, f"{self.name} placeholder")

    def final(self, content: bytes | None) -> Segment:
        """The KS_final segment; without content (a dry run) bufsz is the
        worst case."""
        if content is None:
            return Segment(self.mem, self.memsz, self.memsz, None, self.name)
        return Segment(self.mem, self.memsz, len(content), content, self.name)


@dataclass
class StagedPlan:
    """A :class:`Plan` plus what executing it needs beyond the JSON
    contract: the parameter (if any) and the per-call byte budget used."""

    plan: Plan
    parameter: Parameter | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return self.plan.staged


# --- planning -------------------------------------------------------------------------



def call_budget(memmap: Sequence[MemRegion], backend: Backend) -> int:
    """Bytes of segments one kexec_load call may carry: the kernel refuses
    more than half of ``totalram_pages()``.  That is the RAM the backend's
    kernel counts (:meth:`Backend.total_ram`: MemTotal of /proc/meminfo
    for a real kernel, what a kernel booted with ``mem=`` or confined by
    ``memmap=`` really has) when it says, else the RAM of the memory map,
    which is a little more; kexec-py keeps to 90 % of the half."""
    pages = sum((r.end >> PAGE_SHIFT) - ((r.start + PAGE_SIZE - 1) >> PAGE_SHIFT)
                for r in MemoryMap.of(memmap).system_ram())
    total = backend.total_ram()
    if total is not None:
        pages = min(pages, total >> PAGE_SHIFT) if pages else total >> PAGE_SHIFT
    return max(PAGE_SIZE, (pages // 2) * 9 // 10 * PAGE_SIZE)

def split_segment(seg: Segment, max_bytes: int) -> list[Segment]:
    """``seg`` cut into page-aligned pieces of at most ``max_bytes`` of
    memory each; buffers are slices (no copy).

    Pre-conditions: ``seg.mem`` and ``seg.memsz`` page aligned,
    ``max_bytes >= PAGE_SIZE``.  Post-condition: the pieces cover exactly
    the bytes of ``seg`` (data, then zero tail)."""
    step = max(PAGE_SIZE, max_bytes // PAGE_SIZE * PAGE_SIZE)
    if seg.memsz <= step:
        return [seg]
    view = memoryview(seg.buf) if seg.buf is not None else None
    out: list[Segment] = []
    for off in range(0, seg.memsz, step):
        msz = min(step, seg.memsz - off)
        bsz = max(0, min(msz, seg.bufsz - off))
        buf = view[off:off + bsz] if view is not None and bsz else None
        out.append(Segment(seg.mem + off, msz, bsz, buf, seg.name))
    return out


def check_all(segments: Sequence[Segment]) -> None:
    """The per-call rules that also hold across the calls of one load: page
    alignment, ``bufsz <= memsz`` and no two segments sharing a page (the
    parameter's KS_final overwrite is the one exception, added later).
    O(n log n): :func:`check_segments` compares every pair, fine for 16."""
    mask = PAGE_SIZE - 1
    for s in segments:
        if s.mem & mask or s.memsz & mask or s.bufsz > s.memsz:
            check_segments([s])  # raises with the kernel's errno and wording
    ordered = sorted(segments, key=lambda s: s.mem)
    for a, b in zip(ordered, ordered[1:]):  # noqa: B905 (lengths differ by one)
        if b.mem < a.end:
            check_segments([a, b], max_segments=2)


def _chunks(segs: Sequence[Segment], room: int, max_bytes: int | None) -> Iterator[list[Segment]]:
    """Consecutive groups of at most ``room`` segments (and ``max_bytes``)."""
    cur: list[Segment] = []
    size = 0
    for s in segs:
        if cur and (len(cur) >= room or (max_bytes is not None and size + s.memsz > max_bytes)):
            yield cur
            cur, size = [], 0
        cur.append(s)
        size += s.memsz
    if cur:
        yield cur


def needs_staging(segments: Sequence[Segment], parameter: Parameter | None,
                  max_call_bytes: int | None,
                  max_segments: int = KEXEC_SEGMENT_MAX) -> list[str]:
    """Why one KS_full call cannot do this load (empty: it can)."""
    why: list[str] = []
    if parameter is not None:
        why.append(f"the {parameter.name} segment needs the kernel's page map, which exists only "
                   "after the other segments are loaded")
    if len(segments) > max_segments:
        limit = ("one kexec_load call takes at most" if max_segments == KEXEC_SEGMENT_MAX
                 else "--segments-per-call allows")
        why.append(f"{len(segments)} segments ({limit} {max_segments})")
    if max_call_bytes is not None:
        total = sum(s.memsz for s in segments)
        if total > max_call_bytes:
            why.append(f"{total:#x} bytes of segments, more than one call may load "
                       f"({max_call_bytes:#x}: the kernel refuses more than half of RAM per "
                       "call)")
    return why


def plan_load(segments: Sequence[Segment], entry: int, *, flags: int = 0,
              staged: str = "auto", supported: bool,
              parameter: Parameter | None = None, max_call_bytes: int | None = None,
              syscall: str = "kexec_load",
              max_segments: int = KEXEC_SEGMENT_MAX) -> StagedPlan:
    """Plan the kexec_load calls of one load.

    ``flags`` are the non-stage flags (architecture, PRESERVE_CONTEXT);
    ``staged`` is --staged (auto = only when needed); ``supported`` says
    whether the kernel speaks the protocol; ``max_segments`` (1..16,
    --segments-per-call) caps the segments of every call.  Raises
    :class:`UnsupportedError` (or :class:`PlanError` for --staged never)
    before any system call when the load cannot be done here.

    Post-conditions: every call has 1..16 segments that pass the kernel's
    per-call checks; segments of different calls do not overlap except the
    KS_final parameter, which lies exactly on its KS_start placeholder;
    KS_start carries ``entry``.
    """
    if staged not in STAGED_MODES:
        raise PlanError(f"--staged {staged}: expected auto, always or never")
    if not 1 <= max_segments <= KEXEC_SEGMENT_MAX:
        raise PlanError(f"--segments-per-call {max_segments}: expected 1 to {KEXEC_SEGMENT_MAX}")
    if parameter is not None and max_segments < 2:
        raise PlanError("--segments-per-call 1 leaves no room for the parameter's placeholder "
                        "beside the first segment in KS_start", "give 2 or more")
    if any(s.memsz == 0 for s in segments):
        raise PlanError("a segment has no memory (memsz 0)", "this is a bug in the plan")
    segs: list[Segment] = list(segments)
    if max_call_bytes and any(s.memsz > max_call_bytes for s in segs):
        segs = [p for s in segs for p in split_segment(s, max_call_bytes)]
    check_all(segs + ([parameter.placeholder()] if parameter else []))
    why = needs_staging(segs, parameter, max_call_bytes, max_segments)
    if staged == "never" and why:
        raise PlanError(f"this load cannot be one kexec_load call: {'; '.join(why)}",
                        "drop --staged never (the kernel must speak the multi-stage protocol)")
    use_stages = staged == "always" or bool(why)
    if use_stages and not supported:
        reason = "; ".join(why) if why else "--staged always was given"
        raise UnsupportedError(
            f"this load needs the multi-stage load protocol ({reason}), and this kernel does not "
            "speak it (no /proc/kexec_pgmap)", STOCK_KERNEL_DANGER)
    plan = Plan(syscall, entry)
    if not use_stages:
        plan.calls.append(Call(Stage.FULL, flags | stage_flags(Stage.FULL), segs))
        return StagedPlan(plan, None, [])
    if parameter is None and len(segs) == 1:
        # KS_start and KS_final each need a segment (KS_start with none abandons)
        if segs[0].memsz < 2 * PAGE_SIZE:
            raise PlanError("a staged load needs at least two segments (KS_start and KS_final "
                            "each carry one), and this load is one page",
                            "use --staged auto")
        segs = split_at(segs[0], segs[0].memsz // 2 // PAGE_SIZE * PAGE_SIZE)
    lead = [parameter.placeholder()] if parameter else []
    budget0 = None if max_call_bytes is None else max_call_bytes - sum(s.memsz for s in lead)
    first = next(_chunks(segs, max_segments - len(lead), budget0), [])
    groups: list[list[Segment]] = [lead + first]
    groups.extend(_chunks(segs[len(first):], max_segments, max_call_bytes))
    if parameter is not None:
        groups.append([parameter.final(None)])
    elif len(groups) == 1:
        groups = [groups[0][:-1], groups[0][-1:]]
    calls: list[Call] = []
    for n, g in enumerate(groups):
        stage = Stage.START if n == 0 else Stage.FINAL if n == len(groups) - 1 else Stage.MID
        calls.append(Call(stage, flags | stage_flags(stage), g))
    plan.calls = calls
    # no per-call check_segments: check_all covered alignment, bufsz and
    # overlap for the whole load, and the grouping keeps every call within
    # 16 segments and the byte budget
    plan.notes.append(f"staged: {'; '.join(why) if why else '--staged always'}")
    return StagedPlan(plan, parameter, why)


def split_at(seg: Segment, cut: int) -> list[Segment]:
    """``seg`` as two segments, the first ``cut`` bytes of memory long
    (page aligned, ``0 < cut < memsz``); buffers are slices."""
    view = memoryview(seg.buf) if seg.buf is not None else None
    b1 = min(cut, seg.bufsz)
    b2 = seg.bufsz - b1
    return [Segment(seg.mem, cut, b1, view[:b1] if view is not None and b1 else None, seg.name),
            Segment(seg.mem + cut, seg.memsz - cut, b2,
                    view[b1:seg.bufsz] if view is not None and b2 else None, seg.name)]


# --- execution ------------------------------------------------------------------------


class Interrupted(KexecError):
    """SIGINT or SIGTERM arrived during a staged load (exit 128 + signal)."""

    def __init__(self, signum: int, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass
class Event:
    """Progress of a staged load, for a progress bar or ``--json`` events.

    ``kind``: "call" (after call ``index`` of ``total``), "pgmap" (the map
    was read: ``entries``, ``moved``), "parameter" (built: ``size``),
    "abandon" (after an error: ``reason``, ``loaded`` -- whether an image
    loaded before is still loaded)."""

    kind: str
    index: int = 0
    total: int = 0
    stage: str = ""
    segments: int = 0
    bytes: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind}
        if self.kind == "call":
            out.update(index=self.index, total=self.total, stage=self.stage,
                       segments=self.segments, bytes=self.bytes, bytes_done=self.bytes_done,
                       bytes_total=self.bytes_total)
        out.update(self.data)
        return out


@dataclass
class ExecResult:
    """What a run did: calls made, the page map read (if any) and the
    parameter content that went into KS_final."""

    calls: int
    pagemap: PageMap | None = None
    parameter: bytes | None = None


@contextmanager
def _deferred_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM recorded instead of raised while a load runs, so that
    a signal can never land between a successful call and its bookkeeping;
    the loop checks the list between calls."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def execute(backend: Backend, sp: StagedPlan, *,
            on_event: Callable[[Event], None] | None = None,
            validate: Callable[[PageMap, Sequence[Segment]], int] | None = None) -> ExecResult:
    """Run the calls of ``sp`` on ``backend``.

    Before KS_final of a plan with a parameter: read the page map,
    ``validate(pagemap, loaded_segments)`` it (default:
    :func:`kexec_py.hibernate.window.validate_pgmap`, which returns the number of
    moved pages), build the parameter, and check it fits its placeholder.

    On any failure after the first call was attempted -- a system call
    error, a bad page map, SIGINT/SIGTERM -- a staged load is abandoned
    (:func:`abandon`: the image loaded before stays loaded) before the
    error propagates; the error names the call, its stage and (for a
    system call) the errno, and its hint says what is loaded now.
    """
    if validate is None:
        from kexec_py.hibernate.window import validate_pgmap

        validate = validate_pgmap
    plan, param = sp.plan, sp.parameter
    total = len(plan.calls)
    bytes_total = sum(s.memsz for c in plan.calls for s in c.segments)
    emit = on_event or (lambda e: None)
    result = ExecResult(0)
    loaded: list[Segment] = []
    done = 0
    attempted = False
    with _deferred_signals() as pending:
        try:
            for i, call in enumerate(plan.calls):
                where = f"call {i + 1} of {total} ({_stage(call)})"
                _check_pending(pending, f"before {where}")
                segs = call.segments
                try:
                    if param is not None and call.stage == Stage.FINAL:
                        segs = [_build_parameter(backend, param, loaded, validate, result, emit,
                                                 i, total)]
                        _check_pending(pending, f"before {where}")
                    entry = plan.entry if call.stage in (Stage.START, Stage.FULL) else 0
                    attempted = True
                    backend.kexec_load(entry, segs, call.flags)
                except SyscallError as e:
                    raise SyscallError(f"{where}: {e.call}", e.errno, e.hint) from None
                except KexecError as e:
                    e.message = f"{where}: {e.message}"
                    raise
                loaded.extend(segs)
                done += sum(s.memsz for s in segs)
                result.calls = i + 1
                emit(Event("call", i + 1, total, call.stage.label, len(segs),
                           sum(s.memsz for s in segs), done, bytes_total))
            _check_pending(pending, "after the last call")
        except BaseException as exc:
            err: BaseException = exc
            if isinstance(exc, KeyboardInterrupt):
                err = Interrupted(signal.SIGINT, f"staged load interrupted (SIGINT) after "
                                  f"{result.calls} of {total} calls")
            if attempted and plan.staged:
                _abandon_after(backend, err, emit)
            if err is not exc:
                raise err from None
            raise
    return result


def _build_parameter(backend: Backend, param: Parameter, loaded: list[Segment],
                     validate: Callable[[PageMap, Sequence[Segment]], int], result: ExecResult,
                     emit: Callable[[Event], None], i: int, total: int) -> Segment:
    pm = backend.pgmap()
    moved = validate(pm, loaded)
    emit(Event("pgmap", i, total, data={"entries": len(pm), "moved": moved}))
    content = param.build(pm)
    if len(content) > param.memsz:
        raise PlanError(f"the {param.name} is {len(content):#x} bytes, larger than its "
                        f"placeholder ({param.memsz:#x})",
                        "this is a bug in the worst-case size; please report it")
    result.pagemap, result.parameter = pm, content
    emit(Event("parameter", i, total, data={"name": param.name, "size": len(content)}))
    return param.final(content)


def _stage(call: Call) -> str:
    return f"KS_{call.stage.label}"


def _check_pending(pending: list[int], when: str) -> None:
    if pending:
        sig = pending[0]
        raise Interrupted(sig, f"staged load interrupted by {signal.Signals(sig).name} {when}",
                          "run the load again")


def abandon(backend: Backend) -> None:
    """Give up a staged load in progress and keep the image loaded before it.

    ``KS_start`` with no segments (kernel/patches 0003): the kernel frees the
    half-loaded image it keeps apart and leaves the installed one alone.  A
    full unload (``KS_full`` with no segments) would throw that image away
    too.  Harmless when no staged load is in progress -- the kernel already
    dropped it if a call failed."""
    backend.kexec_load(0, [], stage_flags(Stage.START))


def _abandon_after(backend: Backend, exc: BaseException, emit: Callable[[Event], None]) -> None:
    """Abandon a failed staged load and say in the error's hint what is
    loaded now."""
    try:
        abandon(backend)
    except KexecError as e:
        if isinstance(exc, KexecError):
            exc.hint = (f"{exc.hint}; " if exc.hint else "") + (
                f"abandoning the staged load failed too ({e.message}); the kernel keeps the "
                "half-loaded image apart and never executes it, and the next load replaces it")
        return
    try:
        loaded = backend.status().loaded
    except KexecError:
        loaded = None
    now = {True: "the kernel loaded before it is still loaded",
           False: "nothing is loaded",
           None: "the kernel loaded before it, if any, is still loaded"}[loaded]
    emit(Event("abandon", data={"reason": str(exc) or type(exc).__name__,
                                "loaded": loaded}))
    if isinstance(exc, KexecError):
        exc.hint = f"the staged load was abandoned; {now}" + (f"; {exc.hint}" if exc.hint
                                                              else "")

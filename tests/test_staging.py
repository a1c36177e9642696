"""staging.py: planning staged loads, golden plans, and running them."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
from array import array
from collections.abc import Sequence
from pathlib import Path

import pytest
from coregen import PT_LOAD, Core, Ph

from kexec_py.boundary.abi import KEXEC_PRESERVE_CONTEXT, Stage, flags_stage, stage_flags
from kexec_py.boundary.backends import Status
from kexec_py.boundary.procfs import PageMap
from kexec_py.errors import KexecError, PlanError, SyscallError, UnsupportedError
from kexec_py.formats.vmcore import open_core
from kexec_py.load.staging import Interrupted, Parameter, execute, plan_load, split_segment
from kexec_py.segments import Segment

P = 4096
GOLDEN = Path(__file__).parent / "golden" / "staged"
ARCH = 62 << 16


def segs(n: int, pages: int = 1, base: int = 0x100000, data: bool = True) -> list[Segment]:
    out = []
    for i in range(n):
        mem = base + i * (pages + 1) * P
        buf = bytes([i & 0xFF]) * 100 if data else None
        out.append(Segment(mem, pages * P, 100 if data else 0, buf, f"s{i}"))
    return out


def param(mem: int = 0x7000000, memsz: int = 2 * P, content: bytes = b"HDR") -> Parameter:
    return Parameter("elfcorehdr", mem, memsz, lambda pm: content + bytes(len(pm)))


def stages(plan) -> str:
    return " ".join(c.stage.label for c in plan.calls)


# --- planning ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 16])
def test_fits_in_one_full_call(n: int) -> None:
    sp = plan_load(segs(n), 0x1000, flags=ARCH, supported=False)
    assert stages(sp.plan) == "full" and not sp.staged
    assert sp.plan.calls[0].flags == ARCH  # no stage bits
    assert sp.plan.to_json()["calls"][0]["stage"] == "full"


def test_seventeen_segments_need_stages() -> None:
    sp = plan_load(segs(17), 0x1000, flags=ARCH, supported=True)
    assert stages(sp.plan) == "start final"
    assert [len(c.segments) for c in sp.plan.calls] == [16, 1]
    assert [flags_stage(c.flags) for c in sp.plan.calls] == [Stage.START, Stage.FINAL]
    assert all(c.flags & 0xFFFF0000 == ARCH for c in sp.plan.calls)
    assert "17 segments" in sp.plan.notes[0]


def test_refusal_on_a_kernel_without_the_protocol() -> None:
    with pytest.raises(UnsupportedError) as ei:
        plan_load(segs(17), 0, supported=False)
    e = ei.value
    assert "17 segments" in e.message and "no /proc/kexec_pgmap" in e.message
    assert "6.6" in e.hint and "KEXEC_UPDATE_ELFCOREHDR" in e.hint
    with pytest.raises(UnsupportedError, match="--staged always"):
        plan_load(segs(2), 0, staged="always", supported=False)
    with pytest.raises(UnsupportedError, match="page map"):
        plan_load(segs(2), 0, supported=False, parameter=param())


def test_staged_never() -> None:
    with pytest.raises(PlanError, match="cannot be one kexec_load call: 17 segments"):
        plan_load(segs(17), 0, staged="never", supported=True)
    assert stages(plan_load(segs(3), 0, staged="never", supported=True).plan) == "full"


def test_staged_always_small_loads() -> None:
    sp = plan_load(segs(3), 0, staged="always", supported=True)
    assert stages(sp.plan) == "start final"
    assert [len(c.segments) for c in sp.plan.calls] == [2, 1]
    one = plan_load(segs(1, pages=4), 0, staged="always", supported=True)
    assert stages(one.plan) == "start final"
    a, b = (c.segments[0] for c in one.plan.calls)
    assert (a.mem, a.memsz, a.bufsz, b.mem, b.memsz, b.bufsz) == \
        (0x100000, 2 * P, 100, 0x102000, 2 * P, 0)
    with pytest.raises(PlanError, match="at least two segments"):
        plan_load(segs(1), 0, staged="always", supported=True)


def test_parameter_placeholder_and_final() -> None:
    p = param()
    sp = plan_load(segs(40), 0x5000, flags=KEXEC_PRESERVE_CONTEXT, supported=True, parameter=p)
    calls = sp.plan.calls
    assert stages(sp.plan) == "start mid mid final"
    assert [len(c.segments) for c in calls] == [16, 16, 9, 1]  # placeholder + 15
    ph = calls[0].segments[0]
    fin = calls[-1].segments[0]
    assert (ph.mem, ph.memsz, ph.bufsz) == (p.mem, p.memsz, 0)
    assert (fin.mem, fin.memsz, fin.bufsz) == (p.mem, p.memsz, p.memsz)  # dry run: worst case
    assert all(c.flags & KEXEC_PRESERVE_CONTEXT for c in calls)


def test_parameter_alone_still_stages() -> None:
    sp = plan_load(segs(2), 0, supported=True, parameter=param())
    assert stages(sp.plan) == "start final"
    assert "page map" in sp.reasons[0]


def test_overlap_and_alignment_are_refused_before_any_call() -> None:
    s = segs(3)
    bad = [*s, Segment(s[1].mem, P, 0, None, "dup")]
    with pytest.raises(PlanError, match="overlap") as ei:
        plan_load(bad, 0, supported=True)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(PlanError, match="overlap"):
        plan_load(s, 0, supported=True, parameter=param(mem=s[0].mem))
    with pytest.raises(PlanError, match="page aligned"):
        plan_load([Segment(0x100800, P, 0)], 0, supported=True)


def test_byte_budget_splits_calls_and_segments() -> None:
    big = [Segment(0x1000000, 64 * P, 3 * P + 5, bytes(3 * P + 5), "big")] + segs(3)
    sp = plan_load(big, 0, supported=True, max_call_bytes=16 * P)
    for c in sp.plan.calls:
        assert sum(s.memsz for s in c.segments) <= 16 * P
    pieces = [s for c in sp.plan.calls for s in c.segments if s.name == "big"]
    assert sum(s.memsz for s in pieces) == 64 * P
    assert sum(s.bufsz for s in pieces) == 3 * P + 5
    assert [s.mem for s in pieces] == [0x1000000 + 16 * P * k for k in range(4)]


def test_split_segment_slices_without_copy() -> None:
    data = bytearray(b"abcdefgh" * 2048)  # 4 pages of data in 8 pages of memory
    s = Segment(0, 8 * P, len(data), data)
    parts = split_segment(s, 3 * P)
    assert [(p.mem, p.memsz, p.bufsz) for p in parts] == [
        (0, 3 * P, 3 * P), (3 * P, 3 * P, P), (6 * P, 2 * P, 0)]
    assert parts[2].buf is None
    assert b"".join(bytes(p.buf) for p in parts[:2]) == bytes(data)
    data[0] = ord("Z")
    assert bytes(parts[0].buf[:1]) == b"Z"


# --- golden plans for generated images -----------------------------------------------


def make_image(n: int, path: Path) -> Path:
    """A sparse core with ``n`` PT_LOADs that do not coalesce: load i at
    0x100000 + 3i pages, 1 or 2 pages of memory, a varying amount of data."""
    c = Core()
    c.phdrs = [Ph(PT_LOAD, 0, 0, 0, 0)] * n
    base = -(-c.table_end() // P) * P
    ph = []
    for i in range(n):
        memsz = P * (1 + i % 2)
        filesz = (i * 613) % (memsz + 1)
        ph.append(Ph(PT_LOAD, base + 2 * i * P, 0x100000 + 3 * i * P, filesz, memsz))
    c.phdrs = ph
    c.blobs = {base + 2 * i * P: f"load {i}".encode() for i in (0, n // 2, n - 1)}
    c.size = base + 2 * n * P
    return c.write(path)


def summary(plan, full: bool) -> dict:
    js = plan.to_json()
    text = json.dumps(js, sort_keys=True)
    out = {
        "calls": len(js["calls"]),
        "segments": sum(len(c["segments"]) for c in js["calls"]),
        "stages": re.sub(r"(mid )+", lambda m: f"mid*{len(m.group(0)) // 4} ", stages(plan)),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "head": js["calls"][:2],
        "tail": js["calls"][-2:],
    }
    if full:
        out["plan"] = js
    return out


def check_golden(name: str, got: dict) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("KEXEC_PY_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"{path} missing: run with KEXEC_PY_UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == got


def check_coverage(img, plan, param_mem: int | None = None) -> None:
    """Every PT_LOAD byte is loaded exactly once, by a segment whose buffer
    holds the image's bytes for that address (zero beyond the data)."""
    loads = [(r.paddr, r.offset, r.filesz, r.memsz) for r in img.loads]
    pieces = [s for c in plan.calls for s in c.segments if s.mem != param_mem]
    pieces.sort(key=lambda s: s.mem)
    k = 0
    for paddr, offset, filesz, memsz in loads:
        end = paddr + -(-memsz // P) * P
        pos = paddr
        while pos < end:
            s = pieces[k]
            assert s.mem == pos, f"gap or overlap at {pos:#x}"
            want = max(0, min(s.memsz, filesz - (pos - paddr)))
            assert s.bufsz == want
            if want:
                assert bytes(s.buf) == bytes(img.data(offset + pos - paddr, want))
            pos += s.memsz
            k += 1
        assert pos == end
    assert k == len(pieces), "segments beyond the image's PT_LOADs"


@pytest.mark.parametrize("n", [1, 16, 17, 1000, 100_000])
def test_golden_resume_plans(n: int, tmp_path: Path) -> None:
    with open_core(make_image(n, tmp_path / "img")) as img:
        sp = plan_load(img.segments(), 0x1000000, flags=ARCH, supported=True)
        plan = sp.plan
        assert all(1 <= len(c.segments) <= 16 for c in plan.calls)
        seq = stages(plan)
        assert seq == "full" if n <= 16 else re.fullmatch(r"start( mid)* final", seq)
        for c in plan.calls:
            assert flags_stage(c.flags) == c.stage
        check_coverage(img, plan)
        check_golden(f"resume-{n}", summary(plan, full=n <= 17))
        del sp, plan


@pytest.mark.parametrize("n", [1, 16, 17, 1000, 100_000])
def test_golden_plans_with_parameter(n: int, tmp_path: Path) -> None:
    with open_core(make_image(n, tmp_path / "img")) as img:
        p = param(mem=0x80000000, memsz=0x20000)
        sp = plan_load(img.segments(), 0x1000000, flags=ARCH | KEXEC_PRESERVE_CONTEXT,
                       supported=True, parameter=p)
        plan = sp.plan
        assert all(1 <= len(c.segments) <= 16 for c in plan.calls)
        assert re.fullmatch(r"start( mid)* final", stages(plan))
        first, last = plan.calls[0], plan.calls[-1]
        assert (first.segments[0].mem, first.segments[0].memsz, first.segments[0].bufsz) == \
            (p.mem, p.memsz, 0)
        assert len(last.segments) == 1
        assert (last.segments[0].mem, last.segments[0].memsz) == (p.mem, p.memsz)
        check_coverage(img, plan, param_mem=p.mem)
        check_golden(f"param-{n}", summary(plan, full=n <= 17))
        del sp, plan


# --- execution on a recording backend ---------------------------------------------------


class Recorder:
    """A backend that records calls, fails on request, and invents a page
    map (every loaded page moved to 0x40000000 + k pages).  It keeps a
    staged load apart from the installed image as kernel/patches 0003 does:
    KS_final installs it, a failed staged call or KS_start with no segments
    drops it, KS_full with no segments unloads both."""

    name = "recorder"
    root = Path("/")

    def __init__(self, fail_at: int | None = None, err: int = errno.ENOMEM,
                 signal_at: int | None = None, supported: bool = True) -> None:
        self.calls: list[tuple[int, list[Segment], int]] = []
        self.fail_at, self.err, self.signal_at = fail_at, err, signal_at
        self.loaded: list[Segment] = []  # the staged load in progress, else the installed
        self.installed: list[Segment] | None = None
        self.staging = False
        self.pgmap_reads = 0
        self.supported = supported

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        i = len(self.calls)
        stage = flags_stage(flags)
        self.calls.append((entry, list(segments), flags))
        if not segments and stage in (Stage.FULL, Stage.START):
            if stage == Stage.FULL:
                self.installed = None
            self.staging, self.loaded = False, list(self.installed or [])
            return
        if self.signal_at == i:
            os.kill(os.getpid(), signal.SIGTERM)
        if self.fail_at == i:
            if stage != Stage.FULL:
                self.staging, self.loaded = False, list(self.installed or [])
            raise SyscallError(f"kexec_load(entry={entry:#x}, flags={flags:#x})", self.err, "h")
        if stage in (Stage.START, Stage.FULL):
            self.loaded = []
        self.loaded.extend(segments)
        self.staging = stage in (Stage.START, Stage.MID)
        if not self.staging:
            self.installed = list(self.loaded)

    def pgmap(self) -> PageMap:
        self.pgmap_reads += 1
        dst = array("Q")
        for s in self.loaded:
            dst.extend(range(s.mem // P, s.end // P))
        return PageMap(dst, array("Q", (0x40000 + k for k in range(len(dst)))))

    def staged_supported(self) -> bool:
        return self.supported

    def status(self) -> Status:
        return Status(self.name, loaded=self.installed is not None)


def test_execute_runs_calls_with_entry_in_start_only() -> None:
    be = Recorder()
    sp = plan_load(segs(40), 0x5000, flags=ARCH, supported=True, parameter=param())
    events = []
    res = execute(be, sp, on_event=events.append)
    assert [flags_stage(f) for _, _, f in be.calls] == [Stage.START, Stage.MID, Stage.MID,
                                                         Stage.FINAL]
    assert [e for e, _, _ in be.calls] == [0x5000, 0, 0, 0]
    assert be.pgmap_reads == 1
    fin = be.calls[-1][1][0]
    assert bytes(fin.buf).startswith(b"HDR") and fin.bufsz == len(res.parameter or b"")
    assert fin.mem == 0x7000000 and fin.memsz == 2 * P
    kinds = [e.kind for e in events]
    assert kinds == ["call", "call", "call", "pgmap", "parameter", "call"]
    assert events[-1].bytes_done == events[-1].bytes_total
    assert events[3].data == {"entries": 40 + 2, "moved": 42}


def test_execute_full_call_passes_entry() -> None:
    be = Recorder()
    execute(be, plan_load(segs(2), 0x1234, supported=False))
    assert be.calls == [(0x1234, be.calls[0][1], 0)]
    assert be.pgmap_reads == 0


ABANDON = (0, [], stage_flags(Stage.START))


@pytest.mark.parametrize("before", [False, True])
@pytest.mark.parametrize("k", range(5))
def test_fault_at_every_call_abandons_and_keeps_the_image_before(k: int, before: bool) -> None:
    be = Recorder()
    if before:
        execute(be, plan_load(segs(2), 0x1234, supported=True))
        assert be.installed is not None
    old = be.installed
    be.fail_at = len(be.calls) + k
    sp = plan_load(segs(50), 0x5000, supported=True, parameter=param())
    assert len(sp.plan.calls) == 5
    with pytest.raises(SyscallError) as ei:
        execute(be, sp)
    e = ei.value
    stage = sp.plan.calls[k].stage.label
    assert e.errno == errno.ENOMEM
    assert f"call {k + 1} of 5 (KS_{stage})" in e.message and "ENOMEM" in e.message
    assert "the staged load was abandoned" in e.hint
    assert ("the kernel loaded before it is still loaded" if before else "nothing is loaded") \
        in e.hint
    assert be.calls[-1] == ABANDON and be.installed == old and not be.staging
    assert (0, [], 0) not in be.calls  # never a full unload


def test_bad_pgmap_abandons() -> None:
    be = Recorder()
    be.pgmap = lambda: PageMap(array("Q", [0x1]), array("Q", [0x2]))  # type: ignore[method-assign]
    sp = plan_load(segs(20), 0, supported=True, parameter=param())
    with pytest.raises(KexecError, match=r"call 3 of 3 \(KS_final\).*destination pfn 0x1"):
        execute(be, sp)
    assert be.calls[-1] == ABANDON


def test_oversized_parameter_is_refused_and_abandons() -> None:
    be = Recorder()
    p = Parameter("elfcorehdr", 0x7000000, P, lambda pm: bytes(P + 1))
    with pytest.raises(PlanError, match="larger than its placeholder"):
        execute(be, plan_load(segs(3), 0, supported=True, parameter=p))
    assert be.calls[-1] == ABANDON


def test_sigterm_during_a_staged_load_abandons() -> None:
    be = Recorder(signal_at=1)
    sp = plan_load(segs(50), 0, supported=True)
    with pytest.raises(Interrupted) as ei:
        execute(be, sp)
    assert ei.value.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM" in ei.value.message and "before call 3 of 4 (KS_mid)" in ei.value.message
    assert be.calls[-1] == ABANDON and len(be.calls) == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_abandon_failure_is_reported() -> None:
    be = Recorder(fail_at=1)
    real = be.kexec_load

    def load(entry: int, segments: Sequence[Segment], flags: int) -> None:
        if not segments:
            raise SyscallError("kexec_load(abandon)", errno.EBUSY)
        real(entry, segments, flags)

    be.kexec_load = load  # type: ignore[method-assign]
    with pytest.raises(SyscallError) as ei:
        execute(be, plan_load(segs(20), 0, supported=True))
    assert "abandoning the staged load failed too" in ei.value.hint
    assert "never executes it" in ei.value.hint


# --- the load lock ------------------------------------------------------------------------


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    from kexec_py.boundary.lock import LoadLock, lock_path
    from kexec_py.errors import LockError

    with LoadLock(tmp_path) as held:
        assert held.held
        assert lock_path(tmp_path).read_text().strip() == str(os.getpid())
        with pytest.raises(LockError, match=rf"another kexec-py \(pid {os.getpid()}\)") as ei:
            LoadLock(tmp_path).acquire()
        assert "interleave" in ei.value.hint
    with LoadLock(tmp_path, wait=0.1):
        pass  # released: free again

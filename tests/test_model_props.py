"""Properties of the model kernel, for random machines, loads and allocation orders.

- after execution every destination byte is the segment's (zero past bufsz;
  the last stage that wrote a page wins);
- with preserve context, every source page holds what its destination held
  just before the jump, and the jump back restores it;
- every stage-order violation and malformed call gets the right errno and
  leaves the right state (a reference state machine says which);
- an error at any point of a staged load leaves no image and no page held.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexec_py.boundary import abi
from kexec_py.boundary.abi import PAGE_SIZE, Stage, stage_flags
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import KexecError, SyscallError
from kexec_py.memmap import MemRegion
from kexec_py.model.config import ModelConfig
from kexec_py.ranges import Range
from kexec_py.segments import Segment

P = PAGE_SIZE
NOWHERE = Path("/nonexistent-root")
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies ----------------------------------------------------------------------


@st.composite
def machines(draw: st.DrawFn) -> ModelConfig:
    """1-3 runs of System RAM between pfn 0x100 and 0x700, 256+ pages in all."""
    runs = draw(st.integers(1, 3))
    regions: list[MemRegion] = []
    pfn = 0x100
    for _ in range(runs):
        pfn += draw(st.integers(0, 32))
        n = draw(st.integers(96, 400))
        regions.append(MemRegion(Range(pfn * P, (pfn + n) * P), "System RAM"))
        pfn += n
    # a source limit in the top quarter leaves most pages usable as sources
    limit = draw(st.one_of(st.none(), st.integers(pfn - (pfn - 0x100) // 4, pfn)))
    return ModelConfig(regions=regions, seed=draw(st.integers(0, 2**32)),
                       collide=draw(st.sampled_from([0.0, 0.3, 0.9])),
                       source_limit=None if limit is None else limit * P)


@dataclass
class Load:
    """Calls of one load: each a list of (mem, memsz, bufsz, data seed)."""

    calls: list[list[tuple[int, int, int, int]]]
    preserve: bool


@st.composite
def loads(draw: st.DrawFn, cfg: ModelConfig) -> Load:
    """Segments in 8-page blocks of RAM: distinct blocks inside a call (no
    overlap), any blocks across calls (overlap between stages)."""
    pool = cfg.pool_ranges()
    blocks = [b for first, end in pool for b in range((first + 7) // 8, end // 8)]
    budget = sum(e - f for f, e in pool) // 4  # stay clear of ENOMEM
    ncalls = draw(st.integers(1, 4))
    calls: list[list[tuple[int, int, int, int]]] = []
    for i in range(ncalls):
        k = draw(st.integers(0 if 0 < i < ncalls - 1 else 1, min(16, len(blocks))))
        chosen = draw(st.lists(st.sampled_from(blocks), min_size=k, max_size=k, unique=True))
        segs = []
        for blk in chosen:
            off = draw(st.integers(0, 7))
            n = draw(st.integers(1, 8 - off))
            if n > budget:
                continue
            budget -= n
            bufsz = draw(st.integers(0, n * P))
            segs.append(((blk * 8 + off) * P, n * P, bufsz, draw(st.integers(0, 2**31))))
        if not segs and (i == 0 or i == ncalls - 1):
            segs.append(((blocks[0] * 8) * P, P, 1, 7))
        calls.append(segs)
    return Load(calls, draw(st.booleans()))


def data_of(bufsz: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(bufsz)


def segments_of(call: list[tuple[int, int, int, int]]) -> list[Segment]:
    return [Segment(m, ms, bs, data_of(bs, sd)) for m, ms, bs, sd in call]


def stages(n: int) -> list[Stage]:
    if n == 1:
        return [Stage.FULL]
    return [Stage.START] + [Stage.MID] * (n - 2) + [Stage.FINAL]


def expected_memory(load: Load) -> dict[int, bytes]:
    """dst pfn -> page content after execution: the last call that wrote it."""
    want: dict[int, bytes] = {}
    for call in load.calls:
        for m, ms, bs, sd in call:
            data = data_of(bs, sd) + bytes(ms - bs)
            for k in range(ms // P):
                want[m // P + k] = data[k * P:(k + 1) * P]
    return want


def run_load(b: ModelBackend, load: Load) -> None:
    flags = abi.KEXEC_PRESERVE_CONTEXT if load.preserve else 0
    entry = load.calls[0][0][0]
    for call, stage in zip(load.calls, stages(len(load.calls)), strict=True):
        b.kexec_load(entry, segments_of(call), flags | stage_flags(stage))
        assert b.check_invariants() == []


# --- execution -------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_execution_puts_every_segment_byte_in_place(data: st.DataObject) -> None:
    cfg = data.draw(machines())
    load = data.draw(loads(cfg))
    b = ModelBackend(NOWHERE, persist=False, config=cfg)
    # the running kernel uses some pages: their content must survive a jump
    rnd = random.Random(cfg.seed)
    used = rnd.sample([p for f, e in cfg.pool_ranges() for p in range(f, e)], 16)
    for p in used:
        b.write_phys(p * P, rnd.randbytes(P))
    run_load(b, load)
    img = b.image("kexec")
    assert img is not None
    want = expected_memory(load)
    assert set(img.map) == set(want)
    before = {d: b.read_phys(d * P, P) for d in img.map}
    pairs = list(zip(img.reloc_dst, img.reloc_src, strict=True))
    b.reboot_kexec()
    for pfn, content in want.items():
        assert b.read_phys(pfn * P, P) == content, f"page {pfn:#x}"
    if load.preserve:
        for d, s in pairs:
            assert b.read_phys(s * P, P) == before[d], f"source {s:#x} of {d:#x}"
        b.jump_back()
        for d, _ in pairs:
            assert b.read_phys(d * P, P) == before[d], f"page {d:#x} after the return"
        assert b.status().loaded is True and b.running()["depth"] == 0
    else:
        assert b.status().loaded is False and b.running()["name"].startswith("image@")


# --- the stage state machine --------------------------------------------------------------


@dataclass
class Ref:
    """What the patched kernel must do, in the fewest words."""

    installed: bool = False
    staging: bool = False

    def call(self, stage: Stage, kind: str) -> int:
        if stage in (Stage.MID, Stage.FINAL) and not self.staging:
            return errno.EINVAL
        if kind != "ok" and kind != "empty":
            if stage != Stage.FULL:
                self.staging = False
            return {"misaligned": errno.EADDRNOTAVAIL, "efault": errno.EFAULT}.get(
                kind, errno.EINVAL)
        if kind == "empty":
            if stage == Stage.FULL:
                self.installed = self.staging = False
            elif stage == Stage.START:
                # abandons the staged load; the image loaded before stays
                self.staging = False
            elif stage == Stage.FINAL:
                self.installed, self.staging = True, False
            return 0
        if stage == Stage.FULL:
            self.installed, self.staging = True, False
        elif stage == Stage.START:
            # the image loaded before stays installed until KS_final
            self.staging = True
        elif stage == Stage.FINAL:
            self.installed, self.staging = True, False
        return 0


MALFORMED = ["misaligned", "overlap", "bufsz", "too_many", "unknown_flag", "crash_staged",
             "efault", "half_ram"]


def call_args(kind: str, stage: Stage, n: int, rnd: random.Random) -> tuple[list[Segment], int]:
    """Segments and flags for one call of ``kind`` (pool: pfn 0x100-0x1ff)."""
    flags = stage_flags(stage)
    base = (0x100 + 16 * rnd.randrange(8)) * P
    good = [Segment(base, 2 * P, 5, b"hello"), Segment(base + 4 * P, P, 0, None)]
    if kind == "ok":
        return good, flags
    if kind == "empty":
        return [], flags
    if kind == "misaligned":
        return [Segment(base + 8, P, 0, None)], flags
    if kind == "overlap":
        return [Segment(base, 2 * P, 0, None), Segment(base + P, P, 0, None)], flags
    if kind == "bufsz":
        return [Segment(base, P, P + 1, bytes(P + 1))], flags
    if kind == "too_many":
        return [Segment(base + i * P, P, 0, None) for i in range(17)], flags
    if kind == "unknown_flag":
        return good, flags | 0x10
    if kind == "crash_staged":
        return good, flags | abi.KEXEC_ON_CRASH if stage != Stage.FULL else flags | 0x10
    if kind == "efault":
        return [Segment(base, P, 10, None)], flags
    if kind == "half_ram":
        return [Segment(0x100 * P, 129 * P, 0, None)], flags
    raise AssertionError(kind)


@SETTINGS
@given(seq=st.lists(st.tuples(st.sampled_from(list(Stage)),
                              st.sampled_from(["ok", "ok", "empty", *MALFORMED])),
                    min_size=1, max_size=14),
       seed=st.integers(0, 1000))
def test_stage_machine_errnos_and_state(seq: list[tuple[Stage, str]], seed: int) -> None:
    cfg = ModelConfig(regions=[MemRegion(Range(0x100 * P, 0x200 * P), "System RAM")],
                      seed=seed, collide=0.5)
    b = ModelBackend(NOWHERE, persist=False, config=cfg)
    ref = Ref()
    rnd = random.Random(seed)
    for stage, kind in seq:
        segs, flags = call_args(kind, stage, 0, rnd)
        if kind == "crash_staged" and stage == Stage.FULL:
            kind = "unknown_flag"
        want = ref.call(stage, kind)
        try:
            b.kexec_load(0x100000, segs, flags)
            got = 0
        except SyscallError as e:
            got = e.errno
            assert e.hint and "model says" in e.hint
        assert got == want, (stage, kind)
        st_ = b.status()
        assert st_.loaded is ref.installed, (stage, kind)
        assert (st_.staging is not None) is ref.staging, (stage, kind)
        assert b.check_invariants() == []
        if not ref.installed and not ref.staging:
            assert b.kernel.free_pages() == b.kernel.pool.n
            with pytest.raises(KexecError, match="ENODEV"):
                b.pgmap()


# --- an error at any point leaves no image ------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_an_error_anywhere_in_a_staged_load_leaves_no_image(data: st.DataObject) -> None:
    cfg = data.draw(machines())
    load = data.draw(loads(cfg))
    if len(load.calls) < 2:
        load.calls.append(load.calls[0])
    at = data.draw(st.integers(0, len(load.calls) - 1))
    kind = data.draw(st.sampled_from([k for k in MALFORMED if k != "half_ram"] + ["enomem"]))
    b = ModelBackend(NOWHERE, persist=False, config=cfg)
    sts = stages(len(load.calls))
    entry = load.calls[0][0][0]
    for i, (call, stage) in enumerate(zip(load.calls, sts, strict=True)):
        segs, flags = segments_of(call), stage_flags(stage)
        if i == at:
            if kind == "enomem":
                # RAM is all taken: the first page this call needs is not there
                b.kernel.level.nfree = 0
                segs = [Segment(0x10000 * P, P, 0, None)]
            elif kind == "crash_staged":
                flags |= abi.KEXEC_ON_CRASH
            else:
                segs, flags = call_args(kind, stage, 0, random.Random(i))
            with pytest.raises(SyscallError) as exc:
                b.kexec_load(entry, segs, flags)
            if kind == "enomem":
                assert exc.value.errno == errno.ENOMEM
                b.kernel.level.nfree = b.kernel.pool.n - len(b.kernel.level.owner)
            break
        b.kexec_load(entry, segs, flags)
    st_ = b.status()
    assert st_.loaded is False and st_.staging is None
    assert b.kernel.free_pages() == b.kernel.pool.n
    assert b.check_invariants() == []
    with pytest.raises(KexecError, match="ENODEV"):
        b.pgmap()
    with pytest.raises(SyscallError) as exc:
        b.reboot_kexec()
    assert exc.value.errno == errno.EINVAL


def test_enomem_when_memory_runs_out() -> None:
    """Stages together may load more than RAM holds (each call is under half of
    it): the allocator runs dry, and the staged load is dropped."""
    cfg = ModelConfig(regions=[MemRegion(Range(0x100 * P, 0x200 * P), "System RAM")],
                      seed=5)
    b = ModelBackend(NOWHERE, persist=False, config=cfg)
    b.write_phys(0x100 * P, bytes(16 * P))  # the running kernel uses 16 pages
    b.kexec_load(0, [Segment(0x100 * P, 100 * P, 0, None)], stage_flags(Stage.START))
    b.kexec_load(0, [Segment(0x180 * P, 100 * P, 0, None)], stage_flags(Stage.MID))
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0, [Segment(0x1000 * P, 100 * P, 0, None)], stage_flags(Stage.MID))
    assert exc.value.errno == errno.ENOMEM
    assert b.status().staging is None
    assert b.kernel.free_pages() == 256 - 16


# --- stock kernels -------------------------------------------------------------------------


def test_stock_61_refuses_stage_bits() -> None:
    b = ModelBackend(NOWHERE, "stock-6.1", persist=False)
    for stage in (Stage.START, Stage.MID, Stage.FINAL):
        with pytest.raises(SyscallError) as exc:
            b.kexec_load(0x100000, [Segment(0x100000, P, 0, None)], stage_flags(stage))
        assert exc.value.errno == errno.EINVAL
    assert b.staged_supported() is False and b.status().staged is False
    b.kexec_load(0x100000, [Segment(0x100000, P, 0, None)], 0)
    assert b.status().loaded is True
    with pytest.raises(KexecError, match="no /proc/kexec_pgmap"):
        b.pgmap()


def test_stock_66_misreads_stage_bits_as_full_loads() -> None:
    """0x4 and 0x8 are accepted: each "stage" is a whole load replacing the last."""
    b = ModelBackend(NOWHERE, "stock-6.6", persist=False)
    segs = [[Segment(0x100000, P, 1, b"a")], [Segment(0x200000, P, 1, b"b")],
            [Segment(0x300000, P, 1, b"c")]]
    for stage, s in zip((Stage.START, Stage.MID, Stage.FINAL), segs, strict=True):
        b.kexec_load(0x100000, s, stage_flags(stage))
        assert b.status().loaded is True and b.status().staging is None
    img = b.image("kexec")
    assert img is not None and img.segments() == [(0x300000, P, 1)]
    with pytest.raises(SyscallError) as exc:
        b.kexec_load(0x100000, segs[0], 0x10)
    assert exc.value.errno == errno.EINVAL

"""The model kernel's compact per-page structures against what they stand for.

- :class:`Owners` and :class:`PageTable` behave as the dicts they replace
  (insertion order, re-assignment keeps the place, delete + insert moves
  to the end; the reverse map; the arrays the state file stores);
- the overlap pre-check of the segment rules finds what the kernel's
  pairwise loop finds.
"""

from __future__ import annotations

import errno
import random
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.memmap import MemRegion
from kexec_py.model.config import ModelConfig
from kexec_py.model.kernel import KernelErr, ModelKernel
from kexec_py.model.physmem import PhysMem
from kexec_py.model.tables import DEAD, Owners, PageTable, _moved
from kexec_py.ranges import Range
from kexec_py.segments import Segment

P = PAGE_SIZE

# --- Owners ------------------------------------------------------------------------------


def check_owners(o: Owners, ref: dict[int, int]) -> None:
    assert len(o) == len(ref)
    assert list(o) == sorted(ref)
    assert dict(o.items()) == ref and sorted(o.values()) == sorted(ref.values())
    keys, values = o.arrays()
    assert dict(zip(keys, values, strict=True)) == ref and values.typecode == "q"
    assert dict(Owners.from_arrays(o.npfn, keys, values)) == ref


def test_owners_behave_as_a_dict() -> None:
    rnd = random.Random(5)
    o, ref = Owners(500), {}
    for step in range(6000):
        p = rnd.randrange(500)
        what = rnd.random()
        if what < 0.5:
            who = rnd.choice([0, -1, rnd.randint(1, 2000)])  # many images over time
            o[p] = who
            ref[p] = who
        elif what < 0.7:
            if p in ref:
                del o[p]
                del ref[p]
            else:
                with pytest.raises(KeyError):
                    del o[p]
        elif what < 0.8:
            pages = [rnd.randrange(500) for _ in range(20)]
            freed = o.release(pages)
            assert freed == len({q for q in pages if q in ref})
            for q in pages:
                ref.pop(q, None)
        assert (p in o) == (p in ref) and o.get(p) == ref.get(p)
        if step % 500 == 0:
            check_owners(o, ref)
    check_owners(o, ref)
    frozen = o.frozen()
    check_owners(frozen, dict.fromkeys(ref, -1))
    o.keep_only(0)
    check_owners(o, {p: w for p, w in ref.items() if w == 0})
    o.set_many([1, 2, 3], 9)
    assert o.get(2) == 9 and len(o) == len({p for p, w in ref.items() if w == 0} | {1, 2, 3})
    assert 500 not in o and -1 not in o and "x" not in o and o.get(10**9) is None
    with pytest.raises(ValueError):
        o[500] = 0


# --- PageTable ---------------------------------------------------------------------------


def check_table(t: PageTable, ref: dict[int, int]) -> None:
    assert t.check() == []
    assert len(t) == len(ref)
    assert list(t) == list(ref) and list(t.items()) == list(ref.items())
    assert list(t.values()) == list(ref.values())
    rev = {s: d for d, s in ref.items() if s != d}
    assert dict(t.rev.items()) == rev and list(t.rev) == list(rev) and len(t.rev) == len(rev)
    dst, src = t.moved_arrays()
    assert list(zip(dst, src, strict=True)) == [(d, s) for d, s in ref.items() if d != s]
    keys, values = t.arrays()
    assert list(zip(keys, values, strict=True)) == list(ref.items())
    again = PageTable.from_arrays(t.npfn, keys, values)
    assert list(again.items()) == list(ref.items()) and again.check() == []


def test_page_table_behaves_as_a_dict() -> None:
    """Random inserts, re-assignments, deletes; destinations above the
    machine (``far``); a source is never a destination nor two entries'."""
    rnd = random.Random(11)
    npfn = 300
    t, ref = PageTable(npfn), {}
    for step in range(8000):
        what = rnd.random()
        d = rnd.randrange(npfn) if rnd.random() < 0.9 else npfn + rnd.randrange(50)
        if what < 0.55:
            used = set(ref) | set(ref.values())
            if d in ref.values() and ref.get(d) != d:  # the source of another entry
                with pytest.raises(ValueError):
                    t[d] = d
                continue
            if d in ref:
                used.discard(ref[d])
            if rnd.random() < 0.3 and d < npfn and (d not in used or ref.get(d) == d):
                s = d
            else:
                free = [q for q in range(npfn) if q not in used and q != d]
                if not free:
                    continue
                s = rnd.choice(free)
            t[d] = s
            ref[d] = s
        elif what < 0.85:
            if d in ref:
                del t[d]
                del ref[d]
            else:
                with pytest.raises(KeyError):
                    del t[d]
        assert (d in t) == (d in ref) and t.get(d) == ref.get(d)
        if step % 400 == 0:
            check_table(t, ref)
    check_table(t, ref)
    assert t.get(-1) is None and "x" not in t and t.get(DEAD) is None
    with pytest.raises(ValueError):
        t[1] = npfn  # a source outside the machine


def test_page_table_refuses_inconsistent_state_arrays() -> None:
    q = array("Q")
    for keys, values in ([[1, 2], [5, 5]],  # two entries, one source
                         [[1, 2], [2, 7]],  # a source that is a destination
                         [[1, 1], [3, 4]],  # a destination twice
                         [[1], [400]]):  # a source outside the machine
        with pytest.raises(ValueError):
            PageTable.from_arrays(300, array("Q", keys), array("Q", values))
    assert len(PageTable.from_arrays(300, q, q)) == 0


u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**63, DEAD, DEAD - 1]))


@given(st.lists(st.tuples(u64, u64, st.integers(0, 3)), max_size=40), st.integers(1, 7))
@settings(max_examples=100, deadline=None)
def test_moved_marks_live_entries_not_in_place(entries: list[tuple[int, int, int]],
                                               chunk: int) -> None:
    d = array("Q", [DEAD if k == 0 else x for x, _, k in entries])
    s = array("Q", [x if k == 1 else y for x, y, k in entries])
    want = [x != DEAD and x != y for x, y in zip(d, s, strict=True)]
    assert list(_moved(d, s, chunk)) == want
    assert list(_moved(d, None, chunk)) == [x != DEAD for x in d]


# --- the segment rules --------------------------------------------------------------------


def pairwise_overlap(segs: list[Segment]) -> str | None:
    for i, a in enumerate(segs):
        for b in segs[:i]:
            if a.mem + a.memsz > b.mem and a.mem < b.mem + b.memsz:
                return f"segments {b.describe()} and {a.describe()} overlap"
    return None


@given(st.lists(st.tuples(st.integers(0, 24), st.integers(0, 6)), max_size=9))
@settings(max_examples=300, deadline=None)
def test_overlap_check_is_the_kernels(spans: list[tuple[int, int]]) -> None:
    cfg = ModelConfig(regions=[MemRegion(Range(0x100 * P, 0x200 * P), "System RAM")])
    k = ModelKernel(cfg, "patched", PhysMem(None, cfg.memory_size()), copy_contents=False)
    segs = [Segment((0x100 + a) * P, n * P, 0, None) for a, n in spans]
    want = pairwise_overlap(segs)
    try:
        k.check_segments(segs, crash=False)
        got = None
    except KernelErr as e:
        assert e.errno == errno.EINVAL
        got = e.why
    finally:
        k.mem.close()
    assert got == want

"""Half-open ranges, page math and hole finding (kexec_py/ranges.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexec_py.ranges import (
    ADDR_LIMIT,
    Range,
    align_down,
    align_up,
    find_hole,
    free_ranges,
    merge,
    pages,
    subtract,
    window,
)

R = Range
MiB = 1 << 20


@pytest.mark.parametrize(("ranges", "merged"), [
    ([], []),
    ([R(0, 0)], []),
    ([R(0x2000, 0x3000), R(0, 0x1000)], [R(0, 0x1000), R(0x2000, 0x3000)]),
    ([R(0, 0x1000), R(0x1000, 0x2000)], [R(0, 0x2000)]),  # touching joins
    ([R(0, 0x3000), R(0x1000, 0x2000)], [R(0, 0x3000)]),  # contained
    ([R(0, 0x2000), R(0x1000, 0x4000), R(0x5000, 0x6000)], [R(0, 0x4000), R(0x5000, 0x6000)]),
])
def test_merge(ranges: list[Range], merged: list[Range]) -> None:
    assert merge(ranges) == merged


@pytest.mark.parametrize(("ranges", "holes", "left"), [
    ([R(0, 0x10000)], [], [R(0, 0x10000)]),
    ([R(0, 0x10000)], [R(0x4000, 0x5000)], [R(0, 0x4000), R(0x5000, 0x10000)]),
    ([R(0, 0x10000)], [R(0, 0x10000)], []),
    ([R(0, 0x10000)], [R(0, 0x1000), R(0xF000, 0x20000)], [R(0x1000, 0xF000)]),
    ([R(0, 0x1000), R(0x2000, 0x3000)], [R(0x800, 0x2800)], [R(0, 0x800), R(0x2800, 0x3000)]),
    ([R(0x1000, 0x2000)], [R(0x3000, 0x4000)], [R(0x1000, 0x2000)]),
])
def test_subtract(ranges: list[Range], holes: list[Range], left: list[Range]) -> None:
    assert subtract(ranges, holes) == left


def test_range_basics() -> None:
    r = R(0x1000, 0x3000)
    assert r.size == 0x2000 and 0x1000 in r and 0x3000 not in r and 0x2FFF in r
    assert r.overlaps(R(0x2FFF, 0x4000)) and not r.overlaps(R(0x3000, 0x4000))
    assert r.covers(R(0x1000, 0x3000)) and not r.covers(R(0xFFF, 0x2000))
    assert r.intersect(R(0x2000, 0x5000)) == R(0x2000, 0x3000)
    assert r.intersect(R(0x3000, 0x5000)) is None
    assert str(r) == "[0x1000, 0x3000)"
    with pytest.raises(ValueError):
        R(2, 1)
    assert list(pages(R(0x1001, 0x4000))) == [2, 3]
    assert align_up(0x1001, 0x1000) == 0x2000 and align_down(0x1FFF, 0x1000) == 0x1000


@pytest.mark.parametrize(("mem_min", "mem_max", "expect"), [
    (0, None, R(0, ADDR_LIMIT)),
    (0x1000000, 0x3FFFFFFF, R(0x1000000, 0x40000000)),  # --mem-max is inclusive
    (0, 0, R(0, 1)),
])
def test_window(mem_min: int, mem_max: int | None, expect: Range) -> None:
    assert window(mem_min, mem_max) == expect


def test_window_empty_is_refused() -> None:
    with pytest.raises(ValueError):
        window(0x2000, 0x1000)


def test_free_ranges_clips_to_the_window() -> None:
    ram = [R(0, 0x9F000), R(0x100000, 0x20000000)]
    used = [R(0x1000000, 0x2000000)]
    assert free_ranges(ram, used, R(0x80000, 0x1800000)) == [
        R(0x80000, 0x9F000), R(0x100000, 0x1000000)]
    assert free_ranges(ram, used) == [R(0, 0x9F000), R(0x100000, 0x1000000),
                                      R(0x2000000, 0x20000000)]


FREE = [R(0x1000, 0x9F000), R(0x100000, 0x1000000), R(0x1200000, 0x1FFE0000)]


@pytest.mark.parametrize(("size", "align", "lo", "hi", "top_down", "expect"), [
    # top-down: the highest aligned start that fits
    (0x1000, 0x1000, 0, ADDR_LIMIT, True, 0x1FFDF000),
    (0x3F98000, 0x200000, 0x100000, ADDR_LIMIT, True, 0x1C000000),  # Debian's init_size
    (0x1000, 0x1000, 0, 0x1000000, True, 0xFFF000),  # below hi
    (0x1000, 0x1000, 0, 0x100000, True, 0x9E000),  # the first range's last page
    # bottom-up: the lowest
    (0x1000, 0x1000, 0, ADDR_LIMIT, False, 0x1000),
    (0x1000, 0x1000, 0x3000, ADDR_LIMIT, False, 0x3000),
    (0x100000, 0x100000, 0, ADDR_LIMIT, False, 0x100000),  # 0x1000 range cannot hold it
    (0xF00000, 0x1000, 0, ADDR_LIMIT, False, 0x100000),
    (0xF00001, 0x1000, 0, ADDR_LIMIT, False, 0x1200000),  # one byte too many for range 2
    # alignment pushes past the range
    (0x1000, 0x2000000, 0x1000000, 0x1FFE0000, False, 0x2000000),
    (0x1000, 0x40000000, 0x1, ADDR_LIMIT, True, None),  # no 1 GiB boundary in RAM above 0
    # nothing fits
    (0x20000000, 0x1000, 0, ADDR_LIMIT, True, None),
    (0x1000, 0x1000, 0x1FFE0000, ADDR_LIMIT, True, None),
    (0x1000, 0x1000, 0, 0x1000, True, None),
])
def test_find_hole(size: int, align: int, lo: int, hi: int, top_down: bool,
                   expect: int | None) -> None:
    assert find_hole(FREE, size, align, lo, hi, top_down) == expect


def test_find_hole_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        find_hole(FREE, 0)
    with pytest.raises(ValueError, match="power of two"):
        find_hole(FREE, 0x1000, 0x3000)


def _brute(free: list[Range], size: int, align: int, lo: int, hi: int) -> list[int]:
    """Every valid start, by enumeration (the oracle)."""
    out = []
    for r in free:
        s = align_up(max(r.start, lo), align)
        while s + size <= min(r.end, hi):
            out.append(s)
            s += align
    return out


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 256), min_size=0, max_size=10),
    size=st.integers(1, 64),
    align_log=st.integers(0, 5),
    lo=st.integers(0, 256),
    hi=st.integers(0, 300),
    top_down=st.booleans(),
)
def test_find_hole_matches_enumeration(cuts: list[int], size: int, align_log: int, lo: int,
                                       hi: int, top_down: bool) -> None:
    """In units of pages: the answer is the max (top-down) or min
    (bottom-up) of every valid start."""
    pts = sorted(set(cuts))
    free = merge(R(a, b) for a, b in zip(pts[0::2], pts[1::2], strict=False))
    align = 1 << align_log
    got = find_hole(free, size, align, lo, hi, top_down)
    every = _brute(free, size, align, lo, hi)
    if not every:
        assert got is None
    else:
        assert got == (max(every) if top_down else min(every))

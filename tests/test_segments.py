"""The kernel's segment rules (check_segments), the placer (Layout), and the
preserve-context window fill."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexec_py.errors import PlanError
from kexec_py.ranges import Range
from kexec_py.segments import (
    X86_64_DESTINATION_LIMIT,
    Layout,
    Segment,
    check_in_ram,
    check_segments,
    fill_window,
    make_segment,
)

P = 0x1000
MiB = 1 << 20


def kernel_oracle(segs: list[tuple[int, int, int]], nr_pages: int | None, limit: int,
                  crash: tuple[int, int] | None) -> int:
    """kexec_load_check() + sanity_check_segment_list() of Linux 6.1
    (kernel/kexec.c, kernel/kexec_core.c), transliterated line by line with
    64-bit wrap-around: returns 0 or the errno.  ``segs`` are
    ``(mem, memsz, bufsz)``; ``crash`` is crashk_res ``(start, end)``
    inclusive."""
    mask = (1 << 64) - 1
    if len(segs) > 16:  # kexec_load_check: nr_segments > KEXEC_SEGMENT_MAX
        return errno.EINVAL
    for mem, memsz, _ in segs:
        mstart, mend = mem, (mem + memsz) & mask
        if mstart > mend:
            return errno.EADDRNOTAVAIL
        if (mstart & (P - 1)) or (mend & (P - 1)):
            return errno.EADDRNOTAVAIL
        if mend >= limit:
            return errno.EADDRNOTAVAIL
    for i, (mem, memsz, _) in enumerate(segs):
        mstart, mend = mem, mem + memsz
        for j in range(i):
            pstart, pend = segs[j][0], segs[j][0] + segs[j][1]
            if mend > pstart and mstart < pend:
                return errno.EINVAL
    for _, memsz, bufsz in segs:
        if bufsz > memsz:
            return errno.EINVAL
    if nr_pages is not None:
        total = 0
        for _, memsz, _ in segs:
            pc = (memsz + P - 1) // P
            if pc > nr_pages // 2:
                return errno.EINVAL
            total += pc
        if total > nr_pages // 2:
            return errno.EINVAL
    if crash is not None:
        for mem, memsz, _ in segs:
            mstart, mend = mem, mem + memsz - 1
            if mstart < crash[0] or mend > crash[1]:
                return errno.EADDRNOTAVAIL
    return 0


def ours(segs: list[tuple[int, int, int]], ram: int | None, limit: int,
         crash: tuple[int, int] | None) -> int:
    try:
        check_segments([Segment(m, ms, b) for m, ms, b in segs], ram_bytes=ram, limit=limit,
                       crash_region=(crash[0], crash[1] + 1) if crash else None)
    except PlanError as e:
        return e.errno
    return 0


RAM = 512 * MiB
LIM = X86_64_DESTINATION_LIMIT


@pytest.mark.parametrize(("segs", "ram", "crash", "want", "words"), [
    ([(0x100000, P, 0x10)], RAM, None, 0, ""),
    ([], RAM, None, 0, ""),
    # more than KEXEC_SEGMENT_MAX
    ([(i * P, P, 0) for i in range(17)], RAM, None, errno.EINVAL, "at most 16"),
    ([(i * P, P, 0) for i in range(16)], RAM, None, 0, ""),
    # page alignment of mem and of mem + memsz
    ([(0x100800, P, 0)], RAM, None, errno.EADDRNOTAVAIL, "not page aligned"),
    ([(0x100000, 0x800, 0)], RAM, None, errno.EADDRNOTAVAIL, "not page aligned"),
    # wrap-around and the destination limit (end >= limit)
    ([((1 << 64) - P, 2 * P, 0)], RAM, None, errno.EADDRNOTAVAIL, "wraps"),
    ([(LIM + 1 - 2 * P, P, 0)], RAM, None, 0, ""),
    ([((1 << 46) - P, P, 0)], RAM, None, errno.EADDRNOTAVAIL, "destination limit"),
    # overlap, in any order; touching is fine
    ([(0x100000, 2 * P, 0), (0x101000, P, 0)], RAM, None, errno.EINVAL, "overlap"),
    ([(0x101000, P, 0), (0x100000, 2 * P, 0)], RAM, None, errno.EINVAL, "overlap"),
    ([(0x100000, P, 0), (0x101000, P, 0)], RAM, None, 0, ""),
    # bufsz > memsz
    ([(0x100000, P, P + 1)], RAM, None, errno.EINVAL, "bufsz larger"),
    # half of RAM: one segment, then the total
    ([(0x100000, RAM // 2 + P, 0)], RAM, None, errno.EINVAL, "larger than half"),
    ([(0x100000, RAM // 2, 0)], RAM, None, 0, ""),
    ([(0x100000, RAM // 4, 0), (0x10000000, RAM // 4 + P, 0)], RAM, None, errno.EINVAL,
     "more than half"),
    # the crash region (inclusive end in the kernel)
    ([(0x1000000, P, 0)], RAM, (0x1000000, 0x1FFFFFF), 0, ""),
    ([(0x1FFF000, 2 * P, 0)], RAM, (0x1000000, 0x1FFFFFF), errno.EADDRNOTAVAIL,
     "outside the crashkernel"),
    # several errors: the kernel's order decides (alignment before overlap
    # before bufsz before size)
    ([(0x100000, 2 * P, 3 * P), (0x100800, P, 0)], RAM, None, errno.EADDRNOTAVAIL,
     "not page aligned"),
    ([(0x100000, 2 * P, 3 * P), (0x101000, P, 0)], RAM, None, errno.EINVAL, "overlap"),
    ([(0x100000, RAM, RAM + 1)], RAM, None, errno.EINVAL, "bufsz larger"),
])
def test_kernel_rules(segs: list[tuple[int, int, int]], ram: int, crash: tuple[int, int] | None,
                      want: int, words: str) -> None:
    assert kernel_oracle(segs, ram // P, LIM, crash) == want  # the table agrees with the kernel
    try:
        check_segments([Segment(m, ms, b) for m, ms, b in segs], ram_bytes=ram, limit=LIM,
                       crash_region=(crash[0], crash[1] + 1) if crash else None)
    except PlanError as e:
        assert e.errno == want, e.message
        assert words in e.message and e.hint
    else:
        assert want == 0


seg_strategy = st.tuples(st.integers(0, 64).map(lambda x: x * 0x800),
                         st.integers(0, 24).map(lambda x: x * 0x800),
                         st.integers(0, 24).map(lambda x: x * 0x800))


@settings(max_examples=500, deadline=None)
@given(segs=st.lists(seg_strategy, max_size=18), ram_pages=st.integers(1, 40),
       crash=st.none() | st.tuples(st.integers(0, 8), st.integers(8, 40)))
def test_rules_match_the_kernel_on_random_lists(segs: list[tuple[int, int, int]],
                                                ram_pages: int,
                                                crash: tuple[int, int] | None) -> None:
    limit = 30 * P
    kc = (crash[0] * P, crash[1] * P - 1) if crash else None
    assert ours(segs, ram_pages * P, limit, kc) == kernel_oracle(segs, ram_pages, limit, kc)


def test_buffer_length_must_match_bufsz() -> None:
    with pytest.raises(PlanError, match="buffer of 3 bytes") as e:
        check_segments([Segment(0x100000, P, 4, b"abc")])
    assert e.value.errno == errno.EFAULT


def test_make_segment_rounds_memsz() -> None:
    s = make_segment(0x100000, b"x" * 5000, name="t")
    assert (s.memsz, s.bufsz, s.end) == (0x2000, 5000, 0x102000)


RAM_MAP = [Range(0, 0x9F000), Range(0x100000, 0x1FFE0000)]


def test_layout_places_like_kexec_tools() -> None:
    lay = Layout(RAM_MAP)
    stub = lay.place("stub", P, P, lo=0x3000)
    params = lay.place("params", 0x1050, 16, lo=0x3000)
    kernel = lay.place("kernel", 0x3F98000, 0x200000, lo=0x100000)
    initrd = lay.place("initrd", 0x1DB8C00, P, lo=0x1000000)
    assert (stub, params, kernel) == (0x1FFDF000, 0x1FFDD000, 0x1C000000)
    assert initrd == 0x1C000000 - 0x1DB9000
    low = lay.place("low", P, P, top_down=False)
    assert low == 0


def test_layout_window_and_no_room() -> None:
    lay = Layout(RAM_MAP, Range(0x1000000, 0x2000001))
    assert lay.free() == [Range(0x1000000, 0x2000000)]  # partial page dropped
    assert lay.place("k", 0x800000, 0x200000) == 0x1800000
    with pytest.raises(PlanError, match=r"no room for the initrd: 0x1000000 bytes") as e:
        lay.place("initrd", 0x1000000)
    assert "free RAM: [0x1000000, 0x1800000)" in e.value.message
    assert "--mem-min/--mem-max" in e.value.message and e.value.hint


def test_layout_take_refuses_non_ram_and_overlap() -> None:
    lay = Layout(RAM_MAP)
    lay.take(Range(0x1000000, 0x2000000), "PT_LOAD")
    with pytest.raises(PlanError, match="not inside System RAM") as e:
        lay.take(Range(0x9F000, 0xA1000), "PT_LOAD")
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(PlanError, match="overlaps"):
        lay.take(Range(0x1FFF000, 0x2001000), "PT_LOAD")


def test_check_in_ram_window() -> None:
    check_in_ram([Segment(0x100000, P, 0)], RAM_MAP, Range(0x100000, 0x200000))
    with pytest.raises(PlanError, match="outside --mem-min/--mem-max"):
        check_in_ram([Segment(0x200000, P, 0)], RAM_MAP, Range(0x100000, 0x200000))


def test_fill_window_covers_every_free_page() -> None:
    taken = [Segment(0x1000000, 0x200000, 0x10), Segment(0x1400000, P, 1)]
    fill = fill_window(taken, RAM_MAP, Range(0x0F00000, 0x1500800))
    assert [(s.mem, s.end) for s in fill] == [
        (0x0F00000, 0x1000000), (0x1200000, 0x1400000), (0x1401000, 0x1500000)]
    assert all(s.bufsz == 0 and s.buf is None for s in fill)
    check_segments(taken + fill)

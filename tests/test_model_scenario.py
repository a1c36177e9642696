"""Every path of the seed's page allocator, reproduced step by step.

The machine has 64 pages of RAM (pfn 0x100-0x13f) and a source limit at
pfn 0x13c; the allocator hands out pages from a script, so each step is
known.  After every stage the map (dst -> src, pages not in place), the
pages in place and the memory are asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kexec_py.boundary.abi import KEXEC_PRESERVE_CONTEXT, PAGE_SIZE, Stage, stage_flags
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.boundary.procfs import format_pgmap
from kexec_py.memmap import MemRegion
from kexec_py.model.config import ModelConfig
from kexec_py.ranges import Range
from kexec_py.segments import Segment

P = PAGE_SIZE


def page(tag: str) -> bytes:
    return (tag.encode() * P)[:P]


def seg(pfn: int, *tags: str) -> Segment:
    data = b"".join(page(t) for t in tags)
    return Segment(pfn * P, len(tags) * P, len(data), data)


def make(tmp: Path) -> ModelBackend:
    cfg = ModelConfig(regions=[MemRegion(Range(0x100 * P, 0x140 * P), "System RAM")],
                      seed=0, collide=0.0, source_limit=0x13C * P)
    return ModelBackend(tmp, persist=False, config=cfg)


def in_place(b: ModelBackend) -> set[int]:
    img = b.image("staging") or b.image("kexec")
    assert img is not None
    return {d for d, s in img.map.items() if d == s}


def step(b: ModelBackend, script: list[int], entry: int, segs: list[Segment], stage: Stage,
         flags: int = 0) -> None:
    k = b.kernel
    k.script = list(script)
    b.kexec_load(entry, segs, stage_flags(stage) | flags)
    assert k.script == [], "the allocator did not take every scripted page"
    assert b.check_invariants() == []


def test_every_allocator_path(tmp_path: Path) -> None:
    b = make(tmp_path)
    a = seg(0x100, "A0", "A1", "A2", "A3")
    # KS_start: 0x100 in place; for 0x101 the allocator first offers 0x102, a
    # destination of this call not loaded yet (reserved in place), then 0x120;
    # 0x102 is then found in place; for 0x103 it offers 0x13d, above the source
    # limit (unusable), then 0x121.
    step(b, [0x100, 0x102, 0x120, 0x13D, 0x121], 0x100 * P, [a], Stage.START)
    assert b.pgmap().pairs() == [(0x101, 0x120), (0x103, 0x121)]
    assert in_place(b) == {0x100, 0x102}
    img = b.image("staging")
    assert img is not None and list(img.unusable) == [0x13D]
    assert b.read_phys(0x120 * P, P) == page("A1") and b.read_phys(0x121 * P, P) == page("A3")
    st = b.status()
    assert st.loaded is False and st.staging is not None and "KS_start" in st.staging

    # KS_mid: B targets 0x120-0x121, the source pages of 0x101 and 0x103: both are
    # re-homed first.  0x101 gets its own page (in place: the script offers 0x101);
    # 0x103 gets 0x130.  Then C (0x110) is offered 0x103 -- an earlier destination
    # whose content waits in 0x130: the content moves home (0x103 in place) and
    # 0x130 becomes C's source page (the swap).
    bb = seg(0x120, "B0", "B1")
    c = seg(0x110, "C0")
    step(b, [0x101, 0x130, 0x103], 0, [bb, c], Stage.MID)
    assert b.pgmap().pairs() == [(0x110, 0x130)]
    assert in_place(b) == {0x100, 0x101, 0x102, 0x103, 0x120, 0x121}
    assert b.read_phys(0x101 * P, P) == page("A1")
    assert b.read_phys(0x103 * P, P) == page("A3")
    assert b.read_phys(0x120 * P, 2 * P) == page("B0") + page("B1")
    assert b.read_phys(0x130 * P, P) == page("C0")

    # KS_final: D overwrites 0x110 (loaded by KS_mid): the same source page 0x130
    # takes the later write ("parameter passing").  The control code page is first
    # offered 0x110, a destination (kept aside, then freed), then 0x138; the swap
    # page is 0x139; the one indirection page 0x13a.
    d = Segment(0x110 * P, P, 3, b"D!!")
    step(b, [0x110, 0x138, 0x139, 0x13A], 0, [d], Stage.FINAL)
    img = b.image("kexec")
    assert img is not None and b.image("staging") is None
    assert b.pgmap().pairs() == [(0x110, 0x130)]
    assert format_pgmap(b.pgmap().pairs()) == "0x0000000000000110\t0x0000000000000130\n"
    assert list(img.control) == [0x138, 0x139] and list(img.ind) == [0x13A]
    assert list(img.reloc_dst) == [0x110] and list(img.reloc_src) == [0x130]
    assert b.read_phys(0x130 * P, P) == b"D!!" + bytes(P - 3)
    assert 0x110 not in b.kernel.level.owner  # the extra control page went back
    assert b.status().loaded is True

    b.reboot_kexec()
    want = {0x100: page("A0"), 0x101: page("A1"), 0x102: page("A2"), 0x103: page("A3"),
            0x110: b"D!!" + bytes(P - 3), 0x120: page("B0"), 0x121: page("B1")}
    for pfn, data in want.items():
        assert b.read_phys(pfn * P, P) == data, hex(pfn)
    jump = b.last_jump
    assert jump is not None and jump.what == "exec" and jump.entry == 0x100 * P
    assert jump.pages == 1
    assert jump.segments() == [(0x100 * P, 4 * P, 4 * P), (0x120 * P, 2 * P, 2 * P),
                               (0x110 * P, P, P), (0x110 * P, P, 3)]


def test_preserve_context_swaps_and_returns(tmp_path: Path) -> None:
    b = make(tmp_path)
    b.write_phys(0x105 * P, page("k5"))  # the running kernel's own page
    b.write_phys(0x107 * P, page("k7"))
    # 0x105 and 0x107 are in use: they get source pages 0x120 and 0x121
    step(b, [0x120, 0x121], 0x105 * P, [seg(0x105, "n5"), seg(0x107, "n7")], Stage.FULL,
         KEXEC_PRESERVE_CONTEXT)
    assert b.pgmap().pairs() == [(0x105, 0x120), (0x107, 0x121)]
    b.reboot_kexec()
    # the new kernel runs at 0x105/0x107; the old contents wait in the sources
    assert b.read_phys(0x105 * P, P) == page("n5") and b.read_phys(0x120 * P, P) == page("k5")
    assert b.read_phys(0x107 * P, P) == page("n7") and b.read_phys(0x121 * P, P) == page("k7")
    run = b.running()
    assert run["depth"] == 1 and run["name"] == "image@0x105000"
    assert "preserve-context jump" in (b.status().running or "")
    jump, img = b.last_jump, b.kernel.levels[0].kexec
    assert jump is not None and img is not None and jump.what == "jump"
    assert jump.jump_back_entry == img.control[0] * P
    # the jumped-to kernel cannot scribble on the frozen kernel's source pages
    with pytest.raises(Exception, match="frozen"):
        b.write_phys(0x120 * P, b"x")
    # it changes its own memory, then returns (reboot with nothing loaded)
    b.write_phys(0x107 * P, page("B7"))
    b.reboot_kexec()
    assert b.running()["depth"] == 0 and b.status().running == "the original kernel"
    assert b.read_phys(0x105 * P, P) == page("k5") and b.read_phys(0x107 * P, P) == page("k7")
    # the image is still loaded; its source page now holds what the other kernel left
    assert b.status().loaded is True
    assert b.read_phys(0x121 * P, P) == page("B7")
    ret = b.last_jump
    assert ret is not None and ret.what == "return" and ret.to_kernel == "original"

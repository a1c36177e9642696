"""backupmap.py: the page map checked against a plan, the elfcorehdr and
raw encodings, the loaded kernel's command line."""

from __future__ import annotations

import random
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexec_py.boundary.procfs import PageMap, format_pgmap, parse_pgmap
from kexec_py.errors import PlanError, ProcfsError
from kexec_py.formats.notes import parse_notes
from kexec_py.formats.vmcore import KEXEC_PY_NOTE, NT_KEXEC_PY_BACKUP_MAP
from kexec_py.hibernate import window as bm
from kexec_py.memmap import MemRegion
from kexec_py.ranges import Range, merge
from kexec_py.segments import Segment

P = 4096


def pm(pairs: list[tuple[int, int]]) -> PageMap:
    return PageMap(array("Q", [d for d, _ in pairs]), array("Q", [s for _, s in pairs]))


SEGS = [Segment(0x100000, 4 * P, 0), Segment(0x200000, 2 * P, 0)]


# --- validating a page map ------------------------------------------------------------


def test_valid_map_counts_moved_pages() -> None:
    m = pm([(0x100, 0x900), (0x101, 0x101), (0x102, 0x905), (0x200, 0x901)])
    assert bm.validate_pgmap(m, SEGS) == 3


def test_destination_outside_every_segment() -> None:
    with pytest.raises(ProcfsError, match="line 2: destination pfn 0x150 is in no loaded"):
        bm.validate_pgmap(pm([(0x100, 0x900), (0x150, 0x901)]), SEGS)


def test_source_inside_a_destination() -> None:
    with pytest.raises(ProcfsError, match="line 2: source pfn 0x201 of destination 0x101"):
        bm.validate_pgmap(pm([(0x100, 0x900), (0x101, 0x201)]), SEGS)


def test_duplicates() -> None:
    with pytest.raises(ProcfsError, match="destination page twice"):
        bm.validate_pgmap(pm([(0x100, 0x900), (0x100, 0x901)]), SEGS)
    with pytest.raises(ProcfsError, match="source page twice"):
        bm.validate_pgmap(pm([(0x100, 0x900), (0x101, 0x900)]), SEGS)


def test_large_map_and_high_pfns() -> None:
    n = 300_000
    segs = [Segment(0x1_0000_0000, n * P, 0)]
    dst = array("Q", range(0x100000, 0x100000 + n))
    src = array("Q", range(0x400000, 0x400000 + n))
    assert bm.validate_pgmap(PageMap(dst, src), segs) == n
    # beyond the byte map's reach: the bisect path gives the same answers
    far = [Segment(1 << 50, 4 * P, 0)]
    good = pm([((1 << 50) // P + i, 0x900 + i) for i in range(4)])
    assert bm.validate_pgmap(good, far) == 4
    with pytest.raises(ProcfsError, match="line 1"):
        bm.validate_pgmap(pm([(0x5, 0x900)]), far)


# --- runs and PT_LOADs -----------------------------------------------------------------


def test_moved_runs_group_consecutive_pairs() -> None:
    m = pm([(0x103, 0x903), (0x100, 0x900), (0x101, 0x901), (0x102, 0x950), (0x104, 0x104)])
    r = bm.moved_runs(m)
    assert list(zip(r.dst, r.src, r.count, strict=True)) == [
        (0x100, 0x900, 2), (0x102, 0x950, 1), (0x103, 0x903, 1)]
    assert r.translate(0x101123) == 0x901123
    assert r.translate(0x104000) == 0x104000
    assert r.pages == 4


def test_core_loads_redirect_and_clip() -> None:
    ram = [Range(0x1000, 0x9FC00), Range(0x100000, 0x200000)]
    m = pm([(0x9F, 0x500), (0x100, 0x600), (0x101, 0x601), (0x1FF, 0x700)])
    loads = bm.core_loads(ram, bm.moved_runs(m))
    assert loads == [
        (0x1000, 0x1000, 0x9E000),
        (0x9F000, 0x500000, 0xC00),          # clipped to the end of RAM
        (0x100000, 0x600000, 0x2000),
        (0x102000, 0x102000, 0x1FF000 - 0x102000),
        (0x1FF000, 0x700000, 0x1000),
    ]


def test_core_loads_leave_out_pages_loaded_in_place() -> None:
    """A destination page that is not in the map was loaded in place: it
    was free before the load and is the loaded kernel's now (whose
    /proc/vmcore could not read it), so no PT_LOAD names it."""
    ram = [Range(0x1000, 0x9FC00), Range(0x100000, 0x200000)]
    dests = [Range(0x1000, 0x3000), Range(0x100000, 0x106000)]
    m = pm([(0x1, 0x500), (0x100, 0x600), (0x101, 0x601), (0x104, 0x700)])
    assert bm.core_loads(ram, bm.moved_runs(m), dests) == [
        (0x1000, 0x500000, 0x1000),
        (0x3000, 0x3000, 0x9FC00 - 0x3000),  # pfn 2 was loaded in place
        (0x100000, 0x600000, 0x2000),        # pfns 0x102-0x103 too
        (0x104000, 0x700000, 0x1000),        # and 0x105
        (0x106000, 0x106000, 0x200000 - 0x106000),
    ]
    lay = bm.plan_window(MEMMAP, Range(0x1000000, 0x2000000))
    core = bm.parse_elfcorehdr(bm.parameter_builder(lay, MEMMAP)(pm([(0x1000, 0x30000)])))
    covered = merge(Range(pa, pa + size) for pa, _, size in core.loads)
    # the window and the low memory are destinations: only the moved page is left of them
    assert covered == [Range(0x9F000, 0x9FC00), Range(0x100000, 0x1001000),
                       Range(0x2000000, 0x1FFE0000)]


def test_run_spanning_two_ram_ranges() -> None:
    ram = [Range(0x0, 0x2000), Range(0x2000 + 0, 0x4000)]  # merged into one
    m = pm([(1, 0x10), (2, 0x11)])
    assert bm.core_loads(ram, bm.moved_runs(m)) == [
        (0, 0, 0x1000), (0x1000, 0x10000, 0x2000), (0x3000, 0x3000, 0x1000)]
    ram = [Range(0x0, 0x2000), Range(0x3000, 0x5000)]
    m = pm([(1, 0x10), (2, 0x11), (3, 0x12)])  # pfn 2 is a hole in RAM
    assert bm.core_loads(ram, bm.moved_runs(m)) == [
        (0, 0, 0x1000), (0x1000, 0x10000, 0x1000), (0x3000, 0x12000, 0x1000),
        (0x4000, 0x4000, 0x1000)]


# --- the elfcorehdr --------------------------------------------------------------------


def test_elfcorehdr_layout() -> None:
    ram = [Range(0x1000, 0x9FC00), Range(0x100000, 0x1000000)]
    m = pm([(0x200, 0xE00), (0x201, 0xE01), (0x300, 0x300)])
    notes = [bm.NoteArea(0x200010, 0x100, "cpu0"), bm.NoteArea(0x500000, 0x40, "vmcoreinfo")]
    hdr = bm.build_elfcorehdr(ram, m, addr=0xF00000, window=Range(0x100000, 0x1000000),
                              notes=notes)
    assert hdr[:4] == b"\x7fELF" and hdr[4] == 2 and hdr[5] == 1
    (e_type, machine) = struct.unpack_from("<HH", hdr, 16)
    assert (e_type, machine) == (4, 62)
    core = bm.parse_elfcorehdr(hdr)
    phnum = struct.unpack_from("<H", hdr, 56)[0]
    assert phnum == 3 + len(core.loads)
    # PT_NOTEs first: our own (inside the header), then the CPU note
    # redirected through the map, then VMCOREINFO (not moved)
    own_off = 64 + 56 * phnum
    assert core.notes[0] == (0xF00000 + own_off, len(hdr) - own_off)
    assert core.notes[1] == (0xE00010, 0x100)
    assert core.notes[2] == (0x500000, 0x40)
    (own,) = parse_notes(hdr[own_off:], True, "own")
    assert (own.name, own.type) == (KEXEC_PY_NOTE, NT_KEXEC_PY_BACKUP_MAP)
    # an empty note ends the PT_NOTE inside its p_memsz: /proc/vmcore reads
    # note headers until n_namesz is 0, even one at p_memsz
    assert hdr[-12:] == bytes(12) and hdr[-20:-12] == struct.pack("<Q", 2)
    assert struct.unpack("<QQQ", own.desc) == (0x100000, 0x1000000, 2)
    assert core.loads == [(0x1000, 0x1000, 0x9EC00), (0x100000, 0x100000, 0x100000),
                          (0x200000, 0xE00000, 0x2000), (0x202000, 0x202000, 0xDFE000)]
    assert len(hdr) <= bm.elfcorehdr_worst_case(ram, 3, extra_notes=2)


def test_elfcorehdr_refuses_what_vmcore_cannot_read() -> None:
    ram = [Range(0, 0x100000000)]
    n = 40_000  # every other page moved: 80,000 runs
    m = PageMap(array("Q", range(0, 2 * n, 2)), array("Q", range(0x200000, 0x200000 + 2 * n, 2)))
    with pytest.raises(PlanError, match="program headers; /proc/vmcore reads at most"):
        bm.build_elfcorehdr(ram, m, addr=0, window=Range(0, 1 << 30))


pairs_strategy = st.lists(st.tuples(st.integers(0, 63), st.integers(0, 200)), max_size=64)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 12)), min_size=1, max_size=5),
       st.randoms(use_true_random=False), st.floats(0, 1))
def test_backup_view_reads_the_original_memory(holes: list, rnd: random.Random,
                                               in_place: float) -> None:
    """The property behind the elfcorehdr: after the swap, reading every
    PT_LOAD at its p_offset gives the original memory at p_paddr, for every
    page of RAM that is not a backup copy."""
    ram, pos = [], 0
    for gap, size in holes:
        pos += gap * P
        ram.append(Range(pos, pos + size * P))
        pos += size * P
    pages = [p for r in ram for p in range(r.start // P, r.end // P)]
    window = set(rnd.sample(pages, rnd.randint(0, len(pages) // 2)))
    outside = [p for p in pages if p not in window]
    moved = [p for p in sorted(window) if rnd.random() >= in_place]
    if len(moved) > len(outside):
        moved = moved[:len(outside)]
    srcs = rnd.sample(outside, len(moved))
    pairs = list(zip(moved, srcs, strict=True)) + [(p, p) for p in window if p not in moved]
    rnd.shuffle(pairs)
    memory = {p: bytes([p & 0xFF, p >> 8 & 0xFF]) * (P // 2) for p in pages}
    after = dict(memory)
    for d, s in zip(moved, srcs, strict=True):  # the jump swaps dst and src
        after[d], after[s] = memory[s], memory[d]
    hdr = bm.build_elfcorehdr(ram, pm(pairs), addr=0, window=Range(0, pos))
    core = bm.parse_elfcorehdr(hdr)

    def read(addr: int, size: int) -> bytes:
        out = b""
        while size:
            page, off = divmod(addr, P)
            chunk = min(size, P - off)
            out += after[page][off:off + chunk]
            addr, size = addr + chunk, size - chunk
        return out

    covered = 0
    for paddr, data, size in core.loads:
        for off in range(0, size, P):
            page = (paddr + off) // P
            assert page in memory, "a PT_LOAD outside RAM"
            if page in srcs:
                continue  # a backup copy: shows the original of its destination
            assert read(data + off, P) == memory[page], f"page {page:#x}"
            covered += 1
    assert covered == len(pages) - len(srcs)
    assert len(hdr) <= bm.elfcorehdr_worst_case(ram, len(window))


# --- the raw encoding ------------------------------------------------------------------


def test_raw_round_trip() -> None:
    m = pm([(0x105, 0x905), (0x100, 0x900), (0x101, 0x101)])
    raw = bm.build_raw(m)
    assert raw[:8] == b"KXPYBMAP"
    assert struct.unpack_from("<IIQ", raw, 8) == (1, 4096, 2)
    assert struct.unpack_from("<4Q", raw, 24) == (0x100, 0x900, 0x105, 0x905)
    back = bm.parse_raw(raw)
    assert back.pairs() == [(0x100, 0x900), (0x105, 0x905)]
    assert len(raw) <= bm.raw_worst_case(3)
    with pytest.raises(ProcfsError):
        bm.parse_raw(raw[:30])
    with pytest.raises(ProcfsError):
        bm.parse_raw(b"X" * 24)


def test_pgmap_text_round_trip_into_raw() -> None:
    text = format_pgmap([(0x100, 0x900), (0x101, 0x901)])
    assert bm.parse_raw(bm.build_raw(parse_pgmap(text.encode()))).pairs() == \
        [(0x100, 0x900), (0x101, 0x901)]


# --- command lines ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("4096", 4096), ("0x1000", 4096), ("4K", 4096), ("16M", 16 << 20), ("0x10k", 16 << 10),
    ("1G", 1 << 30), ("010", 8), ("0", 0)])
def test_memparse(text: str, value: int) -> None:
    assert bm.memparse(text) == value


def test_memparse_rejects() -> None:
    for bad in ("", "x", "12Q", "-1"):
        with pytest.raises(ValueError):
            bm.memparse(bad)
    assert bm.parse_size_at("0x3000@0x1ffc0000") == (0x3000, 0x1FFC0000)
    with pytest.raises(ValueError):
        bm.parse_size_at("0x3000")


def test_find_param_takes_the_last() -> None:
    line = "root=/dev/vda elfcorehdr=4K@1M quiet elfcorehdr=8K@2M"
    assert bm.find_param(line, "elfcorehdr") == "8K@2M"
    assert bm.find_param(line, "nope") is None


MEMMAP = [
    MemRegion(Range(0x0, 0x9FC00), "System RAM"),
    MemRegion(Range(0x9FC00, 0xA0000), "Reserved"),
    MemRegion(Range(0x100000, 0x1FFE0000), "System RAM"),
    MemRegion(Range(0x1FFE0000, 0x1FFF0000), "ACPI Tables"),
    MemRegion(Range(0x1FFF0000, 0x20000000), "ACPI Non-volatile Storage"),
]


def test_confine_cmdline() -> None:
    out = bm.confine_cmdline(MEMMAP, [Range(0x1000, 0x9F000), Range(0x1000000, 0x2000000)])
    assert out == ["memmap=exactmap", "memmap=632K@4K", "memmap=16384K@16384K",
                   "memmap=64K#524160K", "memmap=64K#524224K"]


def test_plan_window() -> None:
    lay = bm.plan_window(MEMMAP, Range(0, 0x8000000))
    assert lay.ram == [Range(0, 0x9F000), Range(0x100000, 0x8000000)]
    assert lay.region.end == 0x8000000 and lay.region.start % P == 0
    assert lay.region.size >= lay.worst_case
    assert lay.worst_case == bm.elfcorehdr_worst_case(
        [m.range for m in MEMMAP if m.is_ram], lay.dest_pages)
    assert f"elfcorehdr={lay.region.size:#x}@{lay.region.start:#x}" in lay.cmdline
    assert lay.cmdline[0] == "memmap=exactmap"
    assert f"memmap={(lay.region.start - 0x100000) >> 10}K@1024K" in lay.cmdline
    assert all(not r.overlaps(lay.region) for r in lay.kernel_ram)
    raw = bm.plan_window(MEMMAP, Range(0, 0x8000000), "raw")
    assert raw.region.size < lay.region.size
    assert any(t.startswith("kexec_backup_map=") for t in raw.cmdline)


def test_plan_window_backs_up_low_memory() -> None:
    """An x86 kernel cannot boot without RAM below 1 MiB (its real-mode
    trampoline): a window above it gets the low RAM too, backed up."""
    lay = bm.plan_window(MEMMAP, Range(0x1000000, 0x2000000))
    assert lay.low == [Range(0, 0x9F000)]
    assert lay.ram == [Range(0, 0x9F000), Range(0x1000000, 0x2000000)]
    assert Range(0, 0x9F000) in lay.kernel_ram and "memmap=636K@0K" in lay.cmdline
    assert lay.window.covers(lay.region) and lay.region.end == 0x2000000
    assert lay.worst_case == bm.elfcorehdr_worst_case(
        [m.range for m in MEMMAP if m.is_ram], (0x9F000 + 0x1000000) >> 12)
    assert bm.plan_window(MEMMAP, Range(0, 0x2000000)).low == []
    assert bm.plan_window(MEMMAP, Range(0x50000, 0x2000000)).low == [Range(0, 0x50000)]
    off = bm.plan_window(MEMMAP, Range(0x1000000, 0x2000000), low_memory=False)
    assert off.low == [] and off.ram == [Range(0x1000000, 0x2000000)]
    assert not any("@0K" in t for t in off.cmdline)


def test_plan_window_errors() -> None:
    with pytest.raises(PlanError, match="no whole page of System RAM"):
        bm.plan_window(MEMMAP, Range(0x9FC00, 0xA0000))
    with pytest.raises(PlanError, match="has no room"):
        bm.plan_window(MEMMAP, Range(0x100000, 0x101000))
    with pytest.raises(PlanError, match="--backup-map"):
        bm.plan_window(MEMMAP, Range(0, 0x8000000), "json")


def test_parameter_builder_picks_the_encoding() -> None:
    lay = bm.plan_window(MEMMAP, Range(0x1000000, 0x2000000))
    build = bm.parameter_builder(lay, MEMMAP)
    m = pm([(0x1000, 0x30000)])
    core = bm.parse_elfcorehdr(build(m))
    assert (0x1000000, 0x30000000, P) in core.loads
    lay_raw = bm.plan_window(MEMMAP, Range(0x1000000, 0x2000000), "raw")
    assert bm.parameter_builder(lay_raw, MEMMAP)(m)[:8] == b"KXPYBMAP"


# --- /proc/vmcore as a stock kernel builds it from the header ----------------------------


def test_vmcore_view_of_a_backup_map() -> None:
    """Physical memory after a jump, the elfcorehdr in it, and /proc/vmcore
    built from them: the file parses as an image whose every PT_LOAD holds
    the original memory."""
    from kexec_py.formats.vmcore import parse_core
    from kexec_py.hibernate.vmcore import VmcoreView

    size = 0x400000
    rnd = random.Random(5)
    original = bytearray(rnd.randbytes(size))
    note_bytes = struct.pack("<III", 5, 4, 1) + b"CORE\0\0\0\0" + b"abcd"
    original[0x200000:0x200000 + len(note_bytes) + 12] = note_bytes + bytes(12)  # A's CPU note
    ram = [Range(0x1000, 0x9FC00), Range(0x100000, size)]
    moved = {0x120 + i: 0x300 + 2 * i for i in range(16)}  # dst pfn -> src pfn
    phys = bytearray(original)
    for d, s in moved.items():  # the swap at the jump
        phys[d * P:(d + 1) * P], phys[s * P:(s + 1) * P] = \
            original[s * P:(s + 1) * P], original[d * P:(d + 1) * P]
    hdr_addr = 0x3F0000  # a page of the loaded kernel, loaded in place
    hdr = bm.build_elfcorehdr(ram, pm(list(moved.items())), addr=hdr_addr,
                              window=Range(0x100000, 0x200000),
                              notes=[bm.NoteArea(0x200000, 0x200, "cpu0")])
    phys[hdr_addr:hdr_addr + len(hdr)] = hdr

    def read(addr: int, n: int) -> bytes:
        return bytes(phys[addr:addr + n])

    view = VmcoreView(read, hdr_addr, len(hdr))
    data = view.read(0, view.size)
    assert len(data) == view.size and view.data_start % P == 0
    img = parse_core(data, "/proc/vmcore")
    assert [(n.name, n.type) for n in img.notes] == [("KEXEC_PY", 2), ("CORE", 1)]
    srcs = set(moved.values())
    for seg in img.segments():
        for off in range(0, seg.memsz, P):
            page = (seg.mem + off) // P
            got = bytes(seg.buf[off:off + P]) if seg.buf is not None else b""
            want = bytes(original[page * P:(page + 1) * P])
            end = min(P, seg.bufsz - off)
            if page not in srcs and page != hdr_addr // P:
                assert got[:end] == want[:end], f"page {page:#x}"
    # reads at odd offsets and sizes agree with one big read
    for off in (0, 1, view.data_start - 3, view.data_start + 5, view.size - 7):
        assert view.read(off, 11) == data[off:off + 11]

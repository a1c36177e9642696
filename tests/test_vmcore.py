"""formats/vmcore.py: reading hibernation images (ELF cores)."""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from coregen import PT_LOAD, PT_NOTE, Core, Ph, note, pattern, simple_core
from hypothesis import given, settings
from hypothesis import strategies as st

from kexec_py.errors import FormatError
from kexec_py.formats import vmcore
from kexec_py.formats.vmcore import open_core, parse_core

P = 4096


def _memory(segs: list) -> dict[int, bytes]:
    """Physical memory a list of segments produces, page by page."""
    out: dict[int, bytes] = {}
    for s in segs:
        data = bytes(s.buf) if s.buf is not None else b""
        data = data + bytes(s.memsz - len(data))
        for off in range(0, s.memsz, P):
            assert s.mem + off not in out, f"page {s.mem + off:#x} loaded twice"
            out[s.mem + off] = data[off:off + P]
    return out


def _expected(loads: list[tuple[int, bytes, int]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for paddr, data, memsz in loads:
        full = data + bytes(-(-memsz // P) * P - len(data))
        for off in range(0, len(full), P):
            out[paddr + off] = full[off:off + P]
    return out


def test_elf64_image_with_notes(tmp_path: Path) -> None:
    loads = [(0x100000, pattern(0x100000, 3 * P), 3 * P),
             (0x200000, pattern(0x200000, 100), 2 * P),
             (0x400000, b"", 5 * P)]
    notes = note("VMCOREINFO", 0, b"OSRELEASE=6.1.0\nPAGESIZE=4096\n") + \
        vmcore.jump_back_note(0x1234000)
    path = simple_core(loads, notes=notes).write(tmp_path / "img")
    with open_core(path) as img:
        assert img.header.bits == 64 and img.header.little
        assert img.vmcoreinfo == "OSRELEASE=6.1.0\nPAGESIZE=4096\n"
        assert img.jump_back_entry == 0x1234000
        assert len(img.loads) == 3
        segs = img.segments()
        assert [(s.mem, s.memsz, s.bufsz) for s in segs] == [
            (0x100000, 3 * P, 3 * P), (0x200000, 2 * P, 100), (0x400000, 5 * P, 0)]
        assert segs[2].buf is None
        assert isinstance(segs[0].buf, memoryview)
        assert isinstance(segs[0].buf.obj, mmap.mmap), "buffers must be slices of the mmap"
        assert _memory(segs) == _expected(loads)
        del segs


@pytest.mark.parametrize(("bits", "little"), [(32, True), (64, False), (32, False)])
def test_other_classes_and_byte_orders(bits: int, little: bool) -> None:
    loads = [(0x10000, pattern(0x10000, 2 * P), 2 * P), (0x30000, pattern(0x30000, 10), P)]
    notes = vmcore.jump_back_note(0xABC000, little=little)
    img = parse_core(simple_core(loads, bits=bits, little=little, notes=notes).render())
    assert img.header.bits == bits and img.header.little == little
    assert img.jump_back_entry == 0xABC000
    assert _memory(img.segments()) == _expected(loads)


def test_no_note_means_no_entry() -> None:
    img = parse_core(simple_core([(0, b"x" * 10, P)]).render())
    assert img.jump_back_entry is None and img.vmcoreinfo is None and img.notes == []


def test_pn_xnum_extended_count(tmp_path: Path) -> None:
    n = 70_000
    c = Core()
    c.phdrs = [Ph(PT_LOAD, 0, 0, 0, 0)] * n
    base = -(-c.table_end() // P) * P
    c.phdrs = [Ph(PT_LOAD, base + i * P, (2 * i) * P, P, P) for i in range(n)]
    c.blobs = {base + 7 * P: b"seven", base + (n - 1) * P: b"last"}
    c.size = base + n * P
    with open_core(c.write(tmp_path / "x")) as img:
        assert img.phdr_count == n
        segs = img.segments()
        assert len(segs) == n  # 2-page stride: nothing to coalesce
        assert bytes(segs[7].buf[:5]) == b"seven" and segs[7].mem == 14 * P
        assert bytes(segs[-1].buf[:4]) == b"last"
        del segs


def test_coalescing_contiguous_in_file_and_memory() -> None:
    c = Core()
    c.phdrs = [Ph(PT_LOAD, 0, 0, 0, 0)] * 6
    b = -(-c.table_end() // P) * P
    c.phdrs = [
        Ph(PT_LOAD, b, 0x100000, P, P),                  # \
        Ph(PT_LOAD, b + P, 0x101000, P, P),              #  } one run: file and memory go on
        Ph(PT_LOAD, b + 2 * P, 0x102000, 100, 2 * P),    # /  (ends with a zero tail)
        Ph(PT_LOAD, 0, 0x104000, 0, 3 * P),              # all zero: extends the tail
        Ph(PT_LOAD, b + 3 * P, 0x107000, P, P),          # after a zero tail: a new run
        Ph(PT_LOAD, b + 9 * P, 0x108000, P, P),          # memory-adjacent, file is not
    ]
    c.blobs = {b + i * P: pattern(0x100000 + i * P, P) for i in range(10)}
    img = parse_core(c.render())
    runs = img.runs()
    assert list(zip(runs.paddr, runs.filesz, runs.memsz, strict=True)) == [
        (0x100000, 2 * P + 100, 7 * P), (0x107000, P, P), (0x108000, P, P)]
    segs = img.segments()
    assert bytes(segs[0].buf) == c.render()[b:b + 2 * P + 100]


def test_unsorted_pt_loads_are_sorted() -> None:
    loads = [(0x300000, pattern(0x300000, P), P), (0x100000, pattern(0x100000, P), P)]
    img = parse_core(simple_core(loads).render())
    assert [s.mem for s in img.segments()] == [0x100000, 0x300000]
    assert _memory(img.segments()) == _expected(loads)


def test_partial_last_page_is_rounded_like_kexec_tools() -> None:
    # /proc/vmcore's RAM runs can end off a page (0x1000-0x9fbff)
    img = parse_core(simple_core([(0x1000, b"", 0x9EC00)]).render())
    (s,) = img.segments()
    assert (s.mem, s.memsz) == (0x1000, 0x9F000)


# --- what is refused ---------------------------------------------------------------------


def _raises(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match) as ei:
        parse_core(data, "img")
    assert ei.value.hint


def _good() -> Core:
    return simple_core([(0x100000, b"a" * 100, P), (0x200000, b"b" * 10, P)])


def test_not_elf() -> None:
    _raises(b"MZ\x90\x00" + bytes(100), "not an ELF file")
    _raises(b"", "not an ELF file")


def test_not_a_core() -> None:
    c = _good()
    c.e_type = 2
    _raises(c.render(), r"an executable, not a core file")


def test_bad_ident() -> None:
    data = bytearray(_good().render())
    data[4] = 3
    _raises(bytes(data), "unknown ELF class")
    data = bytearray(_good().render())
    data[5] = 0
    _raises(bytes(data), "unknown ELF data encoding")


def test_truncated_header_and_table() -> None:
    _raises(_good().render()[:40], "truncated")
    c = _good()
    _raises(c.render()[:c.header_size() + 10], "program header table .* runs past the end")


def test_bad_phentsize_and_zero_phnum() -> None:
    c = _good()
    c.phentsize = 40
    _raises(c.render(), "program headers of 40 bytes")
    c = Core()
    c.size = 4096
    _raises(c.render(), "no program headers")


def test_xnum_without_section_header() -> None:
    data = bytearray(_good().render())
    struct.pack_into("<H", data, 56, 0xFFFF)  # e_phnum = PN_XNUM, e_shoff stays 0
    _raises(bytes(data), "PN_XNUM")


def test_absurd_count() -> None:
    c = _good()
    c.xnum = True
    data = bytearray(c.render())
    shoff = struct.unpack_from("<Q", data, 40)[0]
    struct.pack_into("<I", data, shoff + 44, 1 << 25)
    _raises(bytes(data), "claims 33554432 program headers")


def test_data_beyond_end_of_file() -> None:
    c = _good()
    c.phdrs[1].filesz = 10 * P
    c.phdrs[1].memsz = 10 * P
    _raises(c.render(), r"lies beyond the end of the file")


def test_filesz_larger_than_memsz() -> None:
    c = _good()
    c.phdrs[0].filesz, c.phdrs[0].memsz = 100, 50
    _raises(c.render(), "p_filesz 0x64 larger than p_memsz 0x32")


def test_overlapping_loads() -> None:
    c = simple_core([(0x100000, b"a", 4 * P), (0x102000, b"b", P)])
    _raises(c.render(), "PT_LOADs overlap in physical memory: program header 0")


def test_shared_page_not_contiguous() -> None:
    # the first ends mid-page with a zero tail; the second carries data
    c = simple_core([(0x100000, b"a" * 10, 0x800), (0x100800, b"b" * 10, 0x800)])
    _raises(c.render(), "share the page 0x100000")
    # a gap inside the shared page
    c = simple_core([(0x100000, b"a" * 10, 0x800), (0x100C00, b"", 0x400)])
    _raises(c.render(), "share the page 0x100000")


def test_unaligned_load_that_continues_the_previous_one() -> None:
    c = simple_core([(0x100000, b"a" * 0x800, 0x800), (0x100800, b"b" * 0x800, 0x1800)])
    c.phdrs[1].offset = c.phdrs[0].offset + 0x800
    c.blobs = {c.phdrs[0].offset: b"a" * 0x800 + b"b" * 0x800}
    (s,) = parse_core(c.render()).segments()
    assert (s.mem, s.memsz, s.bufsz) == (0x100000, 2 * P, 0x1000)
    assert bytes(s.buf) == b"a" * 0x800 + b"b" * 0x800


def test_unaligned_paddr() -> None:
    c = simple_core([(0x100800, b"a", P)])
    _raises(c.render(), "not page aligned")


def test_no_loads() -> None:
    c = simple_core([(0x100000, b"", 0)], notes=note("X", 1, b"abcd"))
    _raises(c.render(), "no PT_LOAD")


def test_address_space_overflow() -> None:
    c = simple_core([(0xFFFFF000, b"", 2 * P)], bits=32)
    _raises(c.render(), "32-bit address space")


def test_note_overrun() -> None:
    bad = struct.pack("<III", 4, 100, 1) + b"abc\0" + b"x" * 8
    c = simple_core([(0, b"", P)], notes=bad)
    _raises(c.render(), "runs past the end of its PT_NOTE")


def test_note_beyond_file() -> None:
    c = simple_core([(0, b"", P)], notes=note("A", 1, b"x"))
    c.phdrs[0].offset = 1 << 30
    _raises(c.render(), "PT_NOTE .* beyond the end of the file")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="does not exist"):
        open_core(tmp_path / "nope")
    with pytest.raises(FormatError, match="is a directory"):
        open_core(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(FormatError, match="is empty"):
        open_core(tmp_path / "empty")
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    with pytest.raises(FormatError, match="not an ELF file"):
        open_core(tmp_path / "junk")


def test_close_with_live_segments_is_harmless(tmp_path: Path) -> None:
    path = simple_core([(0, b"x" * 10, P)]).write(tmp_path / "i")
    img = open_core(path)
    segs = img.segments()
    img.close()  # the mapping stays while segs refer to it
    assert bytes(segs[0].buf) == b"x" * 10
    img.close()


# --- the property: segments reproduce the image's memory ----------------------------------

layouts = st.lists(
    st.tuples(st.integers(0, 3),            # gap pages before this load
              st.integers(0, 3 * P),        # filesz
              st.integers(0, 3),            # extra zero pages
              st.booleans()),               # data contiguous with the previous load
    min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(layouts, st.booleans())
def test_segments_cover_every_byte_exactly_once(spec: list, shuffle: bool) -> None:
    c = Core()
    c.phdrs = [Ph(PT_LOAD, 0, 0, 0, 0)] * len(spec)
    off = -(-c.table_end() // P) * P
    paddr = 0x100000
    phdrs, loads = [], []
    for gap, filesz, extra, contiguous in spec:
        paddr += gap * P
        memsz = max(P, -(-filesz // P) * P + extra * P) if gap or not contiguous else \
            -(-filesz // P) * P + extra * P or P
        if not contiguous:
            off += P
        data = pattern(paddr ^ 0x5A5A, filesz)
        phdrs.append(Ph(PT_LOAD, off, paddr, filesz, memsz))
        c.blobs[off] = data
        loads.append((paddr, data, memsz))
        off += filesz
        paddr += memsz
    if shuffle:
        phdrs.reverse()
    c.phdrs = phdrs
    img = parse_core(c.render())
    assert _memory(img.segments()) == _expected(loads)
    assert len(img.runs()) <= len(loads)


def test_pt_note_types_do_not_count_as_loads() -> None:
    c = simple_core([(0x1000, b"z", P)], notes=note("CORE", 1, bytes(336)))
    c.phdrs.append(Ph(PT_NOTE, c.phdrs[0].offset, 0, 0, 0))
    img = parse_core(c.render())
    assert len(img.loads) == 1 and [n.name for n in img.notes] == ["CORE"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None,
                    reason="needs root and losetup to attach a loop device")
def test_image_on_a_block_device(tmp_path: Path) -> None:
    # an image written to a partition: st_size is 0, the size comes from lseek
    loads = [(0x100000, pattern(0x100000, 2 * P), 2 * P)]
    path = simple_core(loads, notes=vmcore.jump_back_note(0x5000)).write(tmp_path / "img")
    with open(path, "r+b") as f:  # loop devices count whole 512-byte sectors
        f.truncate((os.path.getsize(path) + 511) // 512 * 512)
    r = subprocess.run(["losetup", "--find", "--show", "--read-only", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"losetup failed: {r.stderr.strip()}")
    dev = r.stdout.strip()
    try:
        with open_core(dev) as img:
            assert img.jump_back_entry == 0x5000
            segs = img.segments()
            assert _memory(segs) == _expected(loads)
            del segs
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)

"""ELF images (formats/elf.py): ELF64 and ELF32, both byte orders, PT_LOAD
at p_paddr, page sharing, zero-copy buffers, and kernel checks."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import pytest
from kernelgen import ElfSpec, Load, make_elf, vmlinux_spec

from kexec_py.errors import FormatError
from kexec_py.formats import elf
from kexec_py.segments import check_segments


def segment_memory(seg_buf: bytes | memoryview | None, bufsz: int, memsz: int) -> bytes:
    """What a segment leaves in memory: bufsz bytes, then zeros."""
    return (bytes(seg_buf) if seg_buf is not None else b"")[:bufsz] + bytes(memsz - bufsz)


def expected_memory(spec: ElfSpec, data: bytes, start: int, end: int) -> bytes:
    """Memory [start, end) as the PT_LOADs define it (zeros elsewhere)."""
    img = elf.parse(data, "x")
    out = bytearray(end - start)
    for p in img.loads:
        at = p.paddr - start
        out[at:at + p.filesz] = data[p.offset:p.offset + p.filesz]
    return bytes(out)


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("little", [True, False])
def test_parse_classes_and_byte_orders(bits: int, little: bool) -> None:
    spec = ElfSpec(loads=[Load(0x100000, 0x1800, 0x3000), Load(0x200000, 0x1000, 0x1000)],
                   bits=bits, little=little, entry=0x100040)
    img = elf.parse(make_elf(spec), "k")
    assert (img.bits, img.little, img.type, img.machine) == (bits, little, elf.ET_EXEC, 62)
    assert img.header["class"] == f"ELF{bits}" and img.header["phnum"] == 2
    assert [(p.paddr, p.filesz, p.memsz) for p in img.loads] == [
        (0x100000, 0x1800, 0x3000), (0x200000, 0x1000, 0x1000)]
    assert img.physical_entry() == 0x100040


def test_vmlinux_segments_are_views_of_the_mapping(tmp_path: Path) -> None:
    data = make_elf(vmlinux_spec())
    f = tmp_path / "vmlinux"
    f.write_bytes(data)
    with open(f, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    img = elf.parse(view, str(f))
    segs = elf.load_segments(img)
    assert [(s.mem, s.memsz, s.bufsz) for s in segs] == [
        (0x1000000, 0x3000, 0x3000), (0x1200000, 0x2000, 0x2000), (0x1202000, 0x1000, 0x1000),
        (0x1203000, 0x5000, 0x1000)]
    for s in segs:
        assert isinstance(s.buf, memoryview) and s.buf.obj is mm  # no copy
        assert struct.unpack_from("<Q", s.buf)[0] == s.mem  # the bytes of that PT_LOAD
    check_segments(segs)
    del segs, img, view, s
    mm.close()  # every view was released: the mapping closes


def test_pt_loads_sharing_a_page_become_one_segment() -> None:
    # two PT_LOADs in one page, the file in memory order: one zero-copy segment
    spec = ElfSpec(loads=[Load(0x100000, 0x800, 0x800, offset=0x1000, fill=1),
                          Load(0x100800, 0x1000, 0x1000, offset=0x1800, fill=2)])
    data = make_elf(spec)
    segs = elf.load_segments(elf.parse(data, "k"))
    assert [(s.mem, s.memsz, s.bufsz, s.name) for s in segs] == [
        (0x100000, 0x2000, 0x1800, "PT_LOAD x2")]
    assert isinstance(segs[0].buf, memoryview)
    mem = segment_memory(segs[0].buf, segs[0].bufsz, segs[0].memsz)
    assert mem == expected_memory(spec, data, 0x100000, 0x102000)


def test_bss_gap_between_page_sharing_loads_is_zero() -> None:
    # the first PT_LOAD has a zero tail in the page the second one starts in
    spec = ElfSpec(loads=[Load(0x100000, 0x400, 0xA00, fill=1),
                          Load(0x100C00, 0x800, 0x800, fill=2)])
    data = make_elf(spec)
    segs = elf.load_segments(elf.parse(data, "k"))
    assert len(segs) == 1 and isinstance(segs[0].buf, bytes)  # copied: zeros inserted
    s = segs[0]
    assert (s.mem, s.memsz, s.bufsz) == (0x100000, 0x2000, 0x1400)
    assert segment_memory(s.buf, s.bufsz, s.memsz) == expected_memory(spec, data, 0x100000,
                                                                      0x102000)


def test_unaligned_start_is_zero_padded() -> None:
    spec = ElfSpec(loads=[Load(0x100200, 0x300, 0x1000, offset=0x1200, fill=7)])
    data = make_elf(spec)
    s = elf.load_segments(elf.parse(data, "k"))[0]
    assert (s.mem, s.memsz, s.bufsz) == (0x100000, 0x2000, 0x500)
    assert segment_memory(s.buf, s.bufsz, s.memsz) == expected_memory(spec, data, 0x100000,
                                                                      0x102000)


def test_empty_pt_loads_are_skipped_and_memsz_only_has_no_buffer() -> None:
    spec = ElfSpec(loads=[Load(0x100000, 0, 0), Load(0x200000, 0, 0x3000)])
    segs = elf.load_segments(elf.parse(make_elf(spec), "k"))
    assert [(s.mem, s.memsz, s.bufsz, s.buf) for s in segs] == [(0x200000, 0x3000, 0, None)]


@pytest.mark.parametrize(("mutate", "words"), [
    (lambda d: d[:3], "not an ELF file"),
    (lambda d: d[:0x60], "truncated: 2 program headers"),
    (lambda d: d[:0x1800], "truncated: PT_LOAD 0 needs file bytes up to 0x2000"),
    (lambda d: d[:4] + b"\x09" + d[5:], "not a valid ELF file"),
])
def test_damaged_files(mutate: object, words: str) -> None:
    data = make_elf(ElfSpec(loads=[Load(0x100000, 0x1000, 0x1000),
                                   Load(0x200000, 0x1000, 0x1000)]))
    with pytest.raises(FormatError) as e:
        elf.parse(mutate(data), "k")  # type: ignore[operator]
    assert words in e.value.message and e.value.hint


def test_filesz_above_memsz_and_overlap_are_refused() -> None:
    with pytest.raises(FormatError, match="p_filesz 0x2000 > p_memsz 0x1000"):
        elf.parse(make_elf(ElfSpec(loads=[Load(0x100000, 0x2000, 0x1000)])), "k")
    img = elf.parse(make_elf(ElfSpec(loads=[Load(0x100000, 0x2000, 0x2000),
                                            Load(0x101000, 0x1000, 0x1000)])), "k")
    with pytest.raises(FormatError, match="PT_LOADs overlap"):
        elf.load_segments(img)


@pytest.mark.parametrize(("spec", "words"), [
    (ElfSpec(loads=[Load(0x100000, 0x10, 0x10)], e_type=4), "is an ELF core"),
    (ElfSpec(loads=[Load(0x100000, 0x10, 0x10)], e_type=1), "is ET_REL"),
    (ElfSpec(loads=[Load(0x100000, 0x10, 0x10)], bits=32, machine=3),
     "is an ELF32 EM_386 kernel"),
    (ElfSpec(loads=[Load(0x100000, 0x10, 0x10)], machine=183), "EM_AARCH64"),
    (ElfSpec(loads=[]), "has no PT_LOAD"),
    (ElfSpec(loads=[Load(0, 0x10, 0x10)], entry=0), "every PT_LOAD has p_paddr 0"),
])
def test_check_kernel(spec: ElfSpec, words: str) -> None:
    img = elf.parse(make_elf(spec), "k")
    with pytest.raises(FormatError) as e:
        elf.check_kernel(img)
    assert words in e.value.message and e.value.hint


def test_elf32_x86_64_kernel_is_accepted() -> None:
    img = elf.parse(make_elf(ElfSpec(loads=[Load(0x1000000, 0x10, 0x10)], bits=32)), "k")
    elf.check_kernel(img)


def test_virtual_entry_is_translated() -> None:
    spec = vmlinux_spec()
    spec.entry = 0xFFFFFFFF81000100
    img = elf.parse(make_elf(spec), "k")
    assert img.physical_entry() == 0x1000100
    spec.entry = 0x5000000
    with pytest.raises(FormatError, match="lies in no PT_LOAD"):
        elf.parse(make_elf(spec), "k").physical_entry()


@pytest.mark.parametrize("bits", [64, 32])
def test_pn_xnum_count_comes_from_section_0(bits: int) -> None:
    loads = [Load(0x100000 + 0x2000 * i, 0x1000, 0x1000) for i in range(5)]
    img = elf.parse(make_elf(ElfSpec(loads=loads, bits=bits, e_type=4, xnum=True)), "core")
    assert img.header["phnum"] == 5 and len(img.loads) == 5
    assert [s.mem for s in elf.load_segments(img)] == [p.paddr for p in loads]


def test_header_table_and_notes() -> None:
    spec = vmlinux_spec()
    spec.notes = 1
    img = elf.parse(make_elf(spec), "k")
    names = [r["name"] for r in elf.header_table(img)]
    assert names[:4] == ["class", "data", "type", "machine"]
    assert len(img.phdrs) == 5 and len(img.loads) == 4


# --- tools/extract_vmlinux.py --------------------------------------------------------


def _bz_with_payload(blob: bytes) -> bytes:
    from kernelgen import make_bzimage

    img = bytearray(make_bzimage(payload_size=0x200 + len(blob) + 0x10))
    setup = 5 * 512
    img[setup + 0x100:setup + 0x100 + len(blob)] = blob
    struct.pack_into("<II", img, 0x248, 0x100, len(blob))
    return bytes(img)


@pytest.mark.parametrize("how", ["gzip", "xz", "bzip2"])
def test_extract_vmlinux(how: str) -> None:
    import bz2
    import gzip
    import lzma
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import extract_vmlinux as ev

    vmlinux = make_elf(vmlinux_spec())
    pack = {"gzip": gzip.compress, "xz": lambda d: lzma.compress(d, lzma.FORMAT_XZ),
            "bzip2": bz2.compress}[how]
    out, found = ev.extract(_bz_with_payload(pack(vmlinux)))
    assert (out, found) == (vmlinux, how)
    elf.load_segments(elf.parse(out, "x"))  # and it is a loadable vmlinux


def test_extract_vmlinux_errors(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import extract_vmlinux as ev

    with pytest.raises(ev.ExtractError, match="not a bzImage"):
        ev.extract(b"\x7fELF" + bytes(4000))
    with pytest.raises(ev.ExtractError, match="cannot decompress zstd"):
        ev.extract(_bz_with_payload(b"\x28\xb5\x2f\xfd" + bytes(64)))
    with pytest.raises(ev.ExtractError, match="unknown compression"):
        ev.extract(_bz_with_payload(b"nothing here"))
    src = tmp_path / "bz"
    src.write_bytes(_bz_with_payload(b"\x1f\x8b\x08" + bytes(64)))
    assert ev.main([str(src), str(tmp_path / "out")]) == 1
    assert ev.main([]) == 2

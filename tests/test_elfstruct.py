"""The ELF structure declarations (formats/elfstruct.py) and the note
encoder and walker (formats/notes.py)."""

from __future__ import annotations

import io
import struct

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given
from hypothesis import strategies as st

from kexec_py.errors import FormatError
from kexec_py.formats import elfstruct as es
from kexec_py.formats.notes import Note, iter_notes, kept_size, note_bytes, parse_notes

ALL = sorted(es.LAYOUTS)
IDS = [f"ELF{32 if c == es.ELFCLASS32 else 64}{'LE' if le else 'BE'}" for c, le in ALL]

#: the gABI's formats, written out independently of elfstruct's table
REFERENCE = {
    es.ELFCLASS32: {"ehdr": "16sHHIIIIIHHHHHH", "phdr": "IIIIIIII", "shdr": "IIIIIIIIII",
                    "nhdr": "III"},
    es.ELFCLASS64: {"ehdr": "16sHHIQQQIHHHHHH", "phdr": "IIQQQQQQ", "shdr": "IIQQQQIIQQ",
                    "nhdr": "III"},
}
SIZES = {es.ELFCLASS32: {"ehdr": 52, "phdr": 32, "shdr": 40, "nhdr": 12},
         es.ELFCLASS64: {"ehdr": 64, "phdr": 56, "shdr": 64, "nhdr": 12}}
#: offsets the hand-written readers used before elfstruct existed
OFFSETS = {es.ELFCLASS32: {("ehdr", "e_type"): 16, ("ehdr", "e_phoff"): 28,
                           ("ehdr", "e_phentsize"): 42, ("ehdr", "e_phnum"): 44,
                           ("phdr", "p_offset"): 4, ("phdr", "p_flags"): 24,
                           ("shdr", "sh_info"): 28},
           es.ELFCLASS64: {("ehdr", "e_type"): 16, ("ehdr", "e_phoff"): 32,
                           ("ehdr", "e_phentsize"): 54, ("ehdr", "e_phnum"): 56,
                           ("phdr", "p_offset"): 8, ("phdr", "p_flags"): 4,
                           ("shdr", "sh_info"): 44}}
KINDS = ("ehdr", "phdr", "shdr", "nhdr")


def _sample(s: es.ElfStruct) -> dict[str, object]:
    """Distinct values that fill each field's width (so a wrong offset,
    size or byte order shows)."""
    out: dict[str, object] = {}
    for i, f in enumerate(s.fields):
        code = s.code(f)
        if code.endswith("s"):
            out[f] = bytes(range(1, int(code[:-1]) + 1))
        else:
            width = struct.calcsize(code)
            out[f] = int.from_bytes(bytes((i * 16 + k + 1) & 0xFF for k in range(width)),
                                    "big")
    return out


@pytest.mark.parametrize("key", ALL, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_struct_round_trips(key: tuple[int, bool], kind: str) -> None:
    cls, little = key
    lay = es.layout(cls, little)
    s: es.ElfStruct = getattr(lay, kind)
    e = "<" if little else ">"
    assert s.size == SIZES[cls][kind] == struct.calcsize(e + REFERENCE[cls][kind])
    assert s.endian == e and s.name.startswith(f"Elf{lay.bits}_")
    values = _sample(s)
    packed = s.pack_fields(**values)
    # the same bytes as the reference format, field by field in spec order
    assert packed == struct.pack(e + REFERENCE[cls][kind], *values.values())
    assert packed == s.pack(*(values[f] for f in s.fields))
    assert s.as_dict(packed) == values
    assert dict(zip(s.fields, s.unpack_from(packed), strict=True)) == values
    # single fields, at an offset into a larger buffer
    buf = bytearray(7 + s.size)
    for f, v in values.items():
        s.put(buf, f, v, at=7)
    assert bytes(buf[7:]) == packed
    for f, v in values.items():
        assert s.get(buf, f, at=7) == v
        assert s.end(f) == s.offset(f) + struct.calcsize(s.code(f))
        assert s.index(f) == s.fields.index(f)
    assert [t for t in s.iter_unpack(packed * 3)] == [s.unpack_from(packed)] * 3


@pytest.mark.parametrize("key", ALL, ids=IDS)
def test_offsets_the_readers_rely_on(key: tuple[int, bool]) -> None:
    cls, little = key
    lay = es.layout(cls, little)
    for (kind, f), off in OFFSETS[cls].items():
        assert getattr(lay, kind).offset(f) == off, (kind, f)
    # vmcore.read_phdrs decodes columns as strided array slices: every
    # program-header field must sit at a multiple of its own size
    ph = lay.phdr
    for f in ph.fields:
        width = struct.calcsize(ph.code(f))
        assert ph.code(f) in ("I", "Q") and ph.offset(f) % width == 0 and ph.size % width == 0


def test_program_header_field_order_differs_by_class() -> None:
    p64 = es.layout(es.ELFCLASS64, True).phdr.fields
    p32 = es.layout(es.ELFCLASS32, True).phdr.fields
    assert p64[:2] == ("p_type", "p_flags") and p32[6] == "p_flags"
    assert sorted(p64) == sorted(p32)


@pytest.mark.parametrize("key", ALL, ids=IDS)
def test_ident_and_a_header_pyelftools_agrees_with(key: tuple[int, bool]) -> None:
    cls, little = key
    lay = es.layout(cls, little)
    ident = lay.ident()
    assert len(ident) == es.EI_NIDENT and ident[:4] == es.ELFMAG
    assert ident[es.EI_CLASS] == cls and ident[es.EI_VERSION] == es.EV_CURRENT
    assert ident[es.EI_DATA] == (es.ELFDATA2LSB if little else es.ELFDATA2MSB)
    assert ident[es.EI_OSABI:] == bytes(es.EI_NIDENT - es.EI_OSABI)
    eh, ph = lay.ehdr, lay.phdr
    head = eh.pack_fields(e_ident=ident, e_type=es.ET_CORE, e_machine=es.EM_X86_64,
                          e_version=es.EV_CURRENT, e_phoff=eh.size, e_ehsize=eh.size,
                          e_phentsize=ph.size, e_phnum=2)
    load = ph.pack_fields(p_type=es.PT_LOAD, p_flags=es.PF_R | es.PF_W, p_offset=0x1000,
                          p_vaddr=0x7000, p_paddr=0x5000, p_filesz=0x10, p_memsz=0x2000,
                          p_align=0x1000)
    note = ph.pack_fields(p_type=es.PT_NOTE, p_offset=0x800, p_filesz=0x14, p_memsz=0x14)
    ef = ELFFile(io.BytesIO(head + load + note + bytes(0x1010)))
    assert (ef.elfclass, ef.little_endian) == (lay.bits, little)
    assert ef.header["e_type"] == "ET_CORE" and ef.header["e_phnum"] == 2
    seg = ef.get_segment(0).header
    assert (seg.p_type, seg.p_flags, seg.p_offset, seg.p_vaddr, seg.p_paddr, seg.p_filesz,
            seg.p_memsz, seg.p_align) == ("PT_LOAD", 6, 0x1000, 0x7000, 0x5000, 0x10,
                                          0x2000, 0x1000)
    assert ef.get_segment(1).header.p_type == "PT_NOTE"


def test_writers_layout_and_lookup() -> None:
    assert es.ELF64LE is es.LAYOUTS[(es.ELFCLASS64, True)] is es.layout(es.ELFCLASS64, True)
    assert es.ELF64LE.ident() == b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    assert len(es.LAYOUTS) == 4
    with pytest.raises(KeyError):
        es.layout(3, True)
    with pytest.raises(TypeError, match="p_bogus"):
        es.ELF64LE.phdr.pack_fields(p_bogus=1)
    assert es.ELF64LE.shdr.pack_fields() == bytes(64)
    assert es.ET_NAMES[es.ET_CORE] == "ET_CORE" and es.PN_XNUM == 0xFFFF


@pytest.mark.parametrize("key", ALL, ids=IDS)
@pytest.mark.parametrize("phnum", [1, 0xFFFE, es.PN_XNUM, 70000])
def test_core_ehdr(key: tuple[int, bool], phnum: int) -> None:
    lay = es.layout(*key)
    eh, ph, sh = lay.ehdr, lay.phdr, lay.shdr
    got = eh.as_dict(lay.core_ehdr(es.EM_AARCH64, phnum))
    xnum = phnum >= es.PN_XNUM
    assert got == {"e_ident": lay.ident(), "e_type": es.ET_CORE, "e_machine": es.EM_AARCH64,
                   "e_version": es.EV_CURRENT, "e_entry": 0, "e_phoff": eh.size,
                   "e_shoff": eh.size + ph.size * phnum if xnum else 0, "e_flags": 0,
                   "e_ehsize": eh.size, "e_phentsize": ph.size,
                   "e_phnum": es.PN_XNUM if xnum else phnum,
                   "e_shentsize": sh.size if xnum else 0, "e_shnum": 1 if xnum else 0,
                   "e_shstrndx": 0}


# --- notes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("little", [True, False], ids=["LE", "BE"])
@pytest.mark.parametrize("name", ["", "A", "CORE", "LINUX", "KEXEC_PY", "VMCOREINFO"])
@pytest.mark.parametrize("desc_len", [0, 1, 3, 4, 5, 8])
def test_note_padding(little: bool, name: str, desc_len: int) -> None:
    desc = bytes(range(1, desc_len + 1))
    n = note_bytes(name, 7, desc, little)
    e = "<" if little else ">"
    namesz = len(name) + 1
    assert struct.unpack_from(e + "III", n) == (namesz, desc_len, 7)
    name_pad = (namesz + 3) & ~3
    desc_pad = (desc_len + 3) & ~3
    assert len(n) == 12 + name_pad + desc_pad
    assert n[12:12 + name_pad] == name.encode() + bytes(name_pad - len(name))
    assert n[12 + name_pad:] == desc + bytes(desc_pad - desc_len)
    assert note_bytes(name.encode(), 7, desc, little) == n
    (entry,) = iter_notes(n, little)
    assert (entry.offset, entry.namesz, entry.descsz, entry.type) == (0, namesz, desc_len, 7)
    assert entry.name_offset == 12 and entry.desc_offset == 12 + name_pad
    assert entry.end == len(n)
    assert parse_notes(n, little, "t") == [Note(name, 7, desc)]
    assert kept_size(n, little) == len(n)


_names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)


@given(st.lists(st.tuples(_names, st.integers(0, 2**32 - 1), st.binary(max_size=40)),
                max_size=6), st.booleans())
def test_notes_round_trip(notes: list[tuple[str, int, bytes]], little: bool) -> None:
    area = b"".join(note_bytes(n, t, d, little) for n, t, d in notes)
    assert parse_notes(area, little, "t") == [Note(n, t, d) for n, t, d in notes]
    assert kept_size(area, little) == len(area)
    assert [e.offset for e in iter_notes(area, little)] == \
        [len(b"".join(note_bytes(n, t, d, little) for n, t, d in notes[:k]))
         for k in range(len(notes))]


@pytest.mark.parametrize("little", [True, False], ids=["LE", "BE"])
def test_zero_namesz_ends_the_area(little: bool) -> None:
    first = note_bytes("CORE", 1, b"abcd", little)
    after = note_bytes("LATE", 2, b"efgh", little)
    area = first + bytes(12) + after
    assert parse_notes(area, little, "t") == [Note("CORE", 1, b"abcd")]
    assert kept_size(area, little) == len(first)
    assert [e.type for e in iter_notes(area, little)] == [1]
    # a terminator with a descriptor size still ends it; so does a lone one
    end = struct.pack("<III" if little else ">III", 0, 8, 9)
    assert parse_notes(first + end + after, little, "t") == [Note("CORE", 1, b"abcd")]
    assert parse_notes(bytes(12), little, "t") == [] and kept_size(bytes(12), little) == 0


def test_short_tail_and_overrun() -> None:
    n = note_bytes("CORE", 1, b"abcde")
    # fewer than 12 bytes left: not a note, the walk ends
    assert parse_notes(n + bytes(11), True, "t") == [Note("CORE", 1, b"abcde")]
    assert kept_size(n + bytes(11), True) == len(n)
    # the descriptor itself runs past the area: an error for the parser,
    # the end of what the kernel keeps
    cut = n[:-4]
    with pytest.raises(FormatError, match=r"t: note 0 \(n_namesz 5, n_descsz 5\) runs past"):
        parse_notes(cut, True, "t")
    assert kept_size(cut, True) == 0
    # only the descriptor's padding is missing: the parser takes the note,
    # the kernel's rule does not keep it
    unpadded = n[:-3]
    assert parse_notes(unpadded, True, "t") == [Note("CORE", 1, b"abcde")]
    assert kept_size(unpadded, True) == 0
    assert kept_size(n + unpadded, True) == len(n)


def test_layout_named_by_reads_class_and_byte_order_leniently() -> None:
    for cls in (es.ELFCLASS32, es.ELFCLASS64):
        for little, data in ((True, es.ELFDATA2LSB), (False, es.ELFDATA2MSB)):
            ident = es.ELFMAG + bytes([cls, data])
            assert es.layout_named_by(ident) is es.layout(cls, little)
    # what the parsers refuse still names a layout to read the header with
    assert es.layout_named_by(es.ELFMAG + bytes([7, 9])) is es.layout(es.ELFCLASS32, True)

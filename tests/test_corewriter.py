"""The streaming ELF core writer, read back with pyelftools and with the
project's own hibernation-image reader."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from kexec_py.formats.corewriter import CoreLoad, write_core
from kexec_py.formats.elfstruct import PN_XNUM
from kexec_py.formats.notes import note_bytes
from kexec_py.formats.vmcore import open_core


def chunks_of(pieces: list[tuple[int, bytes]]):  # type: ignore[no-untyped-def]
    def gen() -> Iterator[tuple[int, bytes]]:
        yield from pieces
    return gen


def sample_loads() -> list[CoreLoad]:
    return [
        CoreLoad(0x1000, 0x3000, chunks_of([(0, b"first"), (0x2000, b"third page")])),
        CoreLoad(0x100000, 0x200000, chunks_of([(0x1FF000, b"E" * 0x1000)])),
        CoreLoad(0x400000, 0x2000, chunks_of([(0, b"partial")]), filesz=0x1000),
    ]


def expected(load: CoreLoad) -> bytes:
    size = load.size if load.filesz is None else load.filesz
    buf = bytearray(size)
    for off, data in load.chunks():
        buf[off:off + len(data)] = data
    return bytes(buf)


def test_loads_and_notes_read_back_with_pyelftools(tmp_path: Path) -> None:
    out = tmp_path / "core"
    loads = sample_loads()
    stats = write_core(out, loads, [("CORE", 1, b"prstatus!"), ("KPY", 7, b"")])
    assert stats.file_size == out.stat().st_size and stats.loads == 3
    assert stats.data_bytes == 5 + 10 + 0x1000 + 7
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64"
        assert elf.elfclass == 64 and elf.little_endian
        segs = list(elf.iter_segments())
        assert [s["p_type"] for s in segs] == ["PT_NOTE", "PT_LOAD", "PT_LOAD", "PT_LOAD"]
        notes = list(segs[0].iter_notes())
        assert [(n["n_name"], n["n_type"], n["n_descsz"]) for n in notes] == [
            ("CORE", "NT_PRSTATUS", 9), ("KPY", 7, 0)]
        for seg, ld in zip(segs[1:], loads, strict=True):
            assert seg["p_paddr"] == ld.paddr and seg["p_memsz"] == ld.size
            assert seg["p_offset"] % 4096 == 0
            assert seg.data() == expected(ld)
    # the gaps are holes: 2 MiB of load, a few KiB on disk
    assert out.stat().st_blocks * 512 < 64 * 1024


def test_the_projects_image_reader_agrees(tmp_path: Path) -> None:
    out = tmp_path / "core"
    loads = sample_loads()
    write_core(out, loads, [("KEXEC_PY", 1, struct.pack("<Q", 0x1234))])
    img = open_core(out)
    try:
        runs = sorted((r.paddr, r.filesz, r.memsz) for r in img.loads)
        assert runs == [(0x1000, 0x3000, 0x3000), (0x100000, 0x200000, 0x200000),
                        (0x400000, 0x1000, 0x2000)]
        note = img.find_note("KEXEC_PY", 1)
        assert note is not None and bytes(note.desc) == struct.pack("<Q", 0x1234)
    finally:
        img.close()


class Pipe(io.RawIOBase):
    """A write-only, non-seekable sink (like a pipe)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        self.buf += bytes(b)
        return len(b)


def test_a_stream_that_cannot_seek_gets_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "core"
    write_core(out, sample_loads(), [("N", 2, b"x")])
    pipe = Pipe()
    stats = write_core(pipe, sample_loads(), [("N", 2, b"x")])  # type: ignore[arg-type]
    assert bytes(pipe.buf) == out.read_bytes() and stats.file_size == len(pipe.buf)


def test_writes_from_the_current_position_of_an_open_file(tmp_path: Path) -> None:
    out = tmp_path / "core"
    with open(out, "wb") as f:
        f.write(b"prefix")
        write_core(f, sample_loads())
    data = out.read_bytes()
    ref = tmp_path / "ref"
    write_core(ref, sample_loads())
    assert data[6:] == ref.read_bytes()


def test_more_than_65534_program_headers_use_pn_xnum(tmp_path: Path) -> None:
    n = 70000
    loads = [CoreLoad(i * 0x1000, 16, chunks_of([(0, struct.pack("<QQ", i, ~i & 0xFFFF))]))
             for i in range(n)]
    out = tmp_path / "big"
    write_core(out, loads, data_align=16)
    head = out.read_bytes()[:64]
    e_shoff, = struct.unpack_from("<Q", head, 0x28)
    e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHH", head, 0x38)
    assert e_phnum == PN_XNUM and e_shentsize == 64 and e_shnum == 1
    sh_info, = struct.unpack_from("<I", out.read_bytes(), e_shoff + 44)
    assert sh_info == n
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert elf.num_segments() == n
        last = elf.get_segment(n - 1)
        assert last["p_paddr"] == (n - 1) * 0x1000 and last.data()[:8] == struct.pack("<Q",
                                                                                      n - 1)
    img = open_core(out)
    try:
        assert img.phdr_count == n
    finally:
        img.close()


def test_bad_loads_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="filesz"):
        write_core(tmp_path / "a", [CoreLoad(0, 0x1000, chunks_of([]), filesz=0x2000)])
    with pytest.raises(ValueError, match="out of order"):
        write_core(tmp_path / "b", [CoreLoad(0, 0x1000, chunks_of([(8, b"x"), (0, b"y")]))])
    with pytest.raises(ValueError, match="outside"):
        write_core(tmp_path / "c", [CoreLoad(0, 0x1000, chunks_of([(0xFFF, b"xy")]))])


def test_note_layout() -> None:
    n = note_bytes("CORE", 1, b"abcde")
    assert struct.unpack_from("<III", n) == (5, 5, 1)
    assert n[12:20] == b"CORE\0\0\0\0" and n[20:28] == b"abcde\0\0\0" and len(n) == 28

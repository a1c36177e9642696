"""Kexec-based hibernation: the hibernating kernel's /proc/vmcore, saving
it as an image, and the plan of a resume.

``/proc/vmcore`` of a kernel booted with ``elfcorehdr=<size>@<addr>`` is
built by the kernel from that header (fs/proc/vmcore.c, 6.1):
:class:`VmcoreView` builds the same file from any physical-memory reader
(the model's memory, in the demo and the tests), so that ``save-image`` and
the checks read exactly what a stock kernel would show:

- the ELF header and program headers are read from physical memory at
  ``addr``; every PT_NOTE's notes are read from physical memory at its
  ``p_offset``, cut at the first note with ``n_namesz == 0``, and merged
  into one PT_NOTE that comes first, at ``roundup(ehdr + phnum * phentsize,
  PAGE_SIZE)``;
- the PT_LOADs follow in header order: each covers ``[rounddown(p_offset),
  roundup(p_offset + p_memsz))`` of physical memory, placed one after the
  other from ``elfsz + roundup(notes, PAGE_SIZE)``, its ``p_offset``
  rewritten to the file offset of ``p_paddr``'s data.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kexec_py.abi import PAGE_SIZE
from kexec_py.errors import FormatError, KexecError
from kexec_py.formats.vmcore import (
    ELFCLASS64,
    PT_LOAD,
    PT_NOTE,
    ElfHeader,
    Note,
    parse_header,
    parse_notes,
    read_phdrs,
)

#: a reader of physical memory: ``read(addr, size) -> bytes``
PhysReader = Callable[[int, int], bytes]


def _up(x: int) -> int:
    return (x + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _down(x: int) -> int:
    return x & ~(PAGE_SIZE - 1)


class Source(Protocol):
    """What save-image reads: a size and positioned reads."""

    name: str
    size: int

    def read(self, offset: int, size: int) -> bytes: ...


@dataclass
class _Chunk:
    offset: int  # file offset in /proc/vmcore
    size: int
    paddr: int  # physical address of the data


class VmcoreView:
    """``/proc/vmcore`` of a kernel booted with ``elfcorehdr=size@addr``,
    built from ``read_phys`` as a stock kernel builds it.

    Accessible attributes: ``name``, ``size`` (bytes of the file),
    ``header`` (the rewritten ELF header and program headers, with the merged
    note segment after them: everything before the first PT_LOAD's data).
    """

    def __init__(self, read_phys: PhysReader, addr: int, hdr_size: int,
                 name: str = "/proc/vmcore") -> None:
        self.name = name
        self._read = read_phys
        head = read_phys(addr, max(hdr_size, 64))
        h = parse_header(head, len(head), f"elfcorehdr at {addr:#x}")
        if h.phoff != (64 if h.elfclass == ELFCLASS64 else 52):
            raise FormatError(f"elfcorehdr at {addr:#x}: program headers at {h.phoff:#x}, "
                              "not right after the ELF header", "the header is corrupt")
        cols = read_phdrs(head, h)
        notes = bytearray()
        others: list[int] = []
        for i, t in enumerate(cols.type):
            if t == PT_NOTE:
                raw = read_phys(cols.offset[i], cols.memsz[i])
                notes += raw[:_real_note_size(raw, h.little)]
            else:
                others.append(i)
        phnum = len(others) + 1
        elfsz = _up(h.phoff + phnum * h.phentsize)
        notes_sz = _up(len(notes))
        out = bytearray(elfsz)
        out[:h.phoff] = head[:h.phoff]
        e = h.endian
        phnum_off = 56 if h.elfclass == ELFCLASS64 else 44
        struct.pack_into(e + "H", out, phnum_off, phnum)
        pos = h.phoff
        if h.elfclass == ELFCLASS64:
            struct.pack_into(e + "IIQQQQQQ", out, pos, PT_NOTE, 0, elfsz, 0, 0, len(notes),
                             len(notes), 4)
        else:
            struct.pack_into(e + "IIIIIIII", out, pos, PT_NOTE, elfsz, 0, 0, len(notes),
                             len(notes), 0, 4)
        pos += h.phentsize
        self.chunks: list[_Chunk] = []
        off = elfsz + notes_sz
        for i in others:
            raw_ph = bytearray(head[h.phoff + i * h.phentsize:h.phoff + (i + 1) * h.phentsize])
            if cols.type[i] == PT_LOAD:
                p = cols.offset[i]
                start, end = _down(p), _up(p + cols.memsz[i])
                self.chunks.append(_Chunk(off, end - start, start))
                new_off = off + (p - start)
                if h.elfclass == ELFCLASS64:
                    struct.pack_into(e + "Q", raw_ph, 8, new_off)
                else:
                    struct.pack_into(e + "I", raw_ph, 4, new_off)
                off += end - start
            out[pos:pos + h.phentsize] = raw_ph
            pos += h.phentsize
        self.elf = h
        self.header = bytes(out) + bytes(notes) + bytes(notes_sz - len(notes))
        self.data_start = elfsz + notes_sz
        self.size = off
        self._starts = [c.offset for c in self.chunks]

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the file (short at the end)."""
        size = max(0, min(size, self.size - offset))
        out = bytearray()
        while size > 0:
            if offset < self.data_start:
                n = min(size, self.data_start - offset)
                out += self.header[offset:offset + n]
            else:
                k = bisect_right(self._starts, offset) - 1
                c = self.chunks[k]
                n = min(size, c.offset + c.size - offset)
                out += self._read(c.paddr + offset - c.offset, n)
            offset += n
            size -= n
        return bytes(out)


def _real_note_size(raw: bytes, little: bool) -> int:
    """The size the kernel keeps of a PT_NOTE: notes up to the first with
    ``n_namesz == 0`` or the first that would run past ``p_memsz``."""
    e = "<" if little else ">"
    pos = 0
    while pos + 12 <= len(raw):
        namesz, descsz, _ = struct.unpack_from(e + "III", raw, pos)
        if namesz == 0:
            break
        sz = 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
        if pos + sz > len(raw):
            break
        pos += sz
    return pos


class FileSource:
    """A file read with pread: a saved image, or the real /proc/vmcore
    (which must not be mmap'd blindly: it maps the old kernel's memory)."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KexecError(f"{path} does not exist",
                             "/proc/vmcore exists only in a kernel booted with elfcorehdr= "
                             "(the hibernating kernel of 'kexec-py load --load-preserve-context "
                             "--staged')") from None
        except OSError as e:
            raise KexecError(f"cannot open {path}: {e.strerror}", "run as root") from None
        self.size = os.fstat(self._fd).st_size
        if self.size == 0:
            # /proc/vmcore reports its size in st_size; 0 means nothing to read
            self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def read(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self._fd, size, offset)
        except OSError as e:
            raise KexecError(f"cannot read {self.name} at {offset:#x}: {e.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)


# --- reading a core through a Source --------------------------------------------------


@dataclass
class CoreLayout:
    """The parts of a core that save-image copies: its header, notes and
    PT_LOADs as ``(paddr, offset, filesz, memsz)``."""

    elf: ElfHeader
    notes: list[Note]
    notes_raw: bytes
    loads: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return sum(f for _, _, f, _ in self.loads)


def read_layout(src: Source) -> CoreLayout:
    """Header, notes and PT_LOAD table of the core in ``src``."""
    first = src.read(0, 64)
    if len(first) < 52 or first[:4] != b"\x7fELF":
        parse_header(first, len(first), src.name)  # raises with the reason
    is64 = first[4] == ELFCLASS64
    e = ">" if first[5] == 2 else "<"
    if is64:
        phoff, shoff = struct.unpack_from(e + "QQ", first, 32)
        phentsize, phnum, shentsize = struct.unpack_from(e + "HHH", first, 54)
    else:
        phoff, shoff = struct.unpack_from(e + "II", first, 28)
        phentsize, phnum, shentsize = struct.unpack_from(e + "HHH", first, 42)
    end = phoff + (phnum if phnum != 0xFFFF else 0) * phentsize
    if phnum == 0xFFFF and shoff:
        sh = src.read(shoff, shentsize)
        count = struct.unpack_from(e + "I", sh, 44 if is64 else 28)[0] if len(sh) >= 48 \
            or (not is64 and len(sh) >= 32) else 0
        end = max(phoff + count * phentsize, shoff + shentsize)
    head = src.read(0, max(end, len(first)))
    h = parse_header(head, len(head), src.name)
    cols = read_phdrs(head, h)
    notes_raw = bytearray()
    loads: list[tuple[int, int, int, int]] = []
    for i, t in enumerate(cols.type):
        if t == PT_NOTE:
            raw = src.read(cols.offset[i], cols.filesz[i])
            notes_raw += raw[:_real_note_size(raw, h.little)]
        elif t == PT_LOAD and cols.memsz[i]:
            if cols.filesz[i] > cols.memsz[i] or cols.offset[i] + cols.filesz[i] > src.size:
                raise FormatError(f"{src.name}: PT_LOAD {i} at {cols.paddr[i]:#x} has data "
                                  "beyond the end of the file", "the core is truncated")
            loads.append((cols.paddr[i], cols.offset[i], cols.filesz[i], cols.memsz[i]))
    notes = parse_notes(bytes(notes_raw), h.little, src.name)
    return CoreLayout(h, notes, bytes(notes_raw), loads)


def iter_chunks(total: int, chunk: int) -> Iterator[tuple[int, int]]:
    for off in range(0, total, chunk):
        yield off, min(chunk, total - off)

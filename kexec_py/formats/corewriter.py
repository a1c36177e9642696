"""A streaming writer of ELF64 core files (ET_CORE), the format of
``/proc/vmcore``: PT_NOTE, then one PT_LOAD per memory run with
``p_paddr`` = physical address, ``p_offset`` = where its bytes are in the
file, ``p_filesz <= p_memsz`` (the tail is zero).

Layout written::

    Elf64_Ehdr                      64 bytes
    Elf64_Phdr[PT_NOTE + loads]     56 bytes each
    Elf64_Shdr (only with more than 65534 program headers: e_phnum is
                PN_XNUM and the real count is in section 0's sh_info)
    notes                           Elf64_Nhdr + name + desc, 4-byte aligned
                                    (formats/notes.py)
    load data                       each load at an offset aligned to
                                    ``data_align`` (a page), back to back

It streams: nothing is held in memory but the headers and one chunk.  It
is sparse-aware: each load's ``chunks()`` yields only the pieces that hold
data; the gaps become holes in the file (a seek) and read as zeros, so a
mostly-empty 4 GiB memory image costs what it holds.  On an output that
cannot seek (a pipe) the gaps are written as zeros.

The structures are :data:`kexec_py.formats.elfstruct.ELF64LE`'s.

The API is general (``kexec-py dump-memory`` and saving hibernation images
use it; a path is written mode 0600, atomically, never through a symlink)::

    write_core(path_or_file, [CoreLoad(paddr, size, chunks), ...],
               notes=[(name, type, desc), ...])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.formats.elfstruct import (
    ELF64LE,
    EM_X86_64,
    PF_R,
    PF_W,
    PF_X,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    SHT_NULL,
)
from kexec_py.formats.notes import note_bytes
from kexec_py.safefile import private_output
from kexec_py.segments import Buffer

_ZEROS = bytes(1 << 20)


@dataclass(frozen=True)
class CoreLoad:
    """One PT_LOAD.

    ``paddr``: physical address; ``size``: ``p_memsz``; ``filesz``: bytes of
    it in the file (default: all of it); ``chunks()``: yields ``(offset,
    data)`` with offsets increasing, inside ``[0, filesz)``, not
    overlapping -- everything it leaves out is zero; ``vaddr``: ``p_vaddr``
    (0 when the memory has no kernel virtual address); ``flags``: PF_*.
    """

    paddr: int
    size: int
    chunks: Callable[[], Iterable[tuple[int, Buffer]]]
    filesz: int | None = None
    vaddr: int = 0
    flags: int = PF_R | PF_W | PF_X


@dataclass(frozen=True)
class CoreStats:
    """What :func:`write_core` wrote: the file size, how many bytes of data
    it actually wrote (the rest are holes), and the number of PT_LOADs."""

    file_size: int
    data_bytes: int
    loads: int


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class _Out:
    """Writes at increasing offsets; seeks over gaps when it can."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        try:
            self.seekable = f.seekable()
        except (AttributeError, OSError):
            self.seekable = False
        self.pos = f.tell() if self.seekable else 0
        self.base = self.pos
        self.data = 0

    def at(self, offset: int) -> None:
        target = self.base + offset
        if target < self.pos:
            raise ValueError(f"chunk at file offset {offset:#x} goes backwards")
        if target == self.pos:
            return
        if self.seekable:
            self.f.seek(target)
        else:
            gap = target - self.pos
            while gap:
                n = min(gap, len(_ZEROS))
                self.f.write(_ZEROS[:n])
                gap -= n
        self.pos = target

    def write(self, data: Buffer) -> None:
        self.f.write(data)
        self.pos += len(data)


def write_core(dest: str | os.PathLike[str] | BinaryIO, loads: Iterable[CoreLoad],
               notes: Sequence[tuple[bytes | str, int, bytes]] = (), *,
               machine: int = EM_X86_64, data_align: int = PAGE_SIZE) -> CoreStats:
    """Write an ELF64 little-endian core file to ``dest`` (a path, or a
    binary file open for writing, written from its current position).

    A path is written privately and atomically
    (:func:`kexec_py.safefile.private_output`: mode 0600, ``dest.part``,
    fsync, rename, never through a symlink); its errors are
    :class:`~kexec_py.errors.KexecError`.

    Pre-conditions: ``filesz <= size`` for every load; each load's chunks
    are in order and inside it.  Post-condition: reading the file with any
    ELF reader gives every load's bytes at ``p_offset`` (zeros where its
    chunks left gaps) and the notes in one PT_NOTE.
    """
    eh, ph, sh = ELF64LE.ehdr, ELF64LE.phdr, ELF64LE.shdr
    items = list(loads)
    note_blob = b"".join(note_bytes(n, t, d) for n, t, d in notes)
    phnum = len(items) + (1 if note_blob else 0)
    extnum = phnum >= PN_XNUM
    # the ELF header, the program headers, section header 0 (extended
    # numbering: ELF64LE.core_ehdr points at it), the notes, the data
    note_off = eh.size + ph.size * phnum + (sh.size if extnum else 0)
    cur = note_off + len(note_blob)
    offsets: list[int] = []
    for ld in items:
        fs = ld.size if ld.filesz is None else ld.filesz
        if fs > ld.size or fs < 0:
            raise ValueError(f"PT_LOAD at {ld.paddr:#x}: filesz {fs:#x} > memsz {ld.size:#x}")
        cur = _align(cur, data_align)
        offsets.append(cur)
        cur += fs
    total = cur

    head = [ELF64LE.core_ehdr(machine, phnum)]
    if note_blob:
        head.append(ph.pack(PT_NOTE, 0, note_off, 0, 0, len(note_blob), len(note_blob), 0))
    pack = ph.pack
    for ld, off in zip(items, offsets, strict=True):
        fs = ld.size if ld.filesz is None else ld.filesz
        head.append(pack(PT_LOAD, ld.flags, off, ld.vaddr, ld.paddr, fs, ld.size, 0))
    if extnum:
        head.append(sh.pack(0, SHT_NULL, 0, 0, 0, 1, 0, phnum, 0, 0))
    head.append(note_blob)

    def stream(f: BinaryIO) -> CoreStats:
        out = _Out(f)
        for h in head:
            out.write(h)
        out.data = 0
        for ld, off in zip(items, offsets, strict=True):
            fs = ld.size if ld.filesz is None else ld.filesz
            last = 0
            for rel, data in ld.chunks():
                n = len(data)
                if rel < last or rel + n > fs:
                    raise ValueError(f"PT_LOAD at {ld.paddr:#x}: chunk [{rel:#x}, "
                                     f"{rel + n:#x}) is out of order or outside "
                                     f"[0, {fs:#x})")
                if n:
                    out.at(off + rel)
                    out.write(data)
                    out.data += n
                last = rel + n
        out.at(total)
        if out.seekable:
            f.truncate(out.base + total)
        return CoreStats(total, out.data, len(items))

    if isinstance(dest, (str, os.PathLike)):
        with private_output(Path(dest)) as f:
            return stream(f)
    return stream(dest)

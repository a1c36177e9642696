"""``save-image``: a core (``/proc/vmcore``, a file, the model's view)
streamed to a hibernation image with kexec-py's jump-back note,
page-filtered."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.errors import FormatError, KexecError
from kexec_py.formats.elfstruct import (
    ELF64LE,
    ELFCLASS32,
    ELFMAG,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    layout,
    layout_named_by,
)
from kexec_py.formats.notes import Note, kept_size, parse_notes
from kexec_py.formats.vmcore import (
    KEXEC_PY_NOTE,
    NT_KEXEC_PY_JUMP_BACK,
    ElfHeader,
    parse_header,
    read_phdrs,
)

__all__ = ["CoreParts", "FileSource", "SaveResult", "Source", "read_core_parts", "save_image"]


class Source(Protocol):
    """What save-image reads: a size and positioned reads."""

    name: str
    size: int

    def read(self, offset: int, size: int) -> bytes: ...


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


# --- reading a core through a Source ------------------------------------------------


@dataclass
class CoreParts:
    """The parts of a core that save-image copies: its header, notes and
    PT_LOADs as ``(paddr, offset, filesz, memsz)``."""

    elf: ElfHeader
    notes: list[Note]
    notes_raw: bytes
    loads: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return sum(f for _, _, f, _ in self.loads)


def read_core_parts(src: Source) -> CoreParts:
    """Header, notes and PT_LOAD table of the core in ``src``."""
    first = src.read(0, ELF64LE.ehdr.size)
    if len(first) < layout(ELFCLASS32, True).ehdr.size or first[:4] != ELFMAG:
        parse_header(first, len(first), src.name)  # raises with the reason
    # how much to read: only the class and byte order are trusted yet
    # (parse_header below says what is wrong)
    lay = layout_named_by(first)
    phoff, shoff = lay.ehdr.get(first, "e_phoff"), lay.ehdr.get(first, "e_shoff")
    phentsize, phnum = lay.ehdr.get(first, "e_phentsize"), lay.ehdr.get(first, "e_phnum")
    shentsize = lay.ehdr.get(first, "e_shentsize")
    end = phoff + (phnum if phnum != PN_XNUM else 0) * phentsize
    if phnum == PN_XNUM and shoff:
        sh = src.read(shoff, shentsize)
        count = lay.shdr.get(sh, "sh_info") if len(sh) >= lay.shdr.end("sh_info") else 0
        end = max(phoff + count * phentsize, shoff + shentsize)
    head = src.read(0, max(end, len(first)))
    h = parse_header(head, len(head), src.name)
    cols = read_phdrs(head, h)
    notes_raw = bytearray()
    loads: list[tuple[int, int, int, int]] = []
    for i, t in enumerate(cols.type):
        if t == PT_NOTE:
            raw = src.read(cols.offset[i], cols.filesz[i])
            notes_raw += raw[:kept_size(raw, h.little)]
        elif t == PT_LOAD and cols.memsz[i]:
            if cols.filesz[i] > cols.memsz[i] or cols.offset[i] + cols.filesz[i] > src.size:
                raise FormatError(f"{src.name}: PT_LOAD {i} at {cols.paddr[i]:#x} has data "
                                  "beyond the end of the file", "the core is truncated")
            loads.append((cols.paddr[i], cols.offset[i], cols.filesz[i], cols.memsz[i]))
    notes = parse_notes(bytes(notes_raw), h.little, src.name)
    return CoreParts(h, notes, bytes(notes_raw), loads)


# --- save-image ---------------------------------------------------------------------


@dataclass
class SaveResult:
    out: str
    file_size: int
    data_bytes: int
    loads: int
    source_loads: int
    zero_pages_left_out: int
    jump_back_entry: int | None


def _nonzero_runs(src: Source, paddr: int, offset: int, filesz: int,
                  chunk: int, tick: Callable[[int], None]) -> Iterator[tuple[int, int]]:
    """``(start, length)`` within ``[0, filesz)`` of runs of pages that are
    not all zero (page granular relative to ``paddr``'s page)."""
    zero = bytes(PAGE_SIZE)
    run = -1
    pos = 0
    head = paddr & (PAGE_SIZE - 1)
    while pos < filesz:
        n = min(chunk, filesz - pos)
        data = src.read(offset + pos, n)
        if len(data) != n:
            raise KexecError(f"{src.name}: short read at {offset + pos:#x}",
                             "the source ended early")
        tick(n)
        if data.count(0) == n:
            if run >= 0:
                yield run, pos - run
                run = -1
            pos += n
            continue
        # walk pages; the first page may be partial when paddr is not aligned
        p = 0
        while p < n:
            step = min(PAGE_SIZE - ((head + pos + p) & (PAGE_SIZE - 1)), n - p)
            is_zero = data[p:p + step] == zero[:step]
            if is_zero and run >= 0:
                yield run, pos + p - run
                run = -1
            elif not is_zero and run < 0:
                run = pos + p
            p += step
        pos += n
    if run >= 0:
        yield run, filesz - run


def save_image(src: Source, out: Path, *, jump_back: int | None,
               keep_zero_pages: bool = False, chunk: int = 1 << 20,
               progress: Callable[[str, int, int], None] | None = None) -> SaveResult:
    """Stream the core in ``src`` to ``out`` as a hibernation image.

    The image is an ELF64 core (:mod:`kexec_py.formats.corewriter`): the
    source's notes plus kexec-py's jump-back note, and its PT_LOADs.  By
    default pages that read as zero are left out of the PT_LOADs (a
    page-filtered image: a resume must not have to load all of RAM, which
    no kernel could hold while it runs); ``keep_zero_pages`` keeps them as
    holes in the file instead.  Written to ``out.part``, fsync'ed, then
    renamed, so ``out`` is either complete or absent (or the old file);
    mode 0600 whatever the umask (it holds all of RAM: keys, passwords);
    never through a symlink: one at ``out`` is refused, one at
    ``out.part`` too (a regular file of this user's there is what an
    interrupted run left: it is replaced) -- see
    :func:`kexec_py.safefile.private_output`.  Errors are KexecErrors
    naming the path.
    ``progress(phase, done, total)`` is called as bytes are read.
    """
    from kexec_py.formats.corewriter import CoreLoad, write_core

    parts = read_core_parts(src)
    total = parts.data_bytes
    tick_done = [0]

    def ticker(phase: str, of: int) -> Callable[[int], None]:
        def tick(n: int) -> None:
            tick_done[0] += n
            if progress is not None:
                progress(phase, tick_done[0], of)
        return tick

    pieces: list[tuple[int, int, int, int]] = []  # paddr, src offset, filesz, memsz
    zero_pages = 0
    if keep_zero_pages:
        pieces = list(parts.loads)
    else:
        tick = ticker("scan", total)
        for paddr, off, filesz, memsz in parts.loads:
            kept = 0
            for start, length in _nonzero_runs(src, paddr, off, filesz, chunk, tick):
                pieces.append((paddr + start, off + start, length, length))
                kept += length
            zero_pages += (memsz - kept) // PAGE_SIZE
    written = sum(p[2] for p in pieces)
    tick_done[0] = 0
    tick = ticker("write", written)

    def chunks_of(off: int, filesz: int) -> Callable[[], Iterator[tuple[int, bytes]]]:
        def gen() -> Iterator[tuple[int, bytes]]:
            zero_chunk = bytes(chunk)
            for rel in range(0, filesz, chunk):
                n = min(chunk, filesz - rel)
                data = src.read(off + rel, n)
                tick(n)
                if data != zero_chunk[:n]:
                    yield rel, data
        return gen

    loads = [CoreLoad(paddr, memsz, chunks_of(off, filesz), filesz=filesz)
             for paddr, off, filesz, memsz in pieces]
    notes: list[tuple[bytes | str, int, bytes]] = [(n.name, n.type, n.desc)
                                                   for n in parts.notes
                                                   if n.name != KEXEC_PY_NOTE]
    if jump_back is not None:
        notes.append((KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK, struct.pack("<Q", jump_back)))
    stats = write_core(out, loads, notes, machine=parts.elf.machine)
    return SaveResult(str(out), stats.file_size, stats.data_bytes, stats.loads,
                      len(parts.loads), zero_pages, jump_back)

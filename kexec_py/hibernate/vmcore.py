"""``/proc/vmcore`` of the hibernating kernel, built from physical memory.

:class:`VmcoreView` is the ``/proc/vmcore`` of a kernel booted with
``elfcorehdr=<size>@<addr>``, built from any physical-memory reader as a
stock kernel builds it (fs/proc/vmcore.c, 6.1):

- the ELF header and program headers are read from physical memory at
  ``addr``; every PT_NOTE's notes are read from physical memory at its
  ``p_offset``, cut at the first note with ``n_namesz == 0``, and merged
  into one PT_NOTE that comes first, at ``roundup(ehdr + phnum *
  phentsize, PAGE_SIZE)``;
- the PT_LOADs follow in header order: each covers ``[rounddown(p_offset),
  roundup(p_offset + p_memsz))`` of physical memory, placed one after the
  other from ``elfsz + roundup(notes, PAGE_SIZE)``, its ``p_offset``
  rewritten to the file offset of ``p_paddr``'s data.

The hibernating kernel's command line says where its elfcorehdr is
(:func:`vmcore_view`) and where to jump back (:func:`jump_back_entry`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from kexec_py.boundary.backends import Backend
from kexec_py.errors import FormatError, KexecError, UnsupportedError
from kexec_py.formats.elfstruct import ELF64LE, PT_LOAD, PT_NOTE
from kexec_py.formats.notes import kept_size
from kexec_py.formats.vmcore import parse_header, read_phdrs
from kexec_py.hibernate import window
from kexec_py.segments import page_align_down, page_align_up

__all__ = ["PhysReader", "VmcoreView", "jump_back_entry", "backend_vmcore",
           "vmcore_view"]

#: a reader of physical memory: ``read(addr, size) -> bytes``
PhysReader = Callable[[int, int], bytes]


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
        head = read_phys(addr, max(hdr_size, ELF64LE.ehdr.size))
        h = parse_header(head, len(head), f"elfcorehdr at {addr:#x}")
        lay = h.layout
        if h.phoff != lay.ehdr.size:
            raise FormatError(f"elfcorehdr at {addr:#x}: program headers at {h.phoff:#x}, "
                              "not right after the ELF header", "the header is corrupt")
        cols = read_phdrs(head, h)
        notes = bytearray()
        others: list[int] = []
        for i, t in enumerate(cols.type):
            if t == PT_NOTE:
                raw = read_phys(cols.offset[i], cols.memsz[i])
                notes += raw[:kept_size(raw, h.little)]
            else:
                others.append(i)
        phnum = len(others) + 1
        elfsz = page_align_up(h.phoff + phnum * h.phentsize)
        notes_sz = page_align_up(len(notes))
        out = bytearray(elfsz)
        out[:h.phoff] = head[:h.phoff]
        lay.ehdr.put(out, "e_phnum", phnum)
        pos = h.phoff
        out[pos:pos + h.phentsize] = lay.phdr.pack_fields(
            p_type=PT_NOTE, p_offset=elfsz, p_filesz=len(notes), p_memsz=len(notes), p_align=4)
        pos += h.phentsize
        self.chunks: list[_Chunk] = []
        off = elfsz + notes_sz
        for i in others:
            raw_ph = bytearray(head[h.phoff + i * h.phentsize:h.phoff + (i + 1) * h.phentsize])
            if cols.type[i] == PT_LOAD:
                p = cols.offset[i]
                start, end = page_align_down(p), page_align_up(p + cols.memsz[i])
                self.chunks.append(_Chunk(off, end - start, start))
                lay.phdr.put(raw_ph, "p_offset", off + (p - start))
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


def jump_back_entry(cmdline: str) -> int | None:
    """The ``kexec_jump_back_entry=`` value on a command line (None when it
    is missing, or still the zeros the entry stub had not replaced)."""
    value = window.find_param(cmdline, "kexec_jump_back_entry")
    if value is None:
        return None
    try:
        v = int(value, 16)
    except ValueError:
        raise FormatError(f"kexec_jump_back_entry={value} on the command line is not hex",
                          "give the entry with --entry") from None
    return v or None


def vmcore_view(read_phys: PhysReader, cmdline: str, name: str = "/proc/vmcore") -> VmcoreView:
    """/proc/vmcore of a kernel booted with ``cmdline``: found through its
    ``elfcorehdr=<size>@<addr>``."""
    value = window.find_param(cmdline, "elfcorehdr")
    if value is None:
        raise KexecError("the running kernel has no elfcorehdr= on its command line, so it "
                         "has no /proc/vmcore",
                         "save-image runs in the hibernating kernel (loaded with 'kexec-py load "
                         "--staged --load-preserve-context ...' and entered with 'exec')")
    try:
        size, addr = window.parse_size_at(value)
    except ValueError:
        raise KexecError(f"elfcorehdr={value}: expected <size>@<addr>",
                         "kexec-py passes elfcorehdr=<size>@<addr>") from None
    return VmcoreView(read_phys, addr, size, name)


def backend_vmcore(backend: Backend) -> VmcoreView:
    """The /proc/vmcore of the backend's running kernel, built from its
    physical memory (``save-image --from model:``); a backend without a
    reader of physical memory (a real kernel: read ROOT/proc/vmcore)
    refuses."""
    read = backend.physical_memory()
    if read is None:
        raise UnsupportedError("--from model: needs --backend model",
                               "give the path of /proc/vmcore instead")
    return vmcore_view(read, backend.cmdline(), "model:/proc/vmcore")

"""ELF images (vmlinux, cores) as kexec segments.  The only module that
imports pyelftools; it returns kexec-py's own types and wraps pyelftools'
exceptions in :class:`FormatError`.

pyelftools reads and checks the ELF header (class, byte order, type,
machine, ``e_phnum`` including the ``PN_XNUM`` escape through section 0).
The program-header table is then decoded with one ``struct.iter_unpack``
over the mapping, with the ``Elf{32,64}_Phdr`` of
:mod:`~kexec_py.formats.elfstruct`: pyelftools' ``iter_segments()`` costs
~0.9 s for 100,000 headers, the struct pass ~0.1 s (measured on a 2-core
x86_64 machine; bench/bench_resume.py times a load of that size).

Every ``PT_LOAD`` becomes a segment at its *physical* address ``p_paddr``:
``p_filesz`` bytes from the file, the rest of ``p_memsz`` zero.  kexec
segments are whole pages, so PT_LOADs that share a page are joined into one
segment; the buffer is a slice of the file's mapping whenever the file
holds the bytes in the same order as memory, and a copy only when it does
not (a segment that starts inside a page, or a gap between joined
PT_LOADs, needs zeros the file does not have).
"""

from __future__ import annotations

import io
import itertools
import operator
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from kexec_py.errors import FormatError
from kexec_py.formats.elfstruct import (
    ELFCLASS32,
    ELFCLASS64,
    ELFMAG,
    EM_386,
    EM_X86_64,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_NAMES,
    PT_LOAD,
    layout,
)
from kexec_py.segments import Buffer, Segment, page_align_down, page_align_up

#: ProgramHeader's fields, in its order (Elf64_Phdr's)
_PH_FIELDS = ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz",
              "p_align")


@dataclass(frozen=True, slots=True)
class ProgramHeader:
    """One program header, class-independent."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass
class ElfImage:
    """A parsed ELF file.

    Accessible attributes: ``data`` (the whole file, an mmap view),
    ``name``, ``bits`` (32 or 64), ``little`` (byte order), ``type``
    (ET_*), ``machine`` (EM_*), ``machine_name`` (pyelftools' name),
    ``entry`` (``e_entry``), ``phdrs`` (every program header), ``header``
    (the ELF header fields for ``inspect``).
    """

    data: Buffer
    name: str
    bits: int
    little: bool
    type: int
    machine: int
    machine_name: str
    entry: int
    phdrs: list[ProgramHeader]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def loads(self) -> list[ProgramHeader]:
        return [p for p in self.phdrs if p.type == PT_LOAD]

    @property
    def type_name(self) -> str:
        return ET_NAMES.get(self.type, f"{self.type:#x}")

    @property
    def is_core(self) -> bool:
        return self.type == ET_CORE

    def physical_entry(self) -> int:
        """``e_entry`` as a physical address: as is when it falls inside a
        PT_LOAD's physical range, else translated through the PT_LOAD whose
        virtual range holds it (x86_64 vmlinux has a physical e_entry;
        other kernels a virtual one)."""
        e = self.entry
        for p in self.loads:
            if p.paddr <= e < p.paddr + p.memsz:
                return e
        for p in self.loads:
            if p.vaddr <= e < p.vaddr + p.memsz:
                return p.paddr + (e - p.vaddr)
        raise FormatError(
            f"{self.name}: the entry point {e:#x} lies in no PT_LOAD",
            "the image is damaged, or give the entry point with --entry")


class _ViewStream(io.RawIOBase):
    """A read-only, seekable stream over a buffer, for pyelftools: reads
    return small copies of what is asked, never of the whole file."""

    def __init__(self, data: Buffer) -> None:
        self._mv = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Release the view, so that the mapping under it can be closed."""
        if not self.closed:
            self._mv.release()
        super().close()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._mv) if size is None or size < 0 else min(len(self._mv),
                                                                 self._pos + size)
        out = bytes(self._mv[self._pos:end])
        self._pos = max(self._pos, end)
        return out

    def readinto(self, b: Any) -> int:
        chunk = self.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)


def probe(data: Buffer) -> bool:
    return len(data) >= 4 and bytes(data[:4]) == ELFMAG


def parse(data: Buffer, name: str = "image") -> ElfImage:
    """Parse the ELF header and every program header of ``data``."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if not probe(data):
        raise FormatError(f"{name} is not an ELF file (no \\x7fELF magic)",
                          "give an ELF vmlinux, a bzImage, or an ELF core")
    stream = _ViewStream(data)
    try:
        ef = ELFFile(cast("IO[bytes]", stream))
        h = ef.header
        bits = ef.elfclass
        little = ef.little_endian
        phnum = ef.num_segments()
        hdr: dict[str, Any] = {
            "class": f"ELF{bits}", "data": "little-endian" if little else "big-endian",
            "type": str(h["e_type"]), "machine": str(h["e_machine"]),
            "entry": int(h["e_entry"]), "phoff": int(h["e_phoff"]),
            "phentsize": int(h["e_phentsize"]), "phnum": phnum,
            "shoff": int(h["e_shoff"]), "shnum": int(h["e_shnum"]),
            "flags": int(h["e_flags"]),
        }
        lay = layout(ELFCLASS64 if bits == 64 else ELFCLASS32, little)
        e_type_raw = lay.ehdr.get(data, "e_type")
        e_machine_raw = lay.ehdr.get(data, "e_machine")
    except ELFError as e:
        raise FormatError(f"{name}: not a valid ELF file: {e}",
                          "the file is damaged or truncated") from None
    except (struct.error, ValueError, KeyError, IndexError) as e:
        raise FormatError(f"{name}: ELF header cannot be read: {e}",
                          "the file is damaged or truncated") from None
    finally:
        stream.close()
    ph = lay.phdr
    size = ph.size
    phoff = hdr["phoff"]
    if phnum and hdr["phentsize"] != size:
        raise FormatError(f"{name}: e_phentsize is {hdr['phentsize']}, ELF{bits} program "
                          f"headers are {size} bytes", "the file is damaged")
    if phoff + phnum * size > len(data):
        raise FormatError(
            f"{name} is truncated: {phnum} program headers at {phoff:#x} end at "
            f"{phoff + phnum * size:#x}, the file is {len(data):#x} bytes",
            "copy the image again; the file is incomplete")
    table = memoryview(data)[phoff:phoff + phnum * size]
    rows: Iterator[tuple[int, ...]] = ph.iter_unpack(table)
    order = [ph.index(f) for f in _PH_FIELDS]
    if order != list(range(len(order))):  # Elf32_Phdr: p_flags is seventh
        rows = map(operator.itemgetter(*order), rows)
    phdrs = list(itertools.starmap(ProgramHeader, rows))
    img = ElfImage(data, name, bits, little, e_type_raw, e_machine_raw, hdr["machine"],
                   hdr["entry"], phdrs, hdr)
    check_loads(img)
    return img


def check_loads(img: ElfImage) -> None:
    """Every PT_LOAD's file bytes lie in the file and fit its memsz."""
    for i, p in enumerate(img.phdrs):
        if p.type != PT_LOAD:
            continue
        if p.filesz > p.memsz:
            raise FormatError(
                f"{img.name}: PT_LOAD {i} has p_filesz {p.filesz:#x} > p_memsz {p.memsz:#x}",
                "the image is damaged")
        if p.offset + p.filesz > len(img.data):
            raise FormatError(
                f"{img.name} is truncated: PT_LOAD {i} needs file bytes up to "
                f"{p.offset + p.filesz:#x}, the file is {len(img.data):#x} bytes",
                "copy the image again; the file is incomplete")


def _group(loads: Sequence[ProgramHeader]) -> list[list[ProgramHeader]]:
    """PT_LOADs (memsz > 0) sorted by p_paddr, grouped where they share a page.
    PT_LOADs that overlap each other are refused."""
    out: list[list[ProgramHeader]] = []
    end = -1
    prev: ProgramHeader | None = None
    for p in sorted((p for p in loads if p.memsz), key=lambda p: p.paddr):
        if prev is not None and p.paddr < prev.paddr + prev.memsz:
            raise FormatError(
                f"PT_LOADs overlap: [{prev.paddr:#x}, {prev.paddr + prev.memsz:#x}) and "
                f"[{p.paddr:#x}, {p.paddr + p.memsz:#x})", "the image is damaged")
        if out and page_align_down(p.paddr) < end:
            out[-1].append(p)
        else:
            out.append([p])
        end = max(end, page_align_up(p.paddr + p.memsz))
        prev = p
    return out


def load_segments(img: ElfImage, name: str = "PT_LOAD") -> list[Segment]:
    """One segment per page-disjoint group of PT_LOADs, at ``p_paddr``.

    Post-conditions: every segment is page aligned and its memory holds
    exactly what the PT_LOADs say (file bytes, then zeros); a buffer is a
    slice of ``img.data`` unless zeros must be inserted.
    """
    data = memoryview(img.data)
    segs: list[Segment] = []
    for grp in _group(img.loads):
        first, last = grp[0], grp[-1]
        mem = page_align_down(first.paddr)
        memsz = page_align_up(last.paddr + last.memsz) - mem
        delta = first.paddr - mem
        label = name if len(grp) == 1 else f"{name} x{len(grp)}"
        contiguous = delta == 0 and all(
            a.filesz == a.memsz and b.offset - a.offset == b.paddr - a.paddr
            for a, b in zip(grp, grp[1:], strict=False))
        if contiguous:
            bufsz = last.paddr + last.filesz - mem
            buf: Buffer | None = data[first.offset:first.offset + bufsz] if bufsz else None
            segs.append(Segment(mem, memsz, bufsz, buf, label))
            continue
        filled = [p for p in grp if p.filesz]
        bufsz = max((p.paddr + p.filesz - mem for p in filled), default=0)
        out = bytearray(bufsz)
        for p in filled:
            at = p.paddr - mem
            out[at:at + p.filesz] = data[p.offset:p.offset + p.filesz]
        segs.append(Segment(mem, memsz, bufsz, bytes(out) if bufsz else None, label))
    return segs


def check_kernel(img: ElfImage, machine: int = EM_X86_64) -> None:
    """Refuse what cannot be booted as an x86_64 Linux vmlinux."""
    if img.is_core:
        raise FormatError(f"{img.name} is an ELF core (a dump or hibernation image), not a "
                          "kernel", f"resume it with 'kexec-py resume {img.name}'")
    if img.type not in (ET_EXEC, ET_DYN):
        raise FormatError(f"{img.name} is {img.type_name}, not an executable kernel",
                          "give a vmlinux (ET_EXEC) or a bzImage")
    if img.machine != machine:
        hint = ("use the bzImage: kexec-py enters kernels through their 64-bit entry"
                if img.machine == EM_386 else "give a kernel for this machine (x86_64)")
        raise FormatError(f"{img.name} is an ELF{img.bits} {img.machine_name} kernel; "
                          "kexec-py loads x86_64 kernels here", hint)
    if not img.loads:
        raise FormatError(f"{img.name} has no PT_LOAD segments", "the image is damaged")
    if any(p.memsz for p in img.loads) and all(p.paddr == 0 for p in img.loads if p.memsz):
        raise FormatError(f"{img.name}: every PT_LOAD has p_paddr 0",
                          "the image has no physical addresses; link it with them")


def header_table(img: ElfImage) -> list[dict[str, Any]]:
    """The ELF header fields for ``inspect``."""
    return [{"name": k, "value": v} for k, v in img.header.items()]


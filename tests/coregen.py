"""Synthesize ELF core files for tests (struct-packed, any class and byte
order, malformed on purpose when asked).  Not product code: the product
writes cores with kexec_py.formats.corewriter."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

ET_CORE, ET_EXEC = 4, 2
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF


@dataclass
class Ph:
    type: int
    offset: int
    paddr: int
    filesz: int
    memsz: int
    vaddr: int = 0
    flags: int = 7
    align: int = 0


@dataclass
class Core:
    """A core to write: ``phdrs`` as given (offsets absolute) and ``blobs``
    (offset -> bytes) placed in the file."""

    phdrs: list[Ph] = field(default_factory=list)
    blobs: dict[int, bytes] = field(default_factory=dict)
    bits: int = 64
    little: bool = True
    e_type: int = ET_CORE
    machine: int = 62
    size: int | None = None  # file size (sparse tail), default: the end of the data
    xnum: bool | None = None  # force / forbid PN_XNUM; default: when needed
    phentsize: int | None = None

    def header_size(self) -> int:
        return 64 if self.bits == 64 else 52

    def phsize(self) -> int:
        return 56 if self.bits == 64 else 32

    def table_end(self) -> int:
        extra = (64 if self.bits == 64 else 40) if self._xnum() else 0
        return self.header_size() + len(self.phdrs) * self.phsize() + extra

    def _xnum(self) -> bool:
        return len(self.phdrs) >= PN_XNUM if self.xnum is None else self.xnum

    def render_header(self) -> bytes:
        e = "<" if self.little else ">"
        n = len(self.phdrs)
        xnum = self._xnum()
        phoff = self.header_size()
        shoff = phoff + n * self.phsize() if xnum else 0
        ident = b"\x7fELF" + bytes([2 if self.bits == 64 else 1, 1 if self.little else 2, 1]) \
            + bytes(9)
        phnum = PN_XNUM if xnum else n
        shentsize = (64 if self.bits == 64 else 40) if xnum else 0
        if self.bits == 64:
            hdr = ident + struct.pack(e + "HHIQQQIHHHHHH", self.e_type, self.machine, 1, 0, phoff,
                                      shoff, 0, 64, self.phentsize or 56, phnum, shentsize,
                                      1 if xnum else 0, 0)
        else:
            hdr = ident + struct.pack(e + "HHIIIIIHHHHHH", self.e_type, self.machine, 1, 0, phoff,
                                      shoff, 0, 52, self.phentsize or 32, phnum, shentsize,
                                      1 if xnum else 0, 0)
        parts = [hdr]
        for p in self.phdrs:
            if self.bits == 64:
                parts.append(struct.pack(e + "IIQQQQQQ", p.type, p.flags, p.offset, p.vaddr,
                                         p.paddr, p.filesz, p.memsz, p.align))
            else:
                parts.append(struct.pack(e + "IIIIIIII", p.type, p.offset, p.vaddr, p.paddr,
                                         p.filesz, p.memsz, p.flags, p.align))
        if xnum:
            # section header 0: only sh_info (the real phnum) matters
            if self.bits == 64:
                parts.append(struct.pack(e + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, n, 0, 0))
            else:
                parts.append(struct.pack(e + "IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, n, 0, 0))
        return b"".join(parts)

    def write(self, path: Path) -> Path:
        head = self.render_header()
        with open(path, "wb") as f:
            f.write(head)
            end = len(head)
            for off, blob in sorted(self.blobs.items()):
                f.seek(off)
                f.write(blob)
                end = max(end, off + len(blob))
            f.truncate(self.size if self.size is not None else end)
        return path

    def render(self) -> bytes:
        head = self.render_header()
        end = max([len(head)] + [o + len(b) for o, b in self.blobs.items()])
        buf = bytearray(self.size if self.size is not None else end)
        buf[:len(head)] = head
        for off, blob in self.blobs.items():
            buf[off:off + len(blob)] = blob
        return bytes(buf)


def note(name: str, ntype: int, desc: bytes, little: bool = True) -> bytes:
    nm = name.encode() + b"\0"
    e = "<" if little else ">"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack(e + "III", len(nm), len(desc), ntype) + pad(nm) + pad(desc)


def simple_core(loads: list[tuple[int, bytes, int]], *, bits: int = 64, little: bool = True,
                notes: bytes = b"", data_start: int | None = None) -> Core:
    """A core with one PT_NOTE (when ``notes``) and a PT_LOAD per
    ``(paddr, data, memsz)``, data laid out page-aligned after the headers."""
    c = Core(bits=bits, little=little)
    n = len(loads) + (1 if notes else 0)
    c.phdrs = [Ph(PT_LOAD, 0, 0, 0, 0)] * n
    off = data_start if data_start is not None else -(-c.table_end() // 4096) * 4096
    phdrs: list[Ph] = []
    if notes:
        phdrs.append(Ph(PT_NOTE, off, 0, len(notes), len(notes), flags=0))
        c.blobs[off] = notes
        off += -(-len(notes) // 4096) * 4096
    for paddr, data, memsz in loads:
        phdrs.append(Ph(PT_LOAD, off, paddr, len(data), memsz))
        if data:
            c.blobs[off] = data
        off += -(-len(data) // 4096) * 4096
    c.phdrs = phdrs
    return c


def pattern(paddr: int, size: int) -> bytes:
    """Bytes that say where they belong: each 8-byte word is its address."""
    base = paddr & ~7
    words = (size + (paddr - base) + 7) // 8
    raw = b"".join(struct.pack("<Q", base + 8 * i) for i in range(words))
    return raw[paddr - base:paddr - base + size]

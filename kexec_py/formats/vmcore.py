"""Hibernation images: ELF core files as ``/proc/vmcore`` presents them.

An image is an ``ET_CORE`` ELF file (ELF64 or ELF32, either byte order):
``PT_NOTE`` segments (VMCOREINFO when the kernel wrote one, CPU notes, and
a note of kexec-py's own carrying the jump-back entry) and one ``PT_LOAD``
per run of physical memory, with ``p_paddr`` = physical address,
``p_offset`` = file offset and ``p_filesz <= p_memsz`` (the tail is zero).
Resuming loads every PT_LOAD at its ``p_paddr``.

Images can have 100,000+ PT_LOADs and several GiB, so this reader never
builds per-byte Python objects: the file is mmap'd once, the program-header
table is decoded column by column with :mod:`array` (one C-level pass per
field, no per-header ``struct.unpack``; the fields' offsets and sizes come
from :mod:`~kexec_py.formats.elfstruct`), and segment buffers are
memoryview slices of the mmap.  pyelftools is not used here: its
``iter_segments()`` takes ~0.9 s for 100,000 headers where this takes a
few tens of ms (bench/bench_resume.py).  Notes are read with
:mod:`~kexec_py.formats.notes`.

kexec-py's own note (name ``KEXEC_PY``), in the image's byte order:

========  ==========================  ====================================
n_type    meaning                     desc
========  ==========================  ====================================
1         ``NT_KEXEC_PY_JUMP_BACK``   u64 jump-back entry (physical address)
2         ``NT_KEXEC_PY_BACKUP_MAP``  u64 window start, u64 window end,
                                      u64 moved pages (in a backup-map
                                      elfcorehdr, see backupmap.py)
========  ==========================  ====================================
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.errors import FormatError
from kexec_py.formats.elfstruct import (
    EI_CLASS,
    EI_DATA,
    EI_NIDENT,
    EI_VERSION,
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFDATA2MSB,
    ELFMAG,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    EV_CURRENT,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    ElfLayout,
    layout,
)
from kexec_py.formats.notes import Note, note_bytes, parse_notes
from kexec_py.segments import Segment

#: the note kexec-py adds to images it writes
KEXEC_PY_NOTE = "KEXEC_PY"
NT_KEXEC_PY_JUMP_BACK = 1
NT_KEXEC_PY_BACKUP_MAP = 2
VMCOREINFO_NOTE = "VMCOREINFO"

#: more program headers than this is not an image, it is a corrupted file
#: (2**24 page-sized PT_LOADs would describe 64 GiB in single pages)
MAX_PROGRAM_HEADERS = 1 << 24

_E_TYPES = {ET_REL: "a relocatable object", ET_EXEC: "an executable",
            ET_DYN: "a shared object (or PIE kernel)"}


@dataclass(frozen=True, slots=True)
class LoadRun:
    """One PT_LOAD (or several coalesced): ``[paddr, paddr + memsz)`` in
    physical memory, of which the first ``filesz`` bytes are at file
    ``offset`` and the rest is zero."""

    paddr: int
    offset: int
    filesz: int
    memsz: int


@dataclass
class LoadTable:
    """The PT_LOADs of an image as parallel ``array('Q')`` columns, sorted
    by ``paddr`` (empty PT_LOADs dropped).  ``index`` gives each row's
    position in the file's program-header table, for messages."""

    paddr: array[int]
    offset: array[int]
    filesz: array[int]
    memsz: array[int]
    index: array[int]

    def __len__(self) -> int:
        return len(self.paddr)

    def __iter__(self) -> Iterator[LoadRun]:
        for p, o, f, m in zip(self.paddr, self.offset, self.filesz, self.memsz, strict=True):
            yield LoadRun(p, o, f, m)

    def __getitem__(self, i: int) -> LoadRun:
        return LoadRun(self.paddr[i], self.offset[i], self.filesz[i], self.memsz[i])

    @property
    def total_memsz(self) -> int:
        return sum(self.memsz)

    @property
    def total_filesz(self) -> int:
        return sum(self.filesz)


def _fail(name: str, what: str, hint: str = "") -> FormatError:
    return FormatError(f"{name}: {what}", hint or
                       "a hibernation image is an ELF core file as /proc/vmcore presents it "
                       "(see 'kexec-py save-image')")


# --- the ELF header ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElfHeader:
    """The fields of the ELF header that a core reader needs.  ``phnum``
    is the real count (resolved through section 0 for PN_XNUM)."""

    elfclass: int
    little: bool
    type: int
    machine: int
    entry: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int

    @property
    def layout(self) -> ElfLayout:
        """The structures of this file's class and byte order."""
        return layout(self.elfclass, self.little)

    @property
    def bits(self) -> int:
        return self.layout.bits


def parse_header(buf: memoryview | bytes, size: int, name: str) -> ElfHeader:
    """Decode and check the ELF header of a core.

    Pre-conditions: ``len(buf) >= size``.  Post-conditions: the program
    header table lies inside the file and has a sane entry size and count.
    """
    if size < 16 or bytes(buf[:4]) != ELFMAG:
        raise _fail(name, "is not an ELF file (no \\x7fELF magic)")
    ident = bytes(buf[:EI_NIDENT])
    cls, data, ver = ident[EI_CLASS], ident[EI_DATA], ident[EI_VERSION]
    if cls not in (ELFCLASS32, ELFCLASS64):
        raise _fail(name, f"has an unknown ELF class {cls} (EI_CLASS must be 1 or 2)")
    if data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise _fail(name, f"has an unknown ELF data encoding {data} (EI_DATA must be 1 or 2)")
    if ver != EV_CURRENT:
        raise _fail(name, f"has ELF version {ver} (EI_VERSION must be 1)")
    little = data == ELFDATA2LSB
    lay = layout(cls, little)
    ehsize = lay.ehdr.size
    if size < ehsize:
        raise _fail(name, f"is truncated: {size} bytes, shorter than an ELF header ({ehsize})")
    (_ident, e_type, machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = lay.ehdr.unpack_from(buf, 0)
    if e_type != ET_CORE:
        what = _E_TYPES.get(e_type, f"of type {e_type}")
        raise _fail(name, f"is {what}, not a core file (e_type {e_type}, ET_CORE is 4)",
                    "to boot a kernel use 'kexec-py load'; a hibernation image comes from "
                    "/proc/vmcore ('kexec-py save-image')")
    if phnum == 0:
        raise _fail(name, "has no program headers (e_phnum 0): it describes no memory")
    if phentsize != lay.phdr.size:
        raise _fail(name, f"has program headers of {phentsize} bytes; ELF{lay.bits}"
                          f" program headers are {lay.phdr.size}")
    if phnum == PN_XNUM:
        # the real count is in section header 0's sh_info (ELF gABI, "Extended numbering")
        if shoff == 0:
            raise _fail(name, "says e_phnum = PN_XNUM (0xffff) but has no section header 0 "
                              "holding the real count")
        if shentsize != lay.shdr.size:
            raise _fail(name, f"has section headers of {shentsize} bytes; expected "
                              f"{lay.shdr.size}")
        if shoff + shentsize > size:
            raise _fail(name, f"section header 0 at offset {shoff:#x} lies beyond the end of "
                              f"the file ({size:#x} bytes)")
        phnum = lay.shdr.get(buf, "sh_info", shoff)
        if phnum < PN_XNUM:
            raise _fail(name, f"says e_phnum = PN_XNUM but section 0 gives {phnum} headers "
                              "(extended numbering is only for 65535 or more)")
    if phnum > MAX_PROGRAM_HEADERS:
        raise _fail(name, f"claims {phnum} program headers, more than any image has "
                          f"(limit {MAX_PROGRAM_HEADERS}): the file is corrupt")
    if phoff < ehsize or phoff + phnum * phentsize > size:
        raise _fail(name, f"program header table ({phnum} entries at offset {phoff:#x}) runs "
                          f"past the end of the file ({size:#x} bytes)",
                    "the image is truncated: copy it again")
    return ElfHeader(cls, little, e_type, machine, entry, phoff, shoff, phentsize, phnum)


# --- the program-header table: column decoding ---------------------------------


@dataclass
class PhdrColumns:
    """Every program header as columns: ``type``, ``offset``, ``paddr``,
    ``filesz``, ``memsz`` (``array``s of the same length)."""

    type: array[int]
    offset: array[int]
    vaddr: array[int]
    paddr: array[int]
    filesz: array[int]
    memsz: array[int]


def _swap_if(a: array[int], little: bool) -> array[int]:
    if little != (sys.byteorder == "little"):
        a.byteswap()
    return a


def read_phdrs(buf: memoryview | bytes, hdr: ElfHeader) -> PhdrColumns:
    """Decode the program-header table without a Python object per header.

    Every field of ``Elf{32,64}_Phdr`` is a u32 or a u64 at an offset that
    is a multiple of its size, so one ``array('I')`` and (ELF64) one
    ``array('Q')`` over the same bytes give every field as a strided slice:
    field at offset ``o`` of size ``k`` in entries of ``n`` bytes is
    ``array[o // k::n // k]``.  Offsets and sizes are
    :mod:`~kexec_py.formats.elfstruct`'s; u32 columns other than ``type``
    are widened to ``array('Q')``.
    """
    ph = hdr.layout.phdr
    raw = bytes(buf[hdr.phoff:hdr.phoff + hdr.phnum * hdr.phentsize])
    by_code = {"I": _swap_if(array("I", raw), hdr.little)}
    if "Q" in (ph.code(f) for f in ph.fields):
        by_code["Q"] = _swap_if(array("Q", raw), hdr.little)

    def column(field: str) -> array[int]:
        a = by_code[ph.code(field)]
        k = a.itemsize
        col = a[ph.offset(field) // k::ph.size // k]
        return col if col.typecode == "Q" or field == "p_type" else array("Q", col)

    return PhdrColumns(column("p_type"), column("p_offset"), column("p_vaddr"),
                       column("p_paddr"), column("p_filesz"), column("p_memsz"))


# --- kexec-py's notes --------------------------------------------------------------


def jump_back_note(entry: int, little: bool = True) -> bytes:
    """kexec-py's note recording the jump-back entry of a hibernated kernel."""
    return note_bytes(KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK,
                      struct.pack("<Q" if little else ">Q", entry), little)


# --- PT_LOAD validation and coalescing --------------------------------------------


def _sorted_order(paddr: array[int]) -> list[int] | None:
    """None when ``paddr`` is already ascending (the usual case), else the
    permutation that sorts it."""
    if all(a <= b for a, b in zip(paddr, paddr[1:])):  # noqa: B905 (lengths differ by one)
        return None
    return sorted(range(len(paddr)), key=paddr.__getitem__)


def load_table(cols: PhdrColumns, size: int, bits: int, name: str) -> LoadTable:
    """The PT_LOADs, checked and sorted by physical address.

    Checks (each a :class:`FormatError` naming the program header):
    ``p_filesz <= p_memsz``; file data inside the file; the physical range
    inside the address space; ``p_paddr`` page aligned (kexec loads whole
    pages); no two PT_LOADs overlapping in physical memory or sharing a
    page.  PT_LOADs with ``p_memsz == 0`` are dropped.
    """
    idx = [i for i, t in enumerate(cols.type) if t == PT_LOAD and cols.memsz[i]]
    if not idx:
        raise _fail(name, "has no PT_LOAD with memory: there is nothing to resume")
    limit = 1 << bits
    pa = array("Q", (cols.paddr[i] for i in idx))
    off = array("Q", (cols.offset[i] for i in idx))
    fsz = array("Q", (cols.filesz[i] for i in idx))
    msz = array("Q", (cols.memsz[i] for i in idx))
    ix = array("Q", idx)
    # vectorised screening first; the slow per-row loop only names the culprit
    bad_f = any(f > m for f, m in zip(fsz, msz, strict=True))
    bad_o = max(o + f if f else 0 for o, f in zip(off, fsz, strict=True)) > size
    bad_l = max(p + m for p, m in zip(pa, msz, strict=True)) > limit
    if bad_f or bad_o or bad_l:
        for k in range(len(ix)):
            i, p, o, f, m = ix[k], pa[k], off[k], fsz[k], msz[k]
            where = f"PT_LOAD (program header {i}, p_paddr {p:#x})"
            if f > m:
                raise _fail(name, f"{where} has p_filesz {f:#x} larger than p_memsz {m:#x}")
            if f and o + f > size:
                raise _fail(name, f"{where}: its data [{o:#x}, {o + f:#x}) lies beyond the end "
                                  f"of the file ({size:#x} bytes)",
                            "the image is truncated or its headers are corrupt")
            if p + m > limit:
                raise _fail(name, f"{where}: p_memsz {m:#x} runs past the end of the "
                                  f"{bits}-bit address space")
    order = _sorted_order(pa)
    if order is not None:
        pa = array("Q", (pa[k] for k in order))
        off = array("Q", (off[k] for k in order))
        fsz = array("Q", (fsz[k] for k in order))
        msz = array("Q", (msz[k] for k in order))
        ix = array("Q", (ix[k] for k in order))
    table = LoadTable(pa, off, fsz, msz, ix)
    _check_overlaps(table, name)
    return table


def _check_overlaps(t: LoadTable, name: str) -> None:
    """No two PT_LOADs may overlap, nor share a page unless they coalesce;
    a PT_LOAD that does not continue its predecessor starts on a page."""
    pa, msz = t.paddr, t.memsz
    mask = ~(PAGE_SIZE - 1)
    for k in range(1, len(pa)):
        prev_end = pa[k - 1] + msz[k - 1]
        if pa[k] >= ((prev_end + PAGE_SIZE - 1) & mask):
            continue
        a, b = t.index[k - 1], t.index[k]
        if pa[k] < prev_end:
            raise _fail(name, f"PT_LOADs overlap in physical memory: program header {a} "
                              f"[{pa[k - 1]:#x}, {prev_end:#x}) and program header {b} "
                              f"[{pa[k]:#x}, {pa[k] + msz[k]:#x})",
                        "every physical page must come from one PT_LOAD; a kdump-style "
                        "core with a kernel-text PT_LOAD is not a hibernation image (save "
                        "one with 'kexec-py save-image' from a backup-map elfcorehdr)")
    if any(p & (PAGE_SIZE - 1) for p in pa):
        for k, p in enumerate(pa):
            if p & (PAGE_SIZE - 1) and not (k and _joinable(t, k - 1, k)):
                if k and (p & mask) < pa[k - 1] + msz[k - 1] <= p:
                    raise _fail(name, f"program headers {t.index[k - 1]} and {t.index[k]} share "
                                      f"the page {p & mask:#x} but do not continue each other "
                                      "in the file",
                                f"kexec loads whole pages of {PAGE_SIZE} bytes")
                raise _fail(name, f"PT_LOAD (program header {t.index[k]}, p_paddr {p:#x}) is "
                                  "not page aligned",
                            f"kexec loads whole pages of {PAGE_SIZE} bytes: a PT_LOAD must "
                            "start on a page boundary unless it continues the previous one")


def _joinable(t: LoadTable, a: int, b: int) -> bool:
    """PT_LOAD ``b`` continues ``a``: adjacent in memory and either
    adjacent in the file (``a`` has no zero tail) or all zero."""
    if t.paddr[a] + t.memsz[a] != t.paddr[b]:
        return False
    if t.filesz[b] == 0:
        return True
    return t.filesz[a] == t.memsz[a] and t.offset[a] + t.filesz[a] == t.offset[b]


def coalesce(t: LoadTable) -> LoadTable:
    """Adjacent PT_LOADs that are contiguous in both file and memory become
    one run (and an all-zero PT_LOAD right after a run extends its zero
    tail).  Post-condition: the runs cover exactly the same bytes; ``index``
    is the program header of each run's first PT_LOAD."""
    pa, off, fsz, msz, ix = t.paddr, t.offset, t.filesz, t.memsz, t.index
    n = len(pa)
    # fast screen: no row continues its predecessor -> nothing to do
    if not any(pa[k] == pa[k - 1] + msz[k - 1] for k in range(1, n)):
        return t
    o_pa, o_off, o_fsz, o_msz, o_ix = (array("Q") for _ in range(5))
    k = 0
    while k < n:
        p, o, f, m = pa[k], off[k], fsz[k], msz[k]
        j = k + 1
        while j < n and pa[j] == p + m and (
                fsz[j] == 0 or (f == m and o + f == off[j])):
            f += fsz[j]
            m += msz[j]
            j += 1
        o_pa.append(p)
        o_off.append(o if f else 0)
        o_fsz.append(f)
        o_msz.append(m)
        o_ix.append(ix[k])
        k = j
    return LoadTable(o_pa, o_off, o_fsz, o_msz, o_ix)


# --- the image ---------------------------------------------------------------------


class CoreImage:
    """A hibernation image, mmap'd.

    Accessible attributes: ``name`` (for messages), ``size`` (bytes),
    ``header`` (:class:`ElfHeader`), ``loads`` (:class:`LoadTable`, sorted
    by paddr), ``notes`` (every :class:`Note` of every PT_NOTE),
    ``phdr_count`` (program headers in the file).

    Segment buffers are slices of one memoryview of the mmap; call
    :meth:`close` (or use ``with``) when no segment is needed any more.
    """

    def __init__(self, buf: memoryview | bytes, size: int, name: str,
                 owner: mmap.mmap | None = None) -> None:
        self.name = name
        self.size = size
        self._mm = owner
        self._view = buf if isinstance(buf, memoryview) else memoryview(buf)
        self.header = parse_header(self._view, size, name)
        cols = read_phdrs(self._view, self.header)
        self.phdr_count = len(cols.type)
        self.loads = load_table(cols, size, self.header.bits, name)
        self.notes: list[Note] = []
        for i, t in enumerate(cols.type):
            if t != PT_NOTE:
                continue
            o, f = cols.offset[i], cols.filesz[i]
            if o + f > size:
                raise _fail(name, f"PT_NOTE (program header {i}) data [{o:#x}, {o + f:#x}) lies "
                                  f"beyond the end of the file ({size:#x} bytes)",
                            "the image is truncated or its headers are corrupt")
            self.notes.extend(parse_notes(self._view[o:o + f], self.header.little,
                                          f"{name}: PT_NOTE {i}"))

    # --- what the notes say --------------------------------------------------------

    def find_note(self, name: str, ntype: int | None = None) -> Note | None:
        for n in self.notes:
            if n.name == name and (ntype is None or n.type == ntype):
                return n
        return None

    @property
    def vmcoreinfo(self) -> str | None:
        """The VMCOREINFO text (``OSRELEASE=...`` lines), when present."""
        n = self.find_note(VMCOREINFO_NOTE)
        return None if n is None else n.desc.rstrip(b"\0").decode("ascii", "replace")

    @property
    def jump_back_entry(self) -> int | None:
        """The jump-back entry recorded by ``save-image``, when present."""
        n = self.find_note(KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK)
        if n is None or len(n.desc) < 8:
            return None
        (v,) = struct.unpack_from(self.header.layout.endian + "Q", n.desc)
        return int(v)

    # --- data ------------------------------------------------------------------------

    def runs(self) -> LoadTable:
        """The PT_LOADs coalesced (see :func:`coalesce`)."""
        return coalesce(self.loads)

    def data(self, offset: int, length: int) -> memoryview:
        """A slice of the file (no copy)."""
        return self._view[offset:offset + length]

    def segments(self) -> list[Segment]:
        """One kexec segment per coalesced run: at ``paddr``, memsz rounded
        up to whole pages (the rest zero-filled, as kexec-tools does),
        ``buf`` a memoryview slice of the mmap (None for all-zero runs)."""
        view = self._view
        runs = self.runs()
        mask = PAGE_SIZE - 1
        return [Segment(p, (m + mask) & ~mask, f, view[o:o + f] if f else None, "load")
                for p, o, f, m in zip(runs.paddr, runs.offset, runs.filesz, runs.memsz,
                                      strict=True)]

    def close(self) -> None:
        """Drop the mapping.  Segments handed out keep it alive until they
        are gone (an exported buffer cannot be unmapped)."""
        try:
            self._view.release()
        except BufferError:
            return
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None

    def __enter__(self) -> CoreImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_core(path: Path | str) -> CoreImage:
    """mmap ``path`` read-only and parse it as a hibernation image."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(f"image {p} does not exist", "check the path") from None
    except IsADirectoryError:
        raise FormatError(f"image {p} is a directory", "give the image file") from None
    except OSError as e:
        raise FormatError(f"cannot open image {p}: {e.strerror}", "check permissions") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FormatError(f"image {p} is a directory", "give the image file")
        # a block device (a swap partition holding the image) has no
        # st_size: its size is where lseek(SEEK_END) lands
        size = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
        if size == 0:
            raise FormatError(f"image {p} is empty", "the image was not written: save it again")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except OSError as e:
        raise FormatError(f"cannot map image {p}: {e.strerror}",
                          "it must be a regular file or a block device (copy /proc/vmcore "
                          "with save-image)") from None
    finally:
        os.close(fd)
    view = memoryview(mm)
    try:
        return CoreImage(view, size, str(p), mm)
    except BaseException:
        view.release()
        try:
            mm.close()
        except BufferError:  # a slice is still referenced by the traceback
            pass
        raise


def parse_core(data: bytes | memoryview, name: str = "<image>") -> CoreImage:
    """Parse an image held in memory (tests, the model's /proc/vmcore)."""
    return CoreImage(data, len(data), name)

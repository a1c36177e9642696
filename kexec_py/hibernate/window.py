"""The backup pages map: where a preserve-context jump put the original
kernel's pages, in a form the loaded kernel can read (pure).

At a kexec jump (``KEXEC_PRESERVE_CONTEXT``) the kernel swaps every
destination page with its source page, so the original contents of
``dst_pfn`` live at ``src_pfn`` while the loaded kernel runs.  The map
comes from ``/proc/kexec_pgmap`` (read between KS_mid and KS_final) and is
handed to the loaded kernel as a parameter segment in one of two encodings.

``elfcorehdr`` (default): an ELF64 core header, the format a kdump kernel
reads from ``elfcorehdr=<size>@<addr>``, so the loaded kernel's stock
``/proc/vmcore`` shows the original memory and copying it is a correct
hibernation image.  Byte layout (little-endian; the structures are
:data:`kexec_py.formats.elfstruct.ELF64LE`'s)::

    0     Elf64_Ehdr   e_ident 7f 'E' 'L' 'F' 02 01 01 00..., e_type 4 (ET_CORE),
                       e_machine (62 x86_64), e_version 1, e_phoff 64,
                       e_ehsize 64, e_phentsize 56, e_phnum N, no sections
    64    N x Elf64_Phdr, PT_NOTEs first (the kernel merges them assuming so):
            PT_NOTE  p_offset = <addr> + note offset: the KEXEC_PY note below
            PT_NOTE  (one per extra note area: CPU crash notes, VMCOREINFO),
                     p_offset = its physical address, redirected through the map
            PT_LOAD  per run of the original System RAM, sorted by p_paddr:
                     p_paddr = physical address in the original kernel,
                     p_offset = physical address that holds its contents now
                     (the backup copy for moved pages, p_paddr otherwise),
                     p_filesz = p_memsz = size, p_flags 7, p_vaddr 0, p_align 0
    64+56N  note "KEXEC_PY", n_type 2 (NT_KEXEC_PY_BACKUP_MAP), desc 3 x u64:
            window start, window end, moved pages; then 12 zero bytes, an
            empty note that ends the PT_NOTE (its p_memsz counts them)

A run of moved pages is maximal: consecutive destination pages whose
sources are consecutive too.  Destination pages the kernel loaded in place
(not in the page map: they were free in the original kernel) are in no
PT_LOAD -- the loaded kernel owns them, and its /proc/vmcore could not read
them.  The placeholder is sized for the worst case
(every moved page its own run: ``64 + 56 * (notes + 2 * pages + 2 * RAM
ranges) + 60`` bytes, pages = every destination page of the load).  A
stock ``/proc/vmcore`` reads at most 65535 program headers (no PN_XNUM)
and 4 MiB of them.

``raw``: the table itself, for other consumers, passed as
``kexec_backup_map=<size>@<addr>``::

    0     8 bytes  magic "KXPYBMAP"
    8     u32      version (1)
    12    u32      page size (4096)
    16    u64      count
    24    count x {u64 dst_pfn, u64 src_pfn}, sorted by dst_pfn; pages loaded
          in place (src == dst) are left out

Worst case: ``24 + 16 * pages``.  Either region is left out of the loaded
kernel's memory map (``memmap=exactmap`` lists only the usable pages of the
window), so that kernel never overwrites it.

Low memory: an x86 kernel panics at boot without RAM below 1 MiB for its
real-mode trampoline ("Real mode trampoline was not allocated"), so when
the window does not reach down there, the RAM below 1 MiB is backed up too
and given to the loaded kernel as well -- as kexec-tools gives a kdump
kernel the first 640 KiB and saves them in a backup region.
"""

from __future__ import annotations

import errno
import operator
import re
import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.boundary.procfs import PageMap
from kexec_py.errors import PlanError, ProcfsError
from kexec_py.formats.elfstruct import (
    ELF64LE,
    EM_X86_64,
    PF_R,
    PF_W,
    PF_X,
    PT_LOAD,
    PT_NOTE,
)
from kexec_py.formats.notes import note_bytes
from kexec_py.formats.vmcore import KEXEC_PY_NOTE, NT_KEXEC_PY_BACKUP_MAP
from kexec_py.memmap import Kind, MemoryMap, MemRegion
from kexec_py.ranges import Range, merge, subtract
from kexec_py.segments import Segment

ENCODINGS = ("elfcorehdr", "raw")

RAW_MAGIC = b"KXPYBMAP"
RAW_VERSION = 1
RAW_HEADER = struct.Struct("<8sIIQ")
RAW_PAIR = 16

#: a stock /proc/vmcore reads e_phnum as is: 0xffff (PN_XNUM) is not understood
VMCORE_MAX_PHNUM = 0xFFFE
#: an empty note (n_namesz 0) ends our PT_NOTE, as the kernel's crash notes
#: end: /proc/vmcore walks a PT_NOTE until n_namesz is 0 and reads the header
#: after the last note even at p_memsz (a kernel warning, and a read past its
#: buffer, when nothing ends the list)
END_NOTE = bytes(ELF64LE.nhdr.size)
OWN_NOTE_SIZE = len(note_bytes(KEXEC_PY_NOTE, NT_KEXEC_PY_BACKUP_MAP, bytes(24))) + len(END_NOTE)

#: bitmap membership tests cover physical memory up to this many pages (256 GiB)
_BITMAP_PAGES = 1 << 26


# --- checking a page map against the plan ------------------------------------------------


def _page_ranges(segments: Sequence[Segment]) -> list[Range]:
    """The destination pages of ``segments`` as merged pfn ranges."""
    return merge(Range(s.mem >> PAGE_SHIFT, (s.end + PAGE_SIZE - 1) >> PAGE_SHIFT)
                 for s in segments if s.memsz)


def _first_index(pfns: array[int], ranges: list[Range], want_inside: bool) -> int:
    """Index of the first pfn that is inside (``want_inside``) -- or outside --
    ``ranges``; -1 when there is none.  A byte map and one
    ``operator.itemgetter`` call test a million pfns at C speed."""
    if not pfns:
        return -1
    top = max(max(pfns), ranges[-1].end if ranges else 0) + 1
    if top <= _BITMAP_PAGES:
        bm = bytearray(top)
        for r in ranges:
            bm[r.start:r.end] = b"\x01" * r.size
        hits = operator.itemgetter(*pfns)(bm) if len(pfns) > 1 else (bm[pfns[0]],)
        try:
            return hits.index(1 if want_inside else 0)
        except ValueError:
            return -1
    starts = [r.start for r in ranges]
    for i, p in enumerate(pfns):
        k = bisect_right(starts, p) - 1
        inside = k >= 0 and p < ranges[k].end
        if inside == want_inside:
            return i
    return -1


def validate_pgmap(pm: PageMap, segments: Sequence[Segment]) -> int:
    """Check ``/proc/kexec_pgmap`` against the segments loaded so far and
    return the number of moved pages (``src != dst``).

    Every ``dst_pfn`` must be a page of a loaded segment, appear once, and
    no ``src_pfn`` may be a destination page (the kernel never uses a
    destination as a source); sources are distinct.  A violation means the
    kernel and kexec-py disagree about the image: :class:`ProcfsError`.
    """
    dests = _page_ranges(segments)
    i = _first_index(pm.dst, dests, want_inside=False)
    if i >= 0:
        raise ProcfsError(
            f"/proc/kexec_pgmap line {i + 1}: destination pfn {pm.dst[i]:#x} is in no loaded "
            "segment", "the kernel's page map does not match the load; unload and retry")
    moved_idx = [k for k, (d, s) in enumerate(zip(pm.dst, pm.src, strict=True)) if d != s] \
        if _has_in_place(pm) else None
    src = pm.src if moved_idx is None else array("Q", (pm.src[k] for k in moved_idx))
    j = _first_index(src, dests, want_inside=True)
    if j >= 0:
        line = j if moved_idx is None else moved_idx[j]
        raise ProcfsError(
            f"/proc/kexec_pgmap line {line + 1}: source pfn {pm.src[line]:#x} of destination "
            f"{pm.dst[line]:#x} lies inside a destination segment",
            "the kernel's page map is inconsistent; unload and retry")
    if len(set(pm.dst)) != len(pm.dst):
        raise ProcfsError("/proc/kexec_pgmap names a destination page twice",
                          "the kernel's page map is inconsistent; unload and retry")
    if len(set(src)) != len(src):
        raise ProcfsError("/proc/kexec_pgmap names a source page twice",
                          "the kernel's page map is inconsistent; unload and retry")
    return len(src)


def _has_in_place(pm: PageMap) -> bool:
    return any(d == s for d, s in zip(pm.dst, pm.src, strict=True))


# --- moved pages and runs ------------------------------------------------------------------


@dataclass
class MovedRuns:
    """Maximal runs of moved pages: ``dst[i]`` .. ``dst[i] + count[i]`` went
    to ``src[i]`` .. (pfns), sorted by ``dst``."""

    dst: array[int] = field(default_factory=lambda: array("Q"))
    src: array[int] = field(default_factory=lambda: array("Q"))
    count: array[int] = field(default_factory=lambda: array("Q"))

    @property
    def pages(self) -> int:
        return sum(self.count)

    def translate(self, addr: int) -> int:
        """Where the original contents of physical ``addr`` are now."""
        pfn = addr >> PAGE_SHIFT
        k = bisect_right(self.dst, pfn) - 1
        if k >= 0 and pfn < self.dst[k] + self.count[k]:
            return ((self.src[k] + pfn - self.dst[k]) << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1))
        return addr


def moved_pairs(pm: PageMap) -> tuple[array[int], array[int]]:
    """``(dst, src)`` of the moved pages (``src != dst``), sorted by dst."""
    d, s = pm.dst, pm.src
    if _has_in_place(pm):
        keep = [k for k in range(len(d)) if d[k] != s[k]]
        d = array("Q", (d[k] for k in keep))
        s = array("Q", (s[k] for k in keep))
    if not all(a < b for a, b in zip(d, d[1:])):  # noqa: B905 (lengths differ by one)
        order = sorted(range(len(d)), key=d.__getitem__)
        d = array("Q", (d[k] for k in order))
        s = array("Q", (s[k] for k in order))
    return d, s


def moved_runs(pm: PageMap) -> MovedRuns:
    d, s = moved_pairs(pm)
    out = MovedRuns()
    n = len(d)
    k = 0
    while k < n:
        j = k + 1
        while j < n and d[j] == d[j - 1] + 1 and s[j] == s[j - 1] + 1:
            j += 1
        out.dst.append(d[k])
        out.src.append(s[k])
        out.count.append(j - k)
        k = j
    return out


# --- the elfcorehdr encoding ------------------------------------------------------------------


@dataclass(frozen=True)
class NoteArea:
    """A note area of the original kernel in physical memory (a CPU's
    ``crash_notes``, the VMCOREINFO note) to reference with a PT_NOTE."""

    addr: int
    size: int
    name: str = ""


def core_loads(ram: Sequence[Range], runs: MovedRuns,
               dests: Sequence[Range] = ()) -> list[tuple[int, int, int]]:
    """The PT_LOADs ``(paddr, data_addr, size)`` describing ``ram`` with
    moved runs redirected to their backup copies, sorted by paddr.
    Moved runs are clipped to RAM; RAM between them maps to itself, except
    pages of ``dests`` (the load's destinations): a destination page that
    was not moved was loaded in place -- the kernel took it because it was
    free in the original kernel, and it belongs to the loaded kernel now,
    which cannot read it through /proc/vmcore (ioremap refuses its own
    RAM) -- so it is left out."""
    out: list[tuple[int, int, int]] = []
    holes = merge(dests)

    def identity(lo: int, hi: int) -> None:
        for r in subtract([Range(lo, hi)], holes) if holes else [Range(lo, hi)]:
            out.append((r.start, r.start, r.size))

    nruns = len(runs.dst)
    k = 0
    for r in merge(ram):
        pos = r.start
        # skip runs entirely below this range
        while k < nruns and (runs.dst[k] + runs.count[k]) << PAGE_SHIFT <= r.start:
            k += 1
        j = k
        while j < nruns and runs.dst[j] << PAGE_SHIFT < r.end:
            ds = runs.dst[j] << PAGE_SHIFT
            de = ds + (runs.count[j] << PAGE_SHIFT)
            lo, hi = max(ds, r.start), min(de, r.end)
            if pos < lo:
                identity(pos, lo)
            out.append((lo, (runs.src[j] << PAGE_SHIFT) + (lo - ds), hi - lo))
            pos = hi
            if de > r.end:
                break  # the run continues into the next RAM range
            j += 1
        k = j
        if pos < r.end:
            identity(pos, r.end)
    return out


def elfcorehdr_worst_case(ram: Sequence[Range], dest_pages: int, extra_notes: int = 0) -> int:
    """Bytes of the largest elfcorehdr a load with ``dest_pages``
    destination pages can need (not page rounded)."""
    nram = len(merge(ram))
    phnum = 1 + extra_notes + 2 * dest_pages + 2 * nram
    return ELF64LE.ehdr.size + ELF64LE.phdr.size * phnum + OWN_NOTE_SIZE


def build_elfcorehdr(ram: Sequence[Range], pm: PageMap, *, addr: int, window: Range,
                     notes: Sequence[NoteArea] = (), machine: int = EM_X86_64,
                     dests: Sequence[Range] = ()) -> bytes:
    """The elfcorehdr encoding of ``pm`` (see the module docstring).

    ``addr`` is where the header will lie in physical memory (its own note
    is referenced there); ``ram`` is the original kernel's System RAM;
    ``dests`` the load's destination pages, of which those loaded in place
    are left out (:func:`core_loads`).
    Raises :class:`PlanError` when a stock /proc/vmcore could not read it.
    """
    runs = moved_runs(pm)
    loads = core_loads(ram, runs, dests)
    phnum = 1 + len(notes) + len(loads)
    if phnum > VMCORE_MAX_PHNUM:
        raise PlanError(
            f"the backup map needs {phnum} program headers; /proc/vmcore reads at most "
            f"{VMCORE_MAX_PHNUM}", "use a smaller --mem-min/--mem-max window or --backup-map raw",
            errno.E2BIG)
    eh, ph = ELF64LE.ehdr, ELF64LE.phdr
    note_off = eh.size + ph.size * phnum
    own = note_bytes(KEXEC_PY_NOTE, NT_KEXEC_PY_BACKUP_MAP,
                     struct.pack("<QQQ", window.start, window.end, runs.pages)) + END_NOTE
    buf = bytearray(note_off + len(own))
    buf[:eh.size] = ELF64LE.core_ehdr(machine, phnum)
    pos = eh.size
    ph.pack_into(buf, pos, PT_NOTE, 0, addr + note_off, 0, 0, len(own), len(own), 4)
    pos += ph.size
    for n in notes:
        where = runs.translate(n.addr)
        if (n.addr ^ (n.addr + n.size - 1)) >> PAGE_SHIFT and \
                runs.translate(n.addr + n.size - 1) != where + n.size - 1:
            raise PlanError(f"note area {n.name or ''} at {n.addr:#x} spans pages that were "
                            "moved apart", "load again: the kernel placed its pages differently")
        ph.pack_into(buf, pos, PT_NOTE, 0, where, 0, 0, n.size, n.size, 4)
        pos += ph.size
    pack, step, rwx = ph.pack_into, ph.size, PF_R | PF_W | PF_X
    for paddr, data, size in loads:
        pack(buf, pos, PT_LOAD, rwx, data, 0, paddr, size, size, 0)
        pos += step
    buf[note_off:] = own
    return bytes(buf)


@dataclass
class CoreHeader:
    """An elfcorehdr read back: ``notes`` as ``(addr, size)`` and ``loads``
    as ``(paddr, data_addr, size)``, in header order."""

    machine: int
    notes: list[tuple[int, int]]
    loads: list[tuple[int, int, int]]


def parse_elfcorehdr(data: bytes | memoryview, name: str = "elfcorehdr") -> CoreHeader:
    """Read an elfcorehdr (ours or kexec-tools'): its p_offsets are
    physical addresses, not file offsets, so only the header table is
    checked against ``data``."""
    from kexec_py.formats.vmcore import parse_header, read_phdrs

    hdr = parse_header(data, len(data), name)
    cols = read_phdrs(data, hdr)
    notes: list[tuple[int, int]] = []
    loads: list[tuple[int, int, int]] = []
    for t, off, pa, msz in zip(cols.type, cols.offset, cols.paddr, cols.memsz, strict=True):
        if t == PT_NOTE:
            notes.append((off, msz))
        elif t == PT_LOAD:
            loads.append((pa, off, msz))
    return CoreHeader(hdr.machine, notes, loads)


# --- the raw encoding ----------------------------------------------------------------------------


def raw_worst_case(dest_pages: int) -> int:
    return RAW_HEADER.size + RAW_PAIR * dest_pages


def build_raw(pm: PageMap) -> bytes:
    """The raw encoding of ``pm`` (see the module docstring)."""
    d, s = moved_pairs(pm)
    n = len(d)
    pairs = array("Q", bytes(16 * n))
    pairs[0::2] = d
    pairs[1::2] = s
    if sys.byteorder != "little":  # pragma: no cover
        pairs.byteswap()
    return RAW_HEADER.pack(RAW_MAGIC, RAW_VERSION, PAGE_SIZE, n) + pairs.tobytes()


def parse_raw(data: bytes | memoryview) -> PageMap:
    """Read a raw backup map back (for consumers and tests)."""
    if len(data) < RAW_HEADER.size:
        raise ProcfsError(f"raw backup map: {len(data)} bytes, shorter than its header")
    magic, ver, psz, n = RAW_HEADER.unpack_from(data)
    if magic != RAW_MAGIC or ver != RAW_VERSION or psz != PAGE_SIZE:
        raise ProcfsError(f"raw backup map: bad header {magic!r} version {ver} page {psz}")
    end = RAW_HEADER.size + RAW_PAIR * n
    if end > len(data):
        raise ProcfsError(f"raw backup map: {n} pairs do not fit in {len(data)} bytes")
    pairs = array("Q", bytes(data[RAW_HEADER.size:end]))
    if sys.byteorder != "little":  # pragma: no cover
        pairs.byteswap()
    return PageMap(pairs[0::2], pairs[1::2])


# --- the loaded kernel's command line -----------------------------------------------------------

_SIZE_SUFFIX = {"k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_MEMPARSE = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)$")


def memparse(text: str) -> int:
    """The kernel's ``memparse()``: a C integer (0x.. hex, 0.. octal) with
    an optional K/M/G/T/P/E suffix."""
    m = _MEMPARSE.match(text.strip())
    if not m:
        raise ValueError(f"not a memory size: {text!r}")
    value = int(m.group(1), 16) if m.group(1)[:2].lower() == "0x" else \
        int(m.group(1), 8) if m.group(1).startswith("0") and len(m.group(1)) > 1 else \
        int(m.group(1))
    suffix = m.group(2).lower()
    return value << _SIZE_SUFFIX[suffix] if suffix else value


def parse_size_at(value: str) -> tuple[int, int]:
    """``<size>@<addr>`` (both memparse) -> ``(size, addr)``."""
    size, sep, addr = value.partition("@")
    if not sep:
        raise ValueError(f"expected <size>@<addr>, got {value!r}")
    return memparse(size), memparse(addr)


def find_param(cmdline: str, name: str) -> str | None:
    """The value of the last ``name=`` on ``cmdline`` (the kernel's rule)."""
    found = None
    for tok in cmdline.split():
        if tok.startswith(name + "="):
            found = tok[len(name) + 1:]
    return found


def _kib(x: int) -> str:
    return f"{x >> 10}K"


def confine_cmdline(memmap: Sequence[MemRegion], usable: Sequence[Range]) -> list[str]:
    """Parameters that confine the loaded kernel to ``usable``, as
    kexec-tools does for crash kernels: ``memmap=exactmap``, one
    ``memmap=<size>K@<start>K`` per usable range (whole KiB inside it),
    and ``memmap=<size>K#<start>K`` for every ACPI table and ACPI NVS region
    of the memory map, so that the kernel still finds ACPI."""
    out = ["memmap=exactmap"]
    for r in merge(usable):
        lo, hi = (r.start + 1023) & ~1023, r.end & ~1023
        if lo < hi:
            out.append(f"memmap={_kib(hi - lo)}@{_kib(lo)}")
    for m in memmap:
        if m.kind in (Kind.ACPI_TABLES, Kind.ACPI_NVS):
            lo, hi = m.start & ~1023, (m.end + 1023) & ~1023
            out.append(f"memmap={_kib(hi - lo)}#{_kib(lo)}")
    return out


# --- the whole window: placement, worst case, parameter ------------------------------------------


def window_ram(memmap: Sequence[MemRegion], window: Range) -> list[Range]:
    """Whole pages of System RAM inside ``window`` (partial pages at the
    edges of RAM cannot be destinations, so they are neither saved nor
    given to the loaded kernel)."""
    out: list[Range] = []
    for r in MemoryMap.of(memmap).system_ram():
        c = r.intersect(window)
        if c is None:
            continue
        lo = (c.start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        hi = c.end & ~(PAGE_SIZE - 1)
        if lo < hi:
            out.append(Range(lo, hi))
    return out


#: the loaded kernel needs RAM below this (x86: its real-mode trampoline)
LOW_MEMORY = Range(0, 1 << 20)


@dataclass
class WindowLayout:
    """Where the backup map goes for a ``--load-preserve-context`` load
    confined to ``window``: ``region`` (the placeholder, at the top of the
    window's RAM), the parameters for the loaded kernel's command line,
    and the RAM left for the kernel's own segments (``kernel_ram``).
    ``ram`` is every page that is backed up: the window's RAM and ``low``,
    the RAM below 1 MiB outside the window (empty when the window covers
    it), which the loaded kernel gets too."""

    window: Range
    encoding: str
    ram: list[Range]
    region: Range
    worst_case: int
    cmdline: list[str]
    kernel_ram: list[Range]
    low: list[Range] = field(default_factory=list)

    @property
    def dest_pages(self) -> int:
        return sum(r.size for r in self.ram) >> PAGE_SHIFT


def low_ram(memmap: Sequence[MemRegion], window: Range) -> list[Range]:
    """Whole pages of System RAM below 1 MiB that ``window`` leaves out."""
    out: list[Range] = []
    for r in window_ram(memmap, LOW_MEMORY):
        out.extend(_minus(r, window))
    return out


def plan_window(memmap: Sequence[MemRegion], window: Range, encoding: str = "elfcorehdr",
                extra_notes: int = 0, low_memory: bool = True) -> WindowLayout:
    """Reserve the backup map's placeholder in ``window`` and confine the
    loaded kernel to the rest (plus, with ``low_memory``, the RAM below
    1 MiB that the window leaves out: see the module docstring).

    Every page of that RAM becomes a destination (the kernel's segments,
    the placeholder, and zero-filled backup segments over the rest), so the
    worst case is computed from it alone.
    """
    if encoding not in ENCODINGS:
        raise PlanError(f"--backup-map {encoding}: expected one of {', '.join(ENCODINGS)}")
    ram = window_ram(memmap, window)
    if not ram:
        raise PlanError(f"the window {window} holds no whole page of System RAM",
                        "choose --mem-min/--mem-max inside System RAM (kexec-py inspect)",
                        errno.EADDRNOTAVAIL)
    low = low_ram(memmap, window) if low_memory else []
    ram = merge([*low, *ram])
    pages = sum(r.size for r in ram) >> PAGE_SHIFT
    all_ram = MemoryMap.of(memmap).system_ram()
    worst = (elfcorehdr_worst_case(all_ram, pages, extra_notes) if encoding == "elfcorehdr"
             else raw_worst_case(pages))
    size = (worst + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    region = None
    for r in reversed(ram):
        if r.size >= size and r.overlaps(window):
            region = Range(r.end - size, r.end)
            break
    if region is None or size * 2 > pages << PAGE_SHIFT or not window.covers(region):
        raise PlanError(
            f"the backup map needs up to {size:#x} bytes, and the window {window} "
            f"({pages} pages of RAM) has no room for it and a kernel",
            "widen --mem-min/--mem-max", errno.ENOMEM)
    kernel_ram = [x for r in ram for x in _minus(r, region)]
    param = "elfcorehdr" if encoding == "elfcorehdr" else "kexec_backup_map"
    cmd = confine_cmdline(memmap, kernel_ram) + [f"{param}={size:#x}@{region.start:#x}"]
    return WindowLayout(window, encoding, ram, region, worst, cmd, kernel_ram, low)


def _minus(r: Range, hole: Range) -> list[Range]:
    out = []
    if r.start < hole.start:
        out.append(Range(r.start, min(r.end, hole.start)))
    if hole.end < r.end:
        out.append(Range(max(r.start, hole.end), r.end))
    return out if r.overlaps(hole) else [r]


def parameter_builder(layout: WindowLayout, memmap: Sequence[MemRegion],
                      notes: Sequence[NoteArea] = (),
                      machine: int = EM_X86_64) -> Callable[[PageMap], bytes]:
    """The function that turns the page map into the parameter's bytes."""
    ram = MemoryMap.of(memmap).system_ram()

    def build(pm: PageMap) -> bytes:
        if layout.encoding == "raw":
            return build_raw(pm)
        return build_elfcorehdr(ram, pm, addr=layout.region.start, window=layout.window,
                                notes=notes, machine=machine, dests=layout.ram)

    return build

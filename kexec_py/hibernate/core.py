"""Kexec-based hibernation: planning the hibernation load and the resume,
the hibernating kernel's /proc/vmcore, and saving it as an image.

- :func:`plan_hibernate_load`: ``load --staged --load-preserve-context
  --mem-min A --mem-max B``: the kernel's segments placed below the backup
  map's placeholder (top of the window), zero-filled backup segments over
  every other page of the window's RAM, the placeholder in KS_start and the
  map (:mod:`kexec_py.hibernate.window`) in KS_final; the loaded kernel's command
  line confines it to the window (``memmap=exactmap ...``) and says where
  the map is.
- :func:`plan_resume`: every PT_LOAD of an image at its physical address,
  entered at the image's jump-back entry.
- :class:`VmcoreView`: ``/proc/vmcore`` of a kernel booted with
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
- :func:`save_image`: a core (``/proc/vmcore``, a file, the model's view)
  streamed to an image with kexec-py's jump-back note, page-filtered.
"""

from __future__ import annotations

import errno
import os
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kexec_py.boundary import procfs
from kexec_py.boundary.abi import KEXEC_SEGMENT_MAX, PAGE_SHIFT, PAGE_SIZE
from kexec_py.boundary.backends import Backend
from kexec_py.errors import FormatError, KexecError, PlanError, ProcfsError, UnsupportedError
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
    CoreImage,
    ElfHeader,
    parse_header,
    read_phdrs,
)
from kexec_py.hibernate import window as backupmap
from kexec_py.hibernate.window import NoteArea, WindowLayout
from kexec_py.load import loader
from kexec_py.load.loader import LoadRequest
from kexec_py.load.staging import Parameter, StagedPlan, plan_load
from kexec_py.ranges import MemRegion, Range, merge, ram_ranges
from kexec_py.segments import Segment, fill_window

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
        elfsz = _up(h.phoff + phnum * h.phentsize)
        notes_sz = _up(len(notes))
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
                start, end = _down(p), _up(p + cols.memsz[i])
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
    return CoreLayout(h, notes, bytes(notes_raw), loads)


# --- note areas of the running kernel (for the elfcorehdr's PT_NOTEs) -------------------


def note_areas(root: Path | str) -> list[NoteArea]:
    """Where the running kernel keeps the notes a kdump kernel reads: every
    CPU's ``crash_notes`` (/sys/devices/system/cpu/cpuN/crash_notes, a
    physical address in hex, and crash_notes_size) and the VMCOREINFO note
    (/sys/kernel/vmcoreinfo: "<address> <size>" in hex), as kexec-tools
    reads them.  Missing files (no CONFIG_CRASH_DUMP, the model) give none."""
    out: list[NoteArea] = []
    base = Path(root) / "sys/devices/system/cpu"
    try:
        cpus = sorted((p for p in base.iterdir() if p.name[3:].isdigit()
                       and p.name.startswith("cpu")), key=lambda p: int(p.name[3:]))
    except OSError:
        cpus = []
    for cpu in cpus:
        rel = f"sys/devices/system/cpu/{cpu.name}"
        addr = procfs.read_text(root, f"{rel}/crash_notes")
        size = procfs.read_text(root, f"{rel}/crash_notes_size")
        if addr is None:
            continue
        try:
            out.append(NoteArea(int(addr.strip(), 16),
                                int(size.strip()) if size is not None else 0x400, cpu.name))
        except ValueError as e:
            raise ProcfsError(f"{root}/{rel}/crash_notes: not a hex address ({e})") from None
    vmci = procfs.read_text(root, "sys/kernel/vmcoreinfo")
    if vmci is not None and vmci.split():
        try:
            a, s = vmci.split()[:2]
            out.append(NoteArea(int(a, 16), int(s, 16), "vmcoreinfo"))
        except ValueError as e:
            raise ProcfsError(f"{root}/sys/kernel/vmcoreinfo: expected '<addr> <size>' in hex "
                              f"({e})") from None
    return out


# --- the hibernation load: a preserve-context kernel with the backup map --------------


def call_budget(memmap: Sequence[MemRegion], root: Path | str | None = None) -> int:
    """Bytes of segments one kexec_load call may carry: the kernel refuses
    more than half of ``totalram_pages()``.  That is MemTotal of
    ``ROOT/proc/meminfo`` when there is one (it is what a kernel booted with
    ``mem=`` or confined by ``memmap=`` really has), else the RAM of the
    memory map, which is a little more; kexec-py keeps to 90 % of the half."""
    pages = sum((r.end >> PAGE_SHIFT) - ((r.start + PAGE_SIZE - 1) >> PAGE_SHIFT)
                for r in ram_ranges(memmap))
    if root is not None:
        total = procfs.mem_total(root)
        if total is not None:
            pages = min(pages, total >> PAGE_SHIFT) if pages else total >> PAGE_SHIFT
    return max(PAGE_SIZE, (pages // 2) * 9 // 10 * PAGE_SIZE)


def _meminfo_root(backend: Backend) -> Path | None:
    """Where the running kernel's /proc/meminfo is: only the linux backend
    has one (the model's RAM is its memory map)."""
    return backend.root if backend.name == "linux" else None


@dataclass
class HibernateLoad:
    """A planned hibernation load: the staged plan (its parameter builds
    the backup map), the window layout and the loaded kernel's command
    line."""

    staged: StagedPlan
    layout: WindowLayout
    cmdline: str
    notes: list[str]


def plan_hibernate_load(backend: Backend, req: LoadRequest, *, staged: str = "auto",
                        encoding: str = "elfcorehdr", rng_seed: bytes | None = None,
                        max_segments: int = KEXEC_SEGMENT_MAX) -> HibernateLoad:
    """Plan ``load --staged --load-preserve-context --mem-min A --mem-max B``.

    Like kexec-tools, every page of the window's RAM that no kernel segment
    uses becomes a zero-filled backup segment, so the whole window is
    swapped at the jump and comes back on return; so is the RAM below
    1 MiB when the window leaves it out (the loaded kernel needs some
    there).  The backup map's placeholder takes the top of the window; the
    loaded kernel is confined to the rest and the low memory
    (``memmap=exactmap``) and told where the map is (``elfcorehdr=`` or
    ``kexec_backup_map=``).  Calls nothing.
    """
    if req.crash:
        raise UnsupportedError("a hibernation load cannot be a crash kernel (-p)",
                               "drop -p; staged loads are refused for crash kernels")
    memmap = backend.memory_map()
    within = loader.placement_window(req.mem_min, req.mem_max)
    areas = note_areas(backend.root) if encoding == "elfcorehdr" else []
    layout = backupmap.plan_window(memmap, within, encoding, extra_notes=len(areas))
    cmdline = " ".join(t for t in [req.cmdline or "", *layout.cmdline] if t)
    kernel, initrd = loader.map_inputs(req)
    opts = loader.KernelOptions(
        cmdline=cmdline, mem_min=req.mem_min, mem_max=layout.region.start - 1,
        preserve_context=True, running_boot_params=loader.running_boot_params(backend.root),
        rng_seed=rng_seed, image_type=req.image_type)
    segs, entry, notes = loader.kernel_segments(kernel, initrd, memmap, opts)
    if req.entry is not None:
        notes.append(f"--entry {req.entry:#x} replaces the entry stub at {entry:#x}")
        entry = req.entry
    placeholder = Segment(layout.region.start, layout.region.size, 0, None, "backup map")
    # pages of the window the kernel's own fill left out (above the placeholder),
    # and the low memory the loaded kernel gets too
    extra = fill_window([*segs, placeholder], layout.ram, within, "window")
    for r in layout.low:
        extra += fill_window(segs, layout.ram, r, "low memory")
    segs = sorted(segs + extra, key=lambda s: s.mem)
    dest = merge([Range(s.mem, s.end) for s in segs] + [layout.region])
    if dest != merge(layout.ram):
        raise PlanError(
            f"the loaded kernel's segments {describe(dest)} do not cover exactly the window's "
            f"RAM {describe(layout.ram)}",
            "a segment lies outside --mem-min/--mem-max; this is a bug in kexec-py")
    param = Parameter(encoding, layout.region.start, layout.region.size,
                      backupmap.parameter_builder(layout, memmap, areas))
    sp = plan_load(segs, entry, flags=loader.kexec_load_flags(preserve_context=True),
                   staged=staged, supported=backend.staged_supported(), parameter=param,
                   max_call_bytes=call_budget(memmap, _meminfo_root(backend)),
                   max_segments=max_segments)
    pages = layout.dest_pages
    sp.plan.notes[:0] = notes
    if layout.low:
        sp.plan.notes.append(
            f"low memory {describe(layout.low)} is backed up too and given to the loaded "
            "kernel: an x86 kernel needs RAM below 1 MiB for its real-mode trampoline")
    sp.plan.notes.append(
        f"backup map ({encoding}): up to {layout.worst_case:#x} bytes at {layout.region} for "
        f"{pages} destination pages; the loaded kernel is confined to the window with "
        f"{' '.join(layout.cmdline)}")
    if encoding == "elfcorehdr" and 1 + len(areas) + 2 * pages + 2 * len(layout.ram) > \
            backupmap.VMCORE_MAX_PHNUM:
        sp.plan.notes.append(
            "warning: in the worst case the backup map needs more than 65534 program "
            "headers, which /proc/vmcore cannot read; the real count is checked before "
            "KS_final (a smaller window always fits)")
    return HibernateLoad(sp, layout, cmdline, sp.plan.notes)


def plan_staged_kernel(backend: Backend, req: LoadRequest, *, staged: str = "auto",
                       rng_seed: bytes | None = None,
                       max_segments: int = KEXEC_SEGMENT_MAX) -> StagedPlan:
    """``load --staged`` of a kernel without the hibernation window: the
    kexec_load segments of ``req`` (as ``-c`` places them), packed into
    stages only when they need it (``auto``) or always."""
    memmap = backend.memory_map()
    kernel, initrd = loader.map_inputs(req)
    opts = loader.KernelOptions(
        cmdline=req.cmdline or "", mem_min=req.mem_min, mem_max=req.mem_max,
        preserve_context=req.preserve_context,
        running_boot_params=loader.running_boot_params(backend.root), rng_seed=rng_seed,
        image_type=req.image_type)
    segs, entry, notes = loader.kernel_segments(kernel, initrd, memmap, opts)
    if req.entry is not None:
        notes.append(f"--entry {req.entry:#x} replaces the entry stub at {entry:#x}")
        entry = req.entry
    sp = plan_load(segs, entry, flags=loader.kexec_load_flags(req.preserve_context),
                   staged=staged, supported=backend.staged_supported(),
                   max_call_bytes=call_budget(memmap, _meminfo_root(backend)),
                   max_segments=max_segments)
    sp.plan.notes[:0] = notes
    return sp


def describe(ranges: Sequence[Range], limit: int = 3) -> str:
    shown = ", ".join(str(r) for r in ranges[:limit])
    return shown + (f" and {len(ranges) - limit} more" if len(ranges) > limit else "")


# --- resume ---------------------------------------------------------------------------


def check_image_in_ram(segs: Sequence[Segment], memmap: Sequence[MemRegion]) -> None:
    """Every segment of an image must lie in RAM of this machine (the
    kernel would write wherever it is told; kexec-tools refuses too)."""
    ram = merge([m.range for m in memmap if m.is_ram or m.kind == "Crash kernel"])
    starts = [r.start for r in ram]
    for s in segs:
        k = bisect_right(starts, s.mem) - 1
        if k < 0 or s.end > ram[k].end:
            raise PlanError(
                f"the image's memory {s.describe()} is not inside this machine's RAM "
                f"({describe(ram)})",
                "resume the image on the machine it was saved on (same memory map)",
                errno.EADDRNOTAVAIL)


def plan_resume(backend: Backend, image: CoreImage, *, entry: int | None = None,
                staged: str = "auto", max_segments: int = KEXEC_SEGMENT_MAX) -> StagedPlan:
    """Plan loading every PT_LOAD of ``image`` at its physical address,
    entered at ``entry`` (default: the jump-back entry in the image's
    note).  A normal load (not preserve context): ``exec`` then jumps into
    the hibernated kernel, which restores itself."""
    if entry is None:
        entry = image.jump_back_entry
        if entry is None:
            raise FormatError(
                f"{image.name} does not say where to jump: it has no kexec-py note with the "
                "jump-back entry", "give --entry (the kexec_jump_back_entry= value the "
                "hibernating kernel saw on its command line)")
    memmap = backend.memory_map()
    segs = image.segments()
    check_image_in_ram(segs, memmap)
    sp = plan_load(segs, entry, flags=loader.kexec_load_flags(), staged=staged,
                   supported=backend.staged_supported(),
                   max_call_bytes=call_budget(memmap, _meminfo_root(backend)),
                   max_segments=max_segments)
    runs = len(segs)
    sp.plan.notes.insert(0, f"{image.name}: {len(image.loads)} PT_LOAD(s) as {runs} segment(s), "
                            f"{image.loads.total_memsz:#x} bytes of memory, "
                            f"{image.loads.total_filesz:#x} from the file; entry {entry:#x}")
    return sp


# --- the hibernating kernel: its command line and its /proc/vmcore -------------------

ZERO_DIGITS = "kexec_jump_back_entry=0x" + "0" * 16


def jump_back_entry(cmdline: str) -> int | None:
    """The ``kexec_jump_back_entry=`` value on a command line (None when it
    is missing, or still the zeros the entry stub had not replaced)."""
    value = backupmap.find_param(cmdline, "kexec_jump_back_entry")
    if value is None:
        return None
    try:
        v = int(value, 16)
    except ValueError:
        raise FormatError(f"kexec_jump_back_entry={value} on the command line is not hex",
                          "give the entry with --entry") from None
    return v or None


def model_cmdline(backend: Any) -> str:
    """The model's running kernel's /proc/cmdline.  The model does not run
    our entry stub, which writes the jump-back address into the 16 zero
    digits of ``kexec_jump_back_entry=0x...`` at the jump; this does it from
    the model's record of the jump."""
    run = backend.running()
    cmd = str(run["cmdline"])
    entered = run.get("entered") or {}
    back = entered.get("jump_back_entry")
    if back and ZERO_DIGITS in cmd:
        cmd = cmd.replace(ZERO_DIGITS, f"kexec_jump_back_entry=0x{back:016x}")
    return cmd


def vmcore_view(read_phys: PhysReader, cmdline: str, name: str = "/proc/vmcore") -> VmcoreView:
    """/proc/vmcore of a kernel booted with ``cmdline``: found through its
    ``elfcorehdr=<size>@<addr>``."""
    value = backupmap.find_param(cmdline, "elfcorehdr")
    if value is None:
        raise KexecError("the running kernel has no elfcorehdr= on its command line, so it "
                         "has no /proc/vmcore",
                         "save-image runs in the hibernating kernel (loaded with 'kexec-py load "
                         "--staged --load-preserve-context ...' and entered with 'exec')")
    try:
        size, addr = backupmap.parse_size_at(value)
    except ValueError:
        raise KexecError(f"elfcorehdr={value}: expected <size>@<addr>",
                         "kexec-py passes elfcorehdr=<size>@<addr>") from None
    return VmcoreView(read_phys, addr, size, name)


def model_vmcore(backend: Any) -> VmcoreView:
    """The model's running kernel's /proc/vmcore (``--from model:``)."""
    if not hasattr(backend, "read_phys"):
        raise UnsupportedError("--from model: needs --backend model",
                               "give the path of /proc/vmcore instead")
    return vmcore_view(backend.read_phys, model_cmdline(backend), "model:/proc/vmcore")


# --- save-image ---------------------------------------------------------------------------


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

    layout = read_layout(src)
    total = layout.data_bytes
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
        pieces = list(layout.loads)
    else:
        tick = ticker("scan", total)
        for paddr, off, filesz, memsz in layout.loads:
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
                                                   for n in layout.notes
                                                   if n.name != KEXEC_PY_NOTE]
    if jump_back is not None:
        notes.append((KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK, struct.pack("<Q", jump_back)))
    stats = write_core(out, loads, notes, machine=layout.elf.machine)
    return SaveResult(str(out), stats.file_size, stats.data_bytes, stats.loads,
                      len(layout.loads), zero_pages, jump_back)

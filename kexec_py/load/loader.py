"""Loading a kernel: the choice of system call and the call itself.

``cli.py`` turns options into a :class:`LoadRequest`; this module decides
how to load it and talks to a backend.  Nothing here prints.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexec_py.arch.x86 import bootparams, placement
from kexec_py.boundary import abi
from kexec_py.boundary.backends import Backend
from kexec_py.errors import FormatError, KexecError, PlanError, SyscallError, UnsupportedError
from kexec_py.formats import bzimage
from kexec_py.formats.elfstruct import ELFMAG, ET_CORE, layout_named_by
from kexec_py.load.plan import Plan
from kexec_py.ranges import MemRegion, Range, window
from kexec_py.segments import Layout, Segment, check_segments


@dataclass
class LoadRequest:
    kernel: Path
    initrd: Path | None = None
    cmdline: str | None = None
    crash: bool = False
    #: "auto" (kexec_file_load, then kexec_load on ENOSYS/EINVAL/ENOEXEC/ENOTSUP),
    #: "file" (-s), "load" (-c)
    syscall: str = "auto"
    #: --entry: the entry point passed to kexec_load instead of ours
    entry: int | None = None
    #: --mem-min / --mem-max (inclusive, as kexec-tools takes it)
    mem_min: int = 0
    mem_max: int | None = None
    #: --load-preserve-context: KEXEC_PRESERVE_CONTEXT (kexec jump), kexec_load only
    preserve_context: bool = False
    #: -t/--type: "bzImage64" or "elf-x86_64" (kexec-tools' names); None detects
    image_type: str | None = None


@dataclass
class LoadResult:
    syscall: str
    flags: int
    kernel: str
    initrd: str | None
    cmdline: str | None
    #: the kexec_file_load error that made "auto" fall back, if any
    fallback_from: str | None = None
    #: the kexec_load plan that was carried out (None for kexec_file_load)
    plan: Plan | None = None


def _open(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(f"{what} {path} does not exist", f"check the {what} path") from None
    except IsADirectoryError:
        raise FormatError(f"{what} {path} is a directory", f"give the {what} file") from None
    except OSError as e:
        raise KexecError(f"cannot open {what} {path}: {e.strerror}",
                         "check permissions (run as root?)") from None


def file_load_flags(req: LoadRequest) -> int:
    flags = 0
    if req.crash:
        flags |= abi.KEXEC_FILE_ON_CRASH
    if req.initrd is None:
        flags |= abi.KEXEC_FILE_NO_INITRAMFS
    return flags


def load_file(backend: Backend, req: LoadRequest) -> LoadResult:
    """Load with kexec_file_load(2): the kernel parses the image itself."""
    kfd = _open(req.kernel, "kernel")
    ifd = -1
    try:
        if req.initrd is not None:
            ifd = _open(req.initrd, "initrd")
        flags = file_load_flags(req)
        cmd = req.cmdline.encode() if req.cmdline is not None else None
        try:
            backend.kexec_file_load(kfd, ifd, cmd, flags)
        except SyscallError as e:
            if e.errno == errno.ENOEXEC:
                e.message += f" for {req.kernel}"
            raise
        return LoadResult("kexec_file_load", flags, str(req.kernel),
                          str(req.initrd) if req.initrd else None, req.cmdline)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def unload(backend: Backend, crash: bool) -> str:
    """Unload the normal (or crash) image.  kexec_load with no segments
    unloads; where kexec_load is missing, kexec_file_load's UNLOAD flag.
    Returns the syscall that did it."""
    try:
        backend.kexec_load(0, [], abi.KEXEC_ON_CRASH if crash else 0)
        return "kexec_load"
    except SyscallError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        first = e
    flags = abi.KEXEC_FILE_UNLOAD | (abi.KEXEC_FILE_ON_CRASH if crash else 0)
    try:
        backend.kexec_file_load(-1, -1, None, flags)
    except SyscallError as e:
        raise first if e.errno == errno.ENOSYS else e from None
    return "kexec_file_load"


# --- kexec_load: images mapped, segments planned, one call -----------------------

#: kexec_file_load errors after which "auto" tries kexec_load (kexec-tools
#: 2.0.27+); signature errors (EKEYREJECTED, ENOKEY, EBADMSG, EPERM) are final
FALLBACK_ERRNOS = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOEXEC, errno.ENOTSUP})
#: -t/--type values (kexec-tools' names) -> what image_kind() says
IMAGE_TYPES = {"bzImage64": "bzImage", "elf-x86_64": "elf-kernel"}


class MappedFile:
    """A file mapped read-only.  ``data`` is a memoryview of the whole file;
    segment buffers are slices of it, so nothing is copied into Python
    bytes.  The mapping stays alive as long as any slice does."""

    def __init__(self, path: Path, what: str, mm: mmap.mmap) -> None:
        self.path = path
        self.what = what
        self._mm = mm
        self.data = memoryview(mm)

    @property
    def size(self) -> int:
        return len(self.data)

    def close(self) -> None:
        """Drop the mapping if no slice of it is still in use."""
        try:
            self.data.release()
            self._mm.close()
        except BufferError:
            pass  # a segment still points into it; it goes when the segment does


def map_file(path: Path, what: str) -> MappedFile:
    """Open and mmap ``path`` (``what`` names it in messages: "kernel")."""
    fd = _open(path, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{what} {path} is not a regular file",
                              f"give the {what} as a file (copy a device to a file first)")
        if st.st_size == 0:
            raise FormatError(f"{what} {path} is empty", f"give a non-empty {what} file")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise KexecError(f"cannot map {what} {path}: {e.strerror}",
                         "check that the file is readable") from None
    finally:
        os.close(fd)
    return MappedFile(path, what, mm)


def image_kind(data: memoryview | bytes) -> str:
    """"bzImage", "elf-kernel", "elf-core" or "unknown", from magic numbers
    only (no pyelftools import)."""
    if len(data) >= 18 and bytes(data[:4]) == ELFMAG:
        # e_type is at the same offset in both classes
        e_type = layout_named_by(data).ehdr.get(data, "e_type")
        return "elf-core" if e_type == ET_CORE else "elf-kernel"
    if bzimage.probe(data):
        return "bzImage"
    return "unknown"


def running_boot_params(root: Path) -> bytes | None:
    """The running kernel's boot_params (/sys/kernel/boot_params/data, root
    only), or None when it cannot be read."""
    from kexec_py.boundary import procfs
    from kexec_py.errors import ProcfsError

    try:
        data = procfs.read_bytes(root, "sys/kernel/boot_params/data")
    except (ProcfsError, OSError):
        return None
    return data if data and len(data) >= 0x240 else None


@dataclass
class KernelOptions:
    """What shapes a kernel's segments besides the files and the memory map."""

    cmdline: str = ""
    mem_min: int = 0
    mem_max: int | None = None
    preserve_context: bool = False
    #: the running kernel's boot_params (screen_info, acpi_rsdp_addr, subarch)
    running_boot_params: bytes | None = None
    #: 32 random bytes for a SETUP_RNG_SEED setup_data, or None
    rng_seed: bytes | None = None
    image_type: str | None = None


def placement_window(mem_min: int, mem_max: int | None) -> Range:
    """The --mem-min/--mem-max window, below x86_64's kexec destination limit."""
    from kexec_py.segments import X86_64_DESTINATION_LIMIT

    if mem_max is not None and mem_max < mem_min:
        raise PlanError(f"--mem-max {mem_max:#x} is below --mem-min {mem_min:#x}",
                        "give --mem-min <= --mem-max")
    w = window(mem_min, mem_max)
    limit = Range(0, X86_64_DESTINATION_LIMIT)
    clipped = w.intersect(limit)
    if clipped is None:
        raise PlanError(f"--mem-min {mem_min:#x} is above the kexec destination limit "
                        f"{X86_64_DESTINATION_LIMIT:#x}", "lower --mem-min")
    return clipped


def kernel_segments(kernel: MappedFile, initrd: MappedFile | None,
                    memmap: Sequence[MemRegion], opts: KernelOptions,
                    ) -> tuple[list[Segment], int, list[str]]:
    """The segments and entry point of a kernel load through kexec_load.

    Pure but for the imports: the memory map, the running boot_params and
    the RNG seed come in as arguments.  Post-conditions: the segments are
    sorted by address, page aligned, inside System RAM and the window, and
    disjoint; the entry is our stub (:mod:`kexec_py.arch.x86.entry`).  Packing
    them into calls is a separate step (:func:`pack_plan`, or the staged
    planner).
    """
    name = str(kernel.path)
    kind = image_kind(kernel.data)
    if opts.image_type is not None:
        want = IMAGE_TYPES.get(opts.image_type)
        if want is None:
            raise FormatError(f"unknown image type {opts.image_type!r}",
                              f"kexec-py knows {', '.join(IMAGE_TYPES)}")
        if want != kind:
            found = next((t for t, k in IMAGE_TYPES.items() if k == kind), kind)
            raise FormatError(f"{name} is not of type {opts.image_type}: it is {found}",
                              f"drop -t, or give -t {found}" if found in IMAGE_TYPES
                              else "give a bzImage or an ELF vmlinux")
    if kind == "elf-core":
        raise FormatError(f"{name} is an ELF core (a dump or hibernation image), not a kernel",
                          f"resume it with 'kexec-py resume {name}'")
    if kind == "unknown":
        raise FormatError(f"{name} is neither a bzImage nor an ELF file",
                          "give an x86_64 bzImage (/boot/vmlinuz-*) or an ELF vmlinux")
    ram = placement.placement_ram(memmap)
    if not ram:
        raise PlanError("the memory map has no System RAM", "check the memory map (--root)")
    within = placement_window(opts.mem_min, opts.mem_max)
    layout = Layout(ram, within)
    boot = placement.LinuxBoot(b"", opts.cmdline.encode(), memmap,
                               initrd.data if initrd is not None else None,
                               opts.running_boot_params, opts.rng_seed, opts.preserve_context)
    if kind == "bzImage":
        img = bzimage.parse(kernel.data, name)
        segs, entry, notes = placement.plan(img, boot, layout)
    else:
        boot.header = bzimage.synth_header()
        segs, entry, notes = plan_vmlinux(kernel, boot, layout)
    if opts.preserve_context:
        from kexec_py.segments import fill_window

        fill = fill_window(segs, ram, within)
        segs = sorted(segs + fill, key=lambda s: s.mem)
        notes.append(
            f"--load-preserve-context: {len(fill)} zero segment(s) cover the rest of the RAM "
            f"in {within} ({sum(s.memsz for s in fill):#x} bytes), as kexec-tools does: the "
            "loaded kernel may use it, and the jump swaps it back; confine that kernel to it "
            "(memmap=exactmap ... in --append)")
    return segs, entry, notes


def plan_vmlinux(kernel: MappedFile, boot: placement.LinuxBoot, layout: Layout,
                 ) -> tuple[list[Segment], int, list[str]]:
    """An x86_64 ELF vmlinux: each PT_LOAD at its p_paddr, then the stub and
    boot_params (a synthesized header) as for a bzImage, entering at the
    physical ``e_entry``."""
    from kexec_py.formats import elf

    img = elf.parse(kernel.data, str(kernel.path))
    elf.check_kernel(img)
    segs = elf.load_segments(img, "kernel PT_LOAD")
    for s in segs:
        layout.take(Range(s.mem, s.end), s.name)
    boot.check_cmdline("the kernel")
    res = placement.reserve_entry(layout, boot)
    initrd = placement.place_initrd(layout, boot)
    entry64 = img.physical_entry()
    segs += placement.finish_entry(res, boot, entry64, initrd)
    if initrd is not None:
        segs.append(initrd)
    notes = [f"ELF{img.bits} vmlinux: {len(img.loads)} PT_LOAD(s) at their physical "
             f"addresses, entered at {entry64:#x} through the entry stub at {res.stub:#x} "
             f"with rsi = {res.params:#x}"]
    return sorted(segs, key=lambda s: s.mem), res.stub, notes


def kexec_load_flags(preserve_context: bool = False, crash: bool = False) -> int:
    """kexec_load flags for an x86_64 kernel, the architecture included, as
    kexec-tools sends them (0x3e0000 for a normal load)."""
    flags = abi.KEXEC_ARCH_X86_64
    if preserve_context:
        flags |= abi.KEXEC_PRESERVE_CONTEXT
    if crash:
        flags |= abi.KEXEC_ON_CRASH
    return flags


def pack_plan(segments: Sequence[Segment], entry: int, flags: int, notes: list[str],
              ram_bytes: int | None) -> Plan:
    """One KS_full kexec_load call, checked against the kernel's rules
    (:func:`check_segments`) so that a refusal comes with a better message
    than an errno."""
    from kexec_py.load.plan import Call
    from kexec_py.segments import X86_64_DESTINATION_LIMIT

    check_segments(segments, ram_bytes=ram_bytes, limit=X86_64_DESTINATION_LIMIT)
    return Plan("kexec_load", entry, [Call(abi.Stage.FULL, flags, list(segments))], notes)


def map_inputs(req: LoadRequest) -> tuple[MappedFile, MappedFile | None]:
    kernel = map_file(req.kernel, "kernel")
    initrd = map_file(req.initrd, "initrd") if req.initrd is not None else None
    return kernel, initrd


def plan_kexec_load(backend: Backend, req: LoadRequest, rng_seed: bytes | None = None,
                    ) -> Plan:
    """The kexec_load plan for ``req``, against ``backend``'s memory map.
    Calls nothing."""
    if req.crash:
        raise UnsupportedError(
            "crash kernels through kexec_load need an ELF core header of this kernel's memory, "
            "which kexec-py does not build",
            "load the crash kernel with kexec_file_load: -p -s")
    kernel, initrd = map_inputs(req)
    memmap = backend.memory_map()
    opts = KernelOptions(
        cmdline=req.cmdline or "", mem_min=req.mem_min, mem_max=req.mem_max,
        preserve_context=req.preserve_context,
        running_boot_params=running_boot_params(backend.root),
        rng_seed=rng_seed, image_type=req.image_type)
    segs, entry, notes = kernel_segments(kernel, initrd, memmap, opts)
    if req.entry is not None:
        notes.append(f"--entry {req.entry:#x} replaces the entry stub at {entry:#x}: the "
                     "stub is loaded but nothing jumps to it")
        entry = req.entry
    ram = placement.ram_bytes(memmap)
    if req.preserve_context:
        total = sum(s.memsz for s in segs)
        if total > ram // 2:
            raise PlanError(
                f"--load-preserve-context fills the --mem-min/--mem-max window: "
                f"{total:#x} bytes of segments, more than half of RAM ({ram // 2:#x})",
                "give a window smaller than half of RAM with --mem-min/--mem-max")
    return pack_plan(segs, entry, kexec_load_flags(req.preserve_context), notes, ram)


def file_load_plan(req: LoadRequest, note: str | None = None) -> Plan:
    """What a kexec_file_load would do: no segments (the kernel parses and
    places the image itself).  Checks that the files exist."""
    kernel = map_file(req.kernel, "kernel")
    kind = image_kind(kernel.data)
    kernel.close()
    if kind != "bzImage":
        raise FormatError(
            f"{req.kernel} is not a bzImage ({kind}): on x86_64 kexec_file_load takes only "
            "64-bit bzImages", "load it with kexec_load: -c")
    if req.initrd is not None:
        map_file(req.initrd, "initrd").close()
    flags = file_load_flags(req)
    cmd = "NULL" if req.cmdline is None else repr(req.cmdline)
    notes = [f"kexec_file_load(kernel={req.kernel}, initrd="
             f"{req.initrd if req.initrd is not None else '-1'}, cmdline={cmd}, "
             f"flags={flags:#x}): the kernel parses and places the image"]
    if note:
        notes.append(note)
    return Plan("kexec_file_load", 0, [], notes)


def choose_syscall(req: LoadRequest, kind: str) -> str:
    """"file" or "load" for ``req``: -s and -c as asked; the default tries
    kexec_file_load first (the caller falls back), except where only
    kexec_load can do what was asked (ELF images, --entry, --mem-min,
    --mem-max, --load-preserve-context)."""
    load_only = [opt for opt, on in (("--entry", req.entry is not None),
                                     ("--mem-min", req.mem_min != 0),
                                     ("--mem-max", req.mem_max is not None),
                                     ("--load-preserve-context", req.preserve_context))
                 if on]
    if req.syscall == "file":
        if kind.startswith("elf"):
            raise FormatError(f"{req.kernel} is an ELF image: kexec_file_load takes only "
                              "bzImages on x86_64", "use -c (kexec_load)")
        if load_only:
            raise UnsupportedError(f"{', '.join(load_only)} need kexec_load, not "
                                   "kexec_file_load (-s)", "use -c, or drop -s")
        return "file"
    if req.syscall == "load" or kind.startswith("elf") or load_only:
        return "load"
    return "file"


def dry_run_plan(backend: Backend, req: LoadRequest, rng_seed: bytes | None = None) -> Plan:
    """The plan of ``load`` for --dry-run: what would be called, nothing is."""
    kernel = map_file(req.kernel, "kernel")
    kind = image_kind(kernel.data)
    kernel.close()
    if choose_syscall(req, kind) == "file":
        note = None
        if req.syscall == "auto":
            note = ("if kexec_file_load fails with ENOSYS, EINVAL, ENOEXEC or ENOTSUP, "
                    "kexec-py falls back to kexec_load; -c shows that plan")
        return file_load_plan(req, note)
    return plan_kexec_load(backend, req, rng_seed)


def load(backend: Backend, req: LoadRequest) -> LoadResult:
    """Load ``req``: kexec_file_load, kexec_load, or the first then the
    second (the default, like kexec-tools 2.0.27+)."""
    kernel = map_file(req.kernel, "kernel")
    kind = image_kind(kernel.data)
    kernel.close()
    fallback_from: str | None = None
    if choose_syscall(req, kind) == "file":
        try:
            return load_file(backend, req)
        except SyscallError as e:
            if req.syscall != "auto" or e.errno not in FALLBACK_ERRNOS:
                raise
            fallback_from = e.message
            if req.crash:
                raise UnsupportedError(
                    f"{e.message}; kexec-py cannot fall back to kexec_load for a crash kernel",
                    e.hint) from None
    plan = plan_kexec_load(backend, req, os.urandom(bootparams.RNG_SEED_SIZE))
    call = plan.calls[0]
    backend.kexec_load(plan.entry, call.segments, call.flags)
    return LoadResult("kexec_load", call.flags, str(req.kernel),
                      str(req.initrd) if req.initrd else None, req.cmdline,
                      fallback_from, plan)



# --- inspect -----------------------------------------------------------------------


def _segment_rows(segs: Sequence[Segment]) -> list[dict[str, Any]]:
    return [{"name": s.name, "mem": s.mem, "memsz": s.memsz, "bufsz": s.bufsz} for s in segs]


def inspect_image(path: Path, memmap: Callable[[], Sequence[MemRegion]],
                  root: Path) -> dict[str, Any]:
    """What ``kexec-py inspect`` reports about ``path``: its format, header
    fields, whether kexec_load can boot it (and why not), and the segments
    it would make.  Kernels are placed in ``memmap()`` (without an initrd,
    with an empty command line); a core's PT_LOADs have fixed addresses.
    ``root`` is unused for now but keeps the signature of the readers."""
    del root
    f = map_file(path, "image")
    kind = image_kind(f.data)
    name = str(path)
    report: dict[str, Any] = {"file": name, "format": kind, "size": f.size, "header": [],
                              "loadable": False, "problem": None, "entry": None,
                              "segments": [], "notes": []}
    segs: list[Segment] = []
    if kind == "bzImage":
        img = bzimage.parse(f.data, name)
        report["protocol"] = bzimage.version_str(img.version)
        report["kernel_version"] = img.kernel_version()
        rows = bzimage.header_table(img)
        for r in rows:
            if r["name"] in ("loadflags", "xloadflags"):
                r["flags"] = bzimage.flag_names(r["name"], r["value"])
        report["header"] = rows
        try:
            img.check_loadable()
            report["loadable"] = True
        except FormatError as e:
            report["problem"] = e.message
    elif kind in ("elf-kernel", "elf-core"):
        from kexec_py.formats import elf

        eimg = elf.parse(f.data, name)
        report["header"] = elf.header_table(eimg)
        report["program_headers"] = [
            {"type": p.type, "offset": p.offset, "vaddr": p.vaddr, "paddr": p.paddr,
             "filesz": p.filesz, "memsz": p.memsz, "flags": p.flags}
            for p in eimg.phdrs]
        if kind == "elf-core":
            segs = elf.load_segments(eimg)
            report["loadable"] = True
            report["notes"].append(
                f"an ELF core: {len(eimg.loads)} PT_LOAD(s) go to their p_paddr; resume it "
                f"with 'kexec-py resume {name}'")
            report["segments"] = _segment_rows(segs)
            return report
        try:
            elf.check_kernel(eimg)
            report["loadable"] = True
            report["entry"] = eimg.physical_entry()
        except FormatError as e:
            report["problem"] = e.message
    else:
        raise FormatError(f"{name} is neither a bzImage nor an ELF file",
                          "inspect takes x86 bzImages, ELF kernels and ELF cores")
    if report["loadable"]:
        try:
            segs, entry, notes = kernel_segments(f, None, memmap(),
                                                 KernelOptions(rng_seed=bytes(32)))
            report["entry"] = entry
            report["notes"].extend(notes)
            report["notes"].append("placed in this machine's memory map without an initrd and "
                                   "with an empty command line; 'load --dry-run' shows a load")
        except KexecError as e:
            report["notes"].append(f"segments not planned: {e.message}")
    report["segments"] = _segment_rows(segs)
    return report

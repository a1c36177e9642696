"""A kernel's kexec_load segments, computed in one place.

:func:`kernel_segments` is the pure step (files, memory map and options in;
segments, entry and notes out); :func:`plan_kernel` is the one path from a
:class:`~kexec_py.load.request.LoadRequest` to it that every kexec_load of a
kernel takes (``load -c``, ``load --staged``, the hibernation load): the
options from the request, the running kernel's boot_params, the RNG seed,
and ``--entry``.  How the segments are packed into calls is the caller's
step (:func:`kexec_py.load.execute.pack_plan` or
:func:`kexec_py.load.staging.plan_load`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kexec_py.arch.x86 import placement
from kexec_py.boundary import abi
from kexec_py.boundary.backends import Backend
from kexec_py.errors import PlanError
from kexec_py.formats import bzimage
from kexec_py.load.image import MappedFile
from kexec_py.load.request import LoadRequest
from kexec_py.memmap import MemoryMap, MemRegion
from kexec_py.ranges import Range, window
from kexec_py.segments import X86_64_DESTINATION_LIMIT, Layout, Segment, fill_window

__all__ = ["KernelOptions", "KernelSegments", "kernel_segments", "kexec_load_flags",
           "placement_window", "plan_kernel", "running_boot_params"]


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


@dataclass
class KernelSegments:
    """The segments of a kernel, sorted by address, and where to enter."""

    segments: list[Segment]
    entry: int
    notes: list[str] = field(default_factory=list)


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


def placement_window(mem_min: int, mem_max: int | None) -> Range:
    """The --mem-min/--mem-max window, below x86_64's kexec destination limit."""
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


def kexec_load_flags(preserve_context: bool = False, crash: bool = False) -> int:
    """kexec_load flags for an x86_64 kernel, the architecture included, as
    kexec-tools sends them (0x3e0000 for a normal load)."""
    flags = abi.KEXEC_ARCH_X86_64
    if preserve_context:
        flags |= abi.KEXEC_PRESERVE_CONTEXT
    if crash:
        flags |= abi.KEXEC_ON_CRASH
    return flags


def kernel_segments(kernel: MappedFile, initrd: MappedFile | None,
                    memmap: Sequence[MemRegion], opts: KernelOptions) -> KernelSegments:
    """The segments and entry point of a kernel load through kexec_load.

    Pure but for the imports: the memory map, the running boot_params and
    the RNG seed come in as arguments.  ``kernel`` is a bzImage or an ELF
    vmlinux (:meth:`LoadRequest.check_type` has refused the rest).
    Post-conditions: the segments are sorted by address, page aligned,
    inside System RAM and the window, and disjoint; the entry is our stub
    (:mod:`kexec_py.arch.x86.entry`).
    """
    ram = MemoryMap.of(memmap).loadable_ram()
    if not ram:
        raise PlanError("the memory map has no System RAM", "check the memory map (--root)")
    within = placement_window(opts.mem_min, opts.mem_max)
    layout = Layout(ram, within)
    boot = placement.LinuxBoot(b"", opts.cmdline.encode(), memmap,
                               initrd.data if initrd is not None else None,
                               opts.running_boot_params, opts.rng_seed, opts.preserve_context)
    if kernel.kind == "bzImage":
        img = bzimage.parse(kernel.data, str(kernel.path))
        segs, entry, notes = placement.plan(img, boot, layout)
    else:
        boot.header = bzimage.synth_header()
        segs, entry, notes = _plan_vmlinux(kernel, boot, layout)
    if opts.preserve_context:
        fill = fill_window(segs, ram, within)
        segs = sorted(segs + fill, key=lambda s: s.mem)
        notes.append(
            f"--load-preserve-context: {len(fill)} zero segment(s) cover the rest of the RAM "
            f"in {within} ({sum(s.memsz for s in fill):#x} bytes), as kexec-tools does: the "
            "loaded kernel may use it, and the jump swaps it back; confine that kernel to it "
            "(memmap=exactmap ... in --append)")
    return KernelSegments(segs, entry, notes)


def _plan_vmlinux(kernel: MappedFile, boot: placement.LinuxBoot, layout: Layout,
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


def plan_kernel(backend: Backend, req: LoadRequest, kernel: MappedFile,
                initrd: MappedFile | None, memmap: Sequence[MemRegion], *,
                rng_seed: bytes | None, cmdline: str | None = None,
                mem_max: int | None = None, preserve_context: bool | None = None,
                ) -> KernelSegments:
    """The kernel segments of ``req``: the one path from a request to
    :func:`kernel_segments`.  ``cmdline``, ``mem_max`` and
    ``preserve_context`` replace the request's (the hibernation load
    confines the kernel and extends its command line); ``--entry`` replaces
    the entry point, with a note."""
    req.check_type(kernel.kind)
    opts = KernelOptions(
        cmdline=cmdline if cmdline is not None else req.cmdline or "",
        mem_min=req.mem_min, mem_max=mem_max if mem_max is not None else req.mem_max,
        preserve_context=req.preserve_context if preserve_context is None
        else preserve_context,
        running_boot_params=running_boot_params(backend.root), rng_seed=rng_seed)
    ks = kernel_segments(kernel, initrd, memmap, opts)
    if req.entry is not None:
        ks.notes.append(f"--entry {req.entry:#x} replaces the entry stub at {ks.entry:#x}: "
                        "the stub is loaded but nothing jumps to it")
        ks.entry = req.entry
    return ks

"""Loading the hibernating kernel: ``load --staged --load-preserve-context
--mem-min A --mem-max B``.

The kernel's segments go below the backup map's placeholder (top of the
window), zero-filled backup segments over every other page of the
window's RAM, the placeholder in KS_start and the map
(:mod:`kexec_py.hibernate.window`) in KS_final; the loaded kernel's command
line confines it to the window (``memmap=exactmap ...``) and says where the
map is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kexec_py.boundary import procfs
from kexec_py.boundary.abi import KEXEC_SEGMENT_MAX
from kexec_py.boundary.backends import Backend
from kexec_py.errors import PlanError, ProcfsError, UnsupportedError
from kexec_py.hibernate import window
from kexec_py.hibernate.window import NoteArea, WindowLayout
from kexec_py.load.execute import open_inputs
from kexec_py.load.kernel import kexec_load_flags, placement_window, plan_kernel
from kexec_py.load.request import LoadRequest
from kexec_py.load.staging import Parameter, StagedPlan, call_budget, plan_load
from kexec_py.ranges import Range, describe, merge
from kexec_py.segments import Segment, fill_window

__all__ = ["HibernateLoad", "note_areas", "plan_hibernate_load"]


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
    within = placement_window(req.mem_min, req.mem_max)
    areas = note_areas(backend.root) if encoding == "elfcorehdr" else []
    layout = window.plan_window(memmap, within, encoding, extra_notes=len(areas))
    cmdline = " ".join(t for t in [req.cmdline or "", *layout.cmdline] if t)
    with open_inputs(req) as inputs:
        ks = plan_kernel(backend, req, inputs.image, inputs.initrd_image(), memmap,
                         rng_seed=rng_seed, cmdline=cmdline, mem_max=layout.region.start - 1,
                         preserve_context=True)
    segs, entry, notes = ks.segments, ks.entry, ks.notes
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
                      window.parameter_builder(layout, memmap, areas))
    sp = plan_load(segs, entry, flags=kexec_load_flags(preserve_context=True),
                   staged=staged, supported=backend.staged_supported(), parameter=param,
                   max_call_bytes=call_budget(memmap, backend),
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
            window.VMCORE_MAX_PHNUM:
        sp.plan.notes.append(
            "warning: in the worst case the backup map needs more than 65534 program "
            "headers, which /proc/vmcore cannot read; the real count is checked before "
            "KS_final (a smaller window always fits)")
    return HibernateLoad(sp, layout, cmdline, sp.plan.notes)

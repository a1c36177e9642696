"""``kexec-py inspect``: what an image is and what kexec_load would make of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kexec_py.errors import FormatError, KexecError
from kexec_py.formats import bzimage
from kexec_py.load.image import map_file
from kexec_py.load.kernel import KernelOptions, kernel_segments
from kexec_py.memmap import MemRegion
from kexec_py.segments import Segment

__all__ = ["inspect_image"]


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
    kind = f.kind
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
            ks = kernel_segments(f, None, memmap(), KernelOptions(rng_seed=bytes(32)))
            segs = ks.segments
            report["entry"] = ks.entry
            report["notes"].extend(ks.notes)
            report["notes"].append("placed in this machine's memory map without an initrd and "
                                   "with an empty command line; 'load --dry-run' shows a load")
        except KexecError as e:
            report["notes"].append(f"segments not planned: {e.message}")
    report["segments"] = _segment_rows(segs)
    return report

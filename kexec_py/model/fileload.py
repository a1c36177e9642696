"""What the model's ``kexec_file_load`` does with a bzImage (x86_64).

The kernel reads both files, probes the kernel (``bzImage64_probe``:
at least two sectors, "HdrS" at 0x202, boot flag 0xAA55 at 0x1fe,
protocol >= 2.12, LOADED_HIGH, XLF_KERNEL_64 and
XLF_CAN_BE_LOADED_ABOVE_4G, else ENOEXEC), checks the command line
against ``cmdline_size`` (EINVAL), and places four buffers top-down in
System RAM with ``kexec_add_buffer`` (arch/x86/kernel/kexec-bzimage64.c):

=========== ====================================== ======== ==============
buffer      size                                    above    alignment
=========== ====================================== ======== ==============
purgatory   one page (the model's stand-in)         0x3000   page
boot_params 4 KiB + command line + setup_data room 0x3000   page
kernel      file minus (setup_sects + 1) * 512,     1 MiB    kernel_alignment
            memory ``init_size``
initrd      the file                                16 MiB   page
=========== ====================================== ======== ==============

Nothing is decompressed: the segments hold the files' bytes and a
boot_params page as the kernel's loader fills it (setup header copied from
0x1f1 to 0x202 + byte[0x201], e820 table, command line pointer, initrd,
``type_of_loader`` 0xd0).  The purgatory page is the model's own: the
magic ``KPY-PURGATORY\\0\\0\\0`` then, little-endian u64, the ``rip`` (kernel
+ 0x200) and ``rsi`` (boot_params) the real purgatory would enter the
kernel with.  For a crash kernel the buffers go into the crash region;
the model leaves out the elfcorehdr segment a real kernel adds.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kexec_py.arch.x86.bootparams import (
    BOOT_PARAMS_SIZE,
    E820_RESERVED,
    E820_TYPES,
    TYPE_OF_LOADER_KEXEC,
    E820Entry,
    put_e820,
    set_cmd_line_ptr,
    set_initrd,
    write_param,
)
from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.formats.bzimage import (
    BOOT_FLAG,
    FIELDS,
    HDRS_MAGIC,
    HEADER_START,
    LOADED_HIGH,
    MIN_SIZE,
    SECTOR,
    STARTUP_64,
    XLF_CAN_BE_LOADED_ABOVE_4G,
    XLF_KERNEL_64,
    read_field,
    setup_header_end,
    version_str,
)
from kexec_py.memmap import Kind, MemoryMap, MemRegion
from kexec_py.model.kernel import KernelErr
from kexec_py.ranges import Range
from kexec_py.segments import Segment

MIN_PURGATORY_ADDR = 0x3000
MIN_BOOTPARAM_ADDR = 0x3000
MIN_KERNEL_LOAD_ADDR = 0x100000
MIN_INITRD_LOAD_ADDR = 0x1000000
MAX_ELFCOREHDR_STR_LEN = 30
#: setup_data + efi_setup_data + setup_data + RNG seed (a BIOS machine has no EFI map)
SETUP_DATA_ROOM = 16 + 96 + 16 + 32
PURGATORY_MAGIC = b"KPY-PURGATORY\0\0\0"
#: the region kinds whose e820 type the model's kernel reports; it reports
#: any other region (Persistent Memory (legacy) and Soft Reserved included)
#: as Reserved
E820_KINDS = frozenset({Kind.SYSTEM_RAM, Kind.RESERVED, Kind.ACPI_TABLES, Kind.ACPI_NVS,
                        Kind.UNUSABLE, Kind.PERSISTENT_MEMORY, Kind.CRASH_KERNEL})
INT_MAX = (1 << 31) - 1


def header_field(kernel: memoryview, name: str) -> int:
    """The setup-header field ``name`` of the bzImage ``kernel``."""
    return read_field(kernel, FIELDS[name])


def e820_entries(regions: Sequence[MemRegion]) -> list[E820Entry]:
    """The e820 table the model's kernel hands on: one entry per region, in
    order, typed as the kernel knows it (no joining, unlike
    :func:`kexec_py.arch.x86.bootparams.e820_table`, kexec-tools' rule)."""
    return [(r.start, r.end - r.start,
             E820_TYPES[r.kind] if r.kind in E820_KINDS else E820_RESERVED) for r in regions]


class FileView:
    """A file descriptor's contents, mmap'd read-only, as the kernel's
    ``kernel_read_file_from_fd`` would read them."""

    def __init__(self, fd: int, what: str) -> None:
        self._mm: mmap.mmap | None = None
        self.views: list[memoryview] = []
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise KernelErr(e.errno or errno.EBADF, f"{what} fd {fd}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise KernelErr(errno.EINVAL, f"{what} fd {fd} is not a regular file")
        if st.st_size <= 0:
            raise KernelErr(errno.EINVAL, f"{what} fd {fd} is an empty file")
        if st.st_size > INT_MAX:
            raise KernelErr(errno.EFBIG, f"{what} is larger than 2 GiB")
        try:
            self._mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
        except OSError as e:
            raise KernelErr(errno.EBADF, f"{what} fd {fd} cannot be read: {e.strerror}"
                            ) from None
        self.data = self.view(0, st.st_size)

    def view(self, start: int, end: int) -> memoryview:
        assert self._mm is not None
        v = memoryview(self._mm)[start:end]
        self.views.append(v)
        return v

    def __len__(self) -> int:
        return len(self.data)

    def close(self) -> None:
        for v in self.views:
            v.release()
        self.views = []
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def probe(kernel: memoryview) -> None:
    """``bzImage64_probe``: ENOEXEC unless a 64-bit bzImage loadable above 4 GiB."""
    n = len(kernel)
    if n < MIN_SIZE:
        raise KernelErr(errno.ENOEXEC, "file is too short to be a bzImage")
    magic = FIELDS["header"]
    if bytes(kernel[magic.offset:magic.end]) != HDRS_MAGIC:
        raise KernelErr(errno.ENOEXEC, "not a bzImage (no \"HdrS\" at 0x202)")
    if header_field(kernel, "boot_flag") != BOOT_FLAG:
        raise KernelErr(errno.ENOEXEC, "no x86 boot sector present (0x1fe is not 0xaa55)")
    version = header_field(kernel, "version")
    if version < 0x020C:
        raise KernelErr(errno.ENOEXEC, f"boot protocol {version_str(version)}: "
                                       "must be at least 2.12")
    if not header_field(kernel, "loadflags") & LOADED_HIGH:
        raise KernelErr(errno.ENOEXEC, "zImage, not a bzImage (LOADED_HIGH is not set)")
    xlf = header_field(kernel, "xloadflags")
    if not xlf & XLF_KERNEL_64:
        raise KernelErr(errno.ENOEXEC, "not a bzImage64: XLF_KERNEL_64 is not set")
    if not xlf & XLF_CAN_BE_LOADED_ABOVE_4G:
        raise KernelErr(errno.ENOEXEC, "XLF_CAN_BE_LOADED_ABOVE_4G is not set")


def locate(ranges: Sequence[Range], memsz: int, align: int, lo: int, taken: Sequence[Range]
           ) -> int:
    """``kexec_locate_mem_hole`` top-down: the highest ``align``-aligned
    start at or above ``lo`` where ``memsz`` bytes fit in one of ``ranges``
    without touching ``taken``.  EADDRNOTAVAIL when there is none."""
    for r in reversed(ranges):
        start, end = max(r.start, lo), r.end
        if end - start < memsz:
            continue
        cand = (end - memsz) // align * align
        while cand >= start:
            clash = next((t for t in taken if t.start < cand + memsz and cand < t.end), None)
            if clash is None:
                return cand
            if clash.start < memsz:
                break
            cand = (clash.start - memsz) // align * align
    raise KernelErr(errno.EADDRNOTAVAIL, f"no free hole of {memsz:#x} bytes aligned to "
                                         f"{align:#x} above {lo:#x}")


@dataclass
class FilePlan:
    """The segments kexec_file_load's loader made, its entry point, and
    where it put what (``info``)."""

    entry: int
    segments: list[Segment] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def build(kernel: FileView, initrd: FileView | None, cmdline: bytes | None,
          regions: Sequence[MemRegion], crash: Range | None) -> FilePlan:
    """``bzImage64_load`` (after the probe).

    ``crash`` is the crash region for a crash kernel (None: a normal load
    into System RAM)."""
    k = kernel.data
    setup_sects = header_field(k, "setup_sects") or 4
    kern16 = (setup_sects + 1) * SECTOR
    if len(k) < kern16:
        raise KernelErr(errno.ENOEXEC, f"bzImage truncated: {len(k)} bytes, setup alone is "
                                       f"{kern16}")
    cmdline_len = 0 if cmdline is None else len(cmdline) + 1
    cmdline_size = header_field(k, "cmdline_size")
    if cmdline_len > cmdline_size:
        raise KernelErr(errno.EINVAL, f"kernel command line too long ({cmdline_len} bytes, "
                                      f"the kernel takes {cmdline_size})")
    if cmdline_len + MAX_ELFCOREHDR_STR_LEN > cmdline_size:
        raise KernelErr(errno.EINVAL, "no room to append elfcorehdr=<addr> to the command "
                                      f"line ({cmdline_len} + {MAX_ELFCOREHDR_STR_LEN} > "
                                      f"{cmdline_size})")
    if crash is not None:
        ranges = [crash]
    else:
        ranges = MemoryMap.of(regions).system_ram()
    taken: list[Range] = []

    def add(memsz: int, align: int, lo: int) -> int:
        memsz = (memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        align = max(align, PAGE_SIZE)
        at = locate(ranges, memsz, align, lo, taken)
        taken.append(Range(at, at + memsz))
        return at

    purg = add(PAGE_SIZE, PAGE_SIZE, MIN_PURGATORY_ADDR)
    params_sz = (BOOT_PARAMS_SIZE + cmdline_len + MAX_ELFCOREHDR_STR_LEN + 15) & ~15
    bp_bufsz = params_sz + SETUP_DATA_ROOM
    bp = add(bp_bufsz, 16, MIN_BOOTPARAM_ADDR)
    init_size = header_field(k, "init_size")
    # memsz is init_size (bufsz > memsz fails the segment check, as in the kernel)
    kmemsz = ((init_size or len(k) - kern16) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    kaddr = add(kmemsz, header_field(k, "kernel_alignment"), MIN_KERNEL_LOAD_ADDR)
    iaddr = add(len(initrd), PAGE_SIZE, MIN_INITRD_LOAD_ADDR) if initrd is not None else 0

    params = bytearray(bp_bufsz)
    hdr_end = min(setup_header_end(k), len(k), BOOT_PARAMS_SIZE)
    params[HEADER_START:hdr_end] = k[HEADER_START:hdr_end]
    cptr = bp + BOOT_PARAMS_SIZE
    if cmdline:
        params[BOOT_PARAMS_SIZE:BOOT_PARAMS_SIZE + len(cmdline)] = cmdline
    set_cmd_line_ptr(params, cptr)
    if initrd is not None:
        set_initrd(params, iaddr, len(initrd))
    write_param(params, "type_of_loader", TYPE_OF_LOADER_KEXEC)
    write_param(params, "loadflags", 0)
    put_e820(params, e820_entries(regions))  # entries beyond 128 are dropped
    purgatory = PURGATORY_MAGIC + struct.pack("<QQ", kaddr + STARTUP_64, bp)

    kbuf = kernel.view(kern16, len(k))
    segs = [
        Segment(purg, PAGE_SIZE, len(purgatory), purgatory, "purgatory"),
        Segment(bp, (bp_bufsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), bp_bufsz, bytes(params),
                "boot_params"),
        Segment(kaddr, kmemsz, len(kbuf), kbuf, "kernel"),
    ]
    if initrd is not None:
        segs.append(Segment(iaddr, (len(initrd) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1),
                            len(initrd), initrd.data, "initrd"))
    info: dict[str, Any] = {
        "purgatory": purg, "boot_params": bp, "kernel": kaddr, "kernel_size": len(kbuf),
        "init_size": init_size, "rip": kaddr + STARTUP_64,
        "initrd": iaddr if initrd is not None else None,
        "initrd_size": len(initrd) if initrd is not None else 0,
        "cmdline": (cmdline or b"").decode("utf-8", "replace"),
    }
    return FilePlan(purg, segs, info)

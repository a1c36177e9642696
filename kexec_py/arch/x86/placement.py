"""Where kexec_load's segments go on x86_64, and which RAM may hold them.

For kexec_load, userspace does what a boot loader does: it places the
bzImage payload where ``init_size`` bytes aligned to ``kernel_alignment``
are free, fills a zero page (:mod:`.bootparams`) and enters ``startup_64``
with ``rsi`` pointing at it, through our entry stub (:mod:`.entry`).  The
placement follows kexec-tools (``kexec/arch/x86_64/kexec-bzImage64.c``):
entry code top-down above 0x3000, boot_params and command line top-down
above 0x3000, the payload top-down above 1 MiB, the initrd top-down above
16 MiB (anywhere: the 64-bit protocol has ``ext_ramdisk_image``).  An ELF
vmlinux (kexec_py/load/loader.py) has its PT_LOADs at fixed addresses and uses
the same entry and initrd steps.

Found in QEMU (tests/vm/test_kexec_load.py boots what :func:`plan`
builds): without ``kernel_alignment`` and ``init_size`` the decompressor
faults.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from kexec_py.arch.x86.bootparams import (
    E820_MAX_ZEROPAGE,
    SetupBlock,
    build_setup_block,
    cmdline_limit,
    e820_table,
)
from kexec_py.arch.x86.entry import STUB_PAGE
from kexec_py.arch.x86.entry import build as build_stub
from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.errors import FormatError, PlanError
from kexec_py.formats.bzimage import STARTUP_64, BzImage, version_str
from kexec_py.memmap import MemRegion
from kexec_py.segments import Buffer, Layout, Segment, page_align_up

#: where kexec-tools puts things: lower bounds of the holes
SETUP_MIN = 0x3000
KERNEL_MIN = 0x100000
INITRD_BASE = 0x1000000


@dataclass
class LinuxBoot:
    """Everything a 64-bit Linux entry needs besides the kernel itself.

    ``header`` is the setup header to copy into boot_params (:func:`plan`
    sets the bzImage's; an ELF vmlinux gets
    :func:`kexec_py.formats.bzimage.synth_header`); ``cmdline`` without NUL;
    ``initrd`` a buffer (mmap) or None; ``running`` the running kernel's
    boot_params (or None); ``rng_seed`` 32 random bytes for a
    SETUP_RNG_SEED entry (or None); ``jump_back`` asks the stub to append
    ``kexec_jump_back_entry=`` to the command line (preserve context).
    """

    header: bytes
    cmdline: bytes
    memmap: Sequence[MemRegion]
    initrd: Buffer | None = None
    running: bytes | None = None
    rng_seed: bytes | None = None
    jump_back: bool = False
    notes: list[str] = field(default_factory=list)

    def block(self) -> SetupBlock:
        e820 = e820_table(self.memmap)
        return SetupBlock(self.cmdline, self.rng_seed,
                          max(0, len(e820) - E820_MAX_ZEROPAGE), self.jump_back)

    def check_cmdline(self, what: str) -> None:
        limit = cmdline_limit(self.header)
        n = len(self.block().full_cmdline)
        if n > limit:
            extra = " (with kexec_jump_back_entry=)" if self.jump_back else ""
            raise PlanError(
                f"the command line{extra} is {n} bytes; {what} takes at most {limit} "
                "(cmdline_size at 0x238)", "shorten --append", errno.EINVAL)
        if b"\0" in self.cmdline:
            raise PlanError("the command line contains a NUL byte", "remove it from --append",
                            errno.EINVAL)


class Reserved(NamedTuple):
    """Addresses taken for the entry stub and boot_params before the kernel
    and the initrd are placed (kexec-tools' order)."""

    stub: int
    params: int
    block: SetupBlock


def reserve_entry(layout: Layout, boot: LinuxBoot) -> Reserved:
    """Place the stub, then boot_params + command line, top-down above
    0x3000 (kexec-tools puts its purgatory first, then the setup block)."""
    block = boot.block()
    stub = layout.place("entry stub", STUB_PAGE, PAGE_SIZE, lo=SETUP_MIN)
    params = layout.place("boot_params and command line", block.size, 16, lo=SETUP_MIN)
    return Reserved(stub, params, block)


def place_initrd(layout: Layout, boot: LinuxBoot) -> Segment | None:
    """The initrd top-down above 16 MiB (kexec-tools' INITRD_BASE); the
    64-bit protocol takes it anywhere (ext_ramdisk_image)."""
    if boot.initrd is None:
        return None
    size = len(boot.initrd)
    if size == 0:
        raise FormatError("the initrd is empty", "give a non-empty initrd or none at all")
    addr = layout.place("initrd", size, PAGE_SIZE, lo=INITRD_BASE)
    return Segment(addr, page_align_up(size), size, boot.initrd, "initrd")


def finish_entry(res: Reserved, boot: LinuxBoot, kernel_entry: int,
                 initrd: Segment | None) -> list[Segment]:
    """The stub and boot_params segments, now that every address is known."""
    params = build_setup_block(res.block, res.params, boot.header, e820_table(boot.memmap),
                               (initrd.mem, initrd.bufsz) if initrd else None, boot.running)
    stub = build_stub(res.params, kernel_entry, res.block.jump_back_digits(res.params))
    return [
        Segment(res.params, page_align_up(len(params)), len(params), bytes(params),
                "boot_params"),
        Segment(res.stub, STUB_PAGE, len(stub), stub, "entry stub"),
    ]


def plan(img: BzImage, boot: LinuxBoot, layout: Layout) -> tuple[list[Segment], int, list[str]]:
    """Segments (sorted by address) and the entry point for ``img``.

    Pre-condition: ``layout`` holds the RAM and the --mem-min/--mem-max
    window.  Post-conditions: the kernel payload starts at a multiple of
    ``kernel_alignment`` with ``init_size`` bytes of memsz; boot_params
    describes the initrd and the command line where they are; the entry is
    the stub, which enters the payload at +0x200 with rsi = boot_params.
    """
    img.check_loadable()
    boot.header = img.header_bytes()
    boot.check_cmdline(f"this kernel (protocol {version_str(img.version)})")
    res = reserve_entry(layout, boot)
    payload = img.payload
    memsz = page_align_up(max(img["init_size"], len(payload)))
    kaddr = layout.place("kernel", memsz, img["kernel_alignment"], lo=KERNEL_MIN)
    kernel = Segment(kaddr, memsz, len(payload), payload, "kernel")
    initrd = place_initrd(layout, boot)
    segs = [kernel, *finish_entry(res, boot, kaddr + STARTUP_64, initrd)]
    if initrd is not None:
        segs.append(initrd)
    notes = [f"bzImage protocol {version_str(img.version)}, kernel at {kaddr:#x} "
             f"(init_size {img['init_size']:#x}, alignment {img['kernel_alignment']:#x}), "
             f"entered at {kaddr + STARTUP_64:#x} through the entry stub at {res.stub:#x} "
             f"with rsi = {res.params:#x}", *boot.notes]
    return sorted(segs, key=lambda s: s.mem), res.stub, notes

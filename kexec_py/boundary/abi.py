"""The kexec ABI: syscall numbers, flags, stages, ``struct kexec_segment``.

Values come from the kernel's uapi headers (``include/uapi/linux/kexec.h``,
``include/uapi/linux/reboot.h``, ``arch/*/entry/syscalls``) and, for the
stage field, from the 2008 "kexec based hibernation" multi-stage load patch
(Huang Ying, posted to the kexec list in July 2008, never merged), as
kernel/patches ports it to Linux 6.1; kernel/README.md states that ABI.
"""

from __future__ import annotations

import enum
import platform
import struct
from dataclasses import dataclass

PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --- system call numbers -----------------------------------------------------


@dataclass(frozen=True)
class ArchABI:
    """Per-architecture numbers. ``kexec_file_load`` is None where absent."""

    machine: str
    kexec_arch: int
    kexec_load: int
    kexec_file_load: int | None
    reboot: int


KEXEC_ARCH_DEFAULT = 0 << 16
KEXEC_ARCH_386 = 3 << 16
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_ARCH_ARM = 40 << 16
KEXEC_ARCH_AARCH64 = 183 << 16
KEXEC_ARCH_MASK = 0xFFFF0000

ARCHES: dict[str, ArchABI] = {
    # arch/x86/entry/syscalls/syscall_64.tbl
    "x86_64": ArchABI("x86_64", KEXEC_ARCH_X86_64, 246, 320, 169),
    # include/uapi/asm-generic/unistd.h (arm64, riscv64 share it)
    "aarch64": ArchABI("aarch64", KEXEC_ARCH_AARCH64, 104, 294, 142),
}


def host_abi(machine: str | None = None) -> ArchABI:
    """The ABI of ``machine`` (default: this machine, from uname)."""
    m = machine or platform.machine()
    try:
        return ARCHES[m]
    except KeyError:
        from kexec_py.errors import UnsupportedError

        raise UnsupportedError(
            f"architecture {m!r} is not supported",
            f"kexec-py knows {', '.join(sorted(ARCHES))}",
        ) from None


# --- kexec_load(2) flags -------------------------------------------------------

KEXEC_ON_CRASH = 0x00000001
KEXEC_PRESERVE_CONTEXT = 0x00000002
#: mainline since 6.6: the same bit as the seed's stage field (KS_start)
KEXEC_UPDATE_ELFCOREHDR = 0x00000004
#: mainline after 6.6: the same bit as the seed's stage field (KS_mid)
KEXEC_CRASH_HOTPLUG_SUPPORT = 0x00000008
#: the seed's stage field, ``(flags & KEXEC_STAGE_MASK) >> 2``
KEXEC_STAGE_MASK = 0x0000000C
KEXEC_STAGE_SHIFT = 2
KEXEC_SEGMENT_MAX = 16


class Stage(enum.IntEnum):
    """``enum kexec_stage`` of the seed patch."""

    FULL = 0  # KS_full: the classic one-call load
    START = 1  # KS_start: begin a load, the entry point is taken here
    MID = 2  # KS_mid: more segments
    FINAL = 3  # KS_final: last segments, then prepare the image

    @property
    def label(self) -> str:
        return self.name.lower()


def stage_flags(stage: Stage) -> int:
    return int(stage) << KEXEC_STAGE_SHIFT


def flags_stage(flags: int) -> Stage:
    return Stage((flags & KEXEC_STAGE_MASK) >> KEXEC_STAGE_SHIFT)


# --- kexec_file_load(2) flags ------------------------------------------------

KEXEC_FILE_UNLOAD = 0x00000001
KEXEC_FILE_ON_CRASH = 0x00000002
KEXEC_FILE_NO_INITRAMFS = 0x00000004
KEXEC_FILE_DEBUG = 0x00000008

# --- reboot(2) ---------------------------------------------------------------

LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_KEXEC = 0x45584543

# --- struct kexec_segment ----------------------------------------------------
#
#   struct kexec_segment {
#           const void *buf;
#           size_t bufsz;
#           const void *mem;
#           size_t memsz;
#   };
KEXEC_SEGMENT = struct.Struct("<QQQQ")

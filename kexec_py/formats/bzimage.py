"""x86 bzImage: the setup header, boot_params, and where kexec_load puts them.

The layout is the Linux/x86 boot protocol (Documentation/arch/x86/boot.rst).
A bzImage is ``setup_sects + 1`` sectors of real-mode setup code, whose
second sector holds the *setup header* at 0x1f1, then the protected-mode
payload (the decompressor plus the compressed kernel).  Its 64-bit entry
``startup_64`` sits at payload + 0x200 (protocol 2.12+, ``XLF_KERNEL_64``).

For kexec_load, userspace does what a boot loader does: it places the
payload where ``init_size`` bytes aligned to ``kernel_alignment`` are free,
fills a zero page (``struct boot_params``) with a copy of the setup header,
the e820 memory map, the command line pointer and the initrd, and enters
``startup_64`` with ``rsi`` pointing at it (through our entry stub,
:mod:`kexec_py.purgatory`).  The placement follows kexec-tools
(``kexec/arch/x86_64/kexec-bzImage64.c``): entry code top-down above
0x3000, boot_params and command line top-down above 0x3000, the payload
top-down above 1 MiB, the initrd top-down above 16 MiB (anywhere: the
64-bit protocol has ``ext_ramdisk_image``).

Facts found in QEMU while writing this (tests/vm/test_kexec_load.py boots
what it builds): the header is copied from
0x1f1 up to ``0x202 + byte[0x201]``, never the 0x1ef sentinel; without
``kernel_alignment`` and ``init_size`` the decompressor faults; without the
e820 table the kernel panics; with ``type_of_loader`` 0 it ignores the
initrd.

Nothing here opens files: the caller hands in buffers (mmap slices).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kexec_py.abi import PAGE_SIZE
from kexec_py.errors import FormatError, PlanError
from kexec_py.purgatory import STUB_PAGE
from kexec_py.purgatory import build as build_stub
from kexec_py.ranges import MemRegion, Range, align_up
from kexec_py.segments import Buffer, Layout, Segment, page_align_up

# --- the setup header ---------------------------------------------------------


class Field(NamedTuple):
    """A setup-header field: ``offset`` in the image (and in boot_params),
    ``size`` in bytes, ``since`` the boot-protocol version that added it
    (0x0200 = 2.00; 0 = every version, even before 2.00)."""

    name: str
    offset: int
    size: int
    since: int
    meaning: str


#: The setup header, in spec order (boot.rst, "The Real-Mode Kernel Header").
HEADER: tuple[Field, ...] = (
    Field("setup_sects", 0x1F1, 1, 0, "size of the setup in sectors (0 means 4)"),
    Field("root_flags", 0x1F2, 2, 0, "if set, the root is mounted readonly"),
    Field("syssize", 0x1F4, 4, 0x0204, "size of the 32-bit code in 16-byte paragraphs"),
    Field("ram_size", 0x1F8, 2, 0, "obsolete"),
    Field("vid_mode", 0x1FA, 2, 0, "video mode control"),
    Field("root_dev", 0x1FC, 2, 0, "default root device number"),
    Field("boot_flag", 0x1FE, 2, 0, "0xAA55 magic number"),
    Field("jump", 0x200, 2, 0x0200, "jump instruction"),
    Field("header", 0x202, 4, 0x0200, 'magic signature "HdrS"'),
    Field("version", 0x206, 2, 0x0200, "boot protocol version supported"),
    Field("realmode_swtch", 0x208, 4, 0x0200, "boot loader hook"),
    Field("start_sys_seg", 0x20C, 2, 0x0200, "the load-low segment (0x1000) (obsolete)"),
    Field("kernel_version", 0x20E, 2, 0x0200, "pointer to kernel version string"),
    Field("type_of_loader", 0x210, 1, 0x0200, "boot loader identifier"),
    Field("loadflags", 0x211, 1, 0x0200, "boot protocol option flags"),
    Field("setup_move_size", 0x212, 2, 0x0200, "move to high memory size (used with hooks)"),
    Field("code32_start", 0x214, 4, 0x0200, "boot loader hook"),
    Field("ramdisk_image", 0x218, 4, 0x0200, "initrd load address (set by boot loader)"),
    Field("ramdisk_size", 0x21C, 4, 0x0200, "initrd size (set by boot loader)"),
    Field("bootsect_kludge", 0x220, 4, 0x0200, "DO NOT USE - for bootsect.S use only"),
    Field("heap_end_ptr", 0x224, 2, 0x0201, "free memory after setup end"),
    Field("ext_loader_ver", 0x226, 1, 0x0202, "extended boot loader version"),
    Field("ext_loader_type", 0x227, 1, 0x0202, "extended boot loader ID"),
    Field("cmd_line_ptr", 0x228, 4, 0x0202, "32-bit pointer to the kernel command line"),
    Field("initrd_addr_max", 0x22C, 4, 0x0203, "highest legal initrd address"),
    Field("kernel_alignment", 0x230, 4, 0x0205, "physical addr alignment required for kernel"),
    Field("relocatable_kernel", 0x234, 1, 0x0205, "whether kernel is relocatable or not"),
    Field("min_alignment", 0x235, 1, 0x0210, "minimum alignment, as a power of two"),
    Field("xloadflags", 0x236, 2, 0x020C, "boot protocol option flags"),
    Field("cmdline_size", 0x238, 4, 0x0206, "maximum size of the kernel command line"),
    Field("hardware_subarch", 0x23C, 4, 0x0207, "hardware subarchitecture"),
    Field("hardware_subarch_data", 0x240, 8, 0x0207, "subarchitecture-specific data"),
    Field("payload_offset", 0x248, 4, 0x0208, "offset of kernel payload"),
    Field("payload_length", 0x24C, 4, 0x0208, "length of kernel payload"),
    Field("setup_data", 0x250, 8, 0x0209, "64-bit physical pointer to linked list of "
          "struct setup_data"),
    Field("pref_address", 0x258, 8, 0x020A, "preferred loading address"),
    Field("init_size", 0x260, 4, 0x020A, "linear memory required during initialization"),
    Field("handover_offset", 0x264, 4, 0x020B, "offset of handover entry point"),
    Field("kernel_info_offset", 0x268, 4, 0x020F, "offset of the kernel_info"),
)
FIELDS: dict[str, Field] = {f.name: f for f in HEADER}
_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
SECTOR = 512
#: loadflags
LOADED_HIGH = 1 << 0
KASLR_FLAG = 1 << 1
QUIET_FLAG = 1 << 5
CAN_USE_HEAP = 1 << 7
#: xloadflags
XLF_KERNEL_64 = 1 << 0
XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
XLF_EFI_HANDOVER_32 = 1 << 2
XLF_EFI_HANDOVER_64 = 1 << 3
XLF_EFI_KEXEC = 1 << 4
XLF_5LEVEL = 1 << 5
XLF_5LEVEL_ENABLED = 1 << 6
#: the 64-bit entry point, from the start of the payload
STARTUP_64 = 0x200
#: kexec-tools' "LOADER_TYPE_KEXEC << 4": the boot protocol's ID for kexec
TYPE_OF_LOADER_KEXEC = 0xD0
#: where kexec-tools puts things: lower bounds of the holes
SETUP_MIN = 0x3000
KERNEL_MIN = 0x100000
INITRD_BASE = 0x1000000
#: command-line limit before protocol 2.06 (cmdline_size)
OLD_CMDLINE_MAX = 255

#: a bzImage needs at least this much: setup sectors and the header
MIN_SIZE = 2 * SECTOR

_FLAG_NAMES = {
    "loadflags": {LOADED_HIGH: "LOADED_HIGH", KASLR_FLAG: "KASLR_FLAG",
                  QUIET_FLAG: "QUIET_FLAG", 1 << 6: "KEEP_SEGMENTS", CAN_USE_HEAP: "CAN_USE_HEAP"},
    "xloadflags": {XLF_KERNEL_64: "XLF_KERNEL_64",
                   XLF_CAN_BE_LOADED_ABOVE_4G: "XLF_CAN_BE_LOADED_ABOVE_4G",
                   XLF_EFI_HANDOVER_32: "XLF_EFI_HANDOVER_32",
                   XLF_EFI_HANDOVER_64: "XLF_EFI_HANDOVER_64", XLF_EFI_KEXEC: "XLF_EFI_KEXEC",
                   XLF_5LEVEL: "XLF_5LEVEL", XLF_5LEVEL_ENABLED: "XLF_5LEVEL_ENABLED"},
}


def version_str(v: int) -> str:
    return f"{v >> 8}.{v & 0xFF:02d}"


def flag_names(name: str, value: int) -> list[str]:
    """Names of the bits set in ``loadflags`` or ``xloadflags``."""
    names = _FLAG_NAMES.get(name, {})
    return [n for bit, n in names.items() if value & bit] + \
        [f"{value & ~sum(names):#x}"] * bool(value & ~sum(names))


def _u(buf: Buffer, off: int, size: int) -> int:
    return int(struct.unpack_from(_FMT[size], buf, off)[0])


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage.

    Accessible attributes: ``data`` (the whole file, normally an mmap
    view), ``name`` (for messages), ``fields`` (every header field the
    image's protocol version defines, by name).
    """

    data: Buffer
    name: str
    fields: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key: str) -> int:
        return self.fields[key]

    @property
    def version(self) -> int:
        return self.fields["version"]

    @property
    def setup_sects(self) -> int:
        """Setup sectors after the boot sector; 0 in the header means 4."""
        return self.fields["setup_sects"] or 4

    @property
    def setup_size(self) -> int:
        """Bytes before the payload: ``(setup_sects + 1) * 512``."""
        return (self.setup_sects + 1) * SECTOR

    @property
    def header_end(self) -> int:
        """End of the setup header: 0x202 plus the jump's 8-bit
        displacement at 0x201 (what a boot loader copies)."""
        return 0x202 + self.data[0x201]

    @property
    def payload(self) -> memoryview:
        """The protected-mode payload: everything after the setup."""
        return memoryview(self.data)[self.setup_size:]

    def header_bytes(self) -> bytes:
        """The setup header as a boot loader copies it into boot_params:
        ``[0x1f1, 0x202 + byte[0x201])``, at most 0x7f bytes as kexec-tools
        does (a little under a page)."""
        end = min(self.header_end, 0x1F1 + 0x7F)
        return bytes(self.data[0x1F1:end])

    def kernel_version(self) -> str | None:
        """The version string the header points at, if any."""
        ptr = self.fields.get("kernel_version", 0)
        if not ptr:
            return None
        start = ptr + 0x200
        if start >= min(self.setup_size, len(self.data)):
            return None
        raw = bytes(self.data[start:min(start + 256, self.setup_size, len(self.data))])
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace") or None

    def payload_length(self) -> int:
        """Size of the 32/64-bit code the header announces (``syssize``)."""
        if self.version >= 0x0204:
            return self.fields["syssize"] * 16
        return len(self.data) - self.setup_size

    def check_loadable(self) -> None:
        """Refuse an image that kexec_load cannot boot through the 64-bit
        entry, saying which header field is wrong and what it must be.

        The rules are kexec-tools' ``bzImage64_probe()`` plus what the
        placement needs: protocol >= 2.12, LOADED_HIGH, XLF_KERNEL_64 and
        XLF_CAN_BE_LOADED_ABOVE_4G, a relocatable kernel, an ``init_size``
        that holds the payload, a power-of-two ``kernel_alignment``, and a
        ``pref_address`` aligned to it.
        """
        v = self.version
        n = self.name
        if v < 0x020C:
            raise FormatError(
                f"{n}: boot protocol {version_str(v)} (version at 0x206); the 64-bit entry "
                "point and xloadflags need protocol 2.12 or later (Linux 3.8+)",
                "use a newer kernel, or kexec_file_load (-s) if this kernel can take it")
        lf = self.fields["loadflags"]
        if not lf & LOADED_HIGH:
            raise FormatError(
                f"{n}: loadflags {lf:#x} (0x211) lacks LOADED_HIGH: this is a zImage, "
                "not a bzImage", "build the kernel with 'make bzImage'")
        xl = self.fields["xloadflags"]
        missing = [name for bit, name in ((XLF_KERNEL_64, "XLF_KERNEL_64"),
                                          (XLF_CAN_BE_LOADED_ABOVE_4G,
                                           "XLF_CAN_BE_LOADED_ABOVE_4G"))
                   if not xl & bit]
        if missing:
            raise FormatError(
                f"{n}: xloadflags {xl:#x} (0x236) lacks {' and '.join(missing)}: kexec-py "
                "enters 64-bit kernels at payload + 0x200 and may place them above 4 GiB",
                "use a 64-bit (x86_64) kernel built with CONFIG_RELOCATABLE")
        if not self.fields["relocatable_kernel"]:
            raise FormatError(
                f"{n}: relocatable_kernel is 0 (0x234): kexec-py places the kernel at a free "
                "address, which needs a relocatable kernel",
                "build the kernel with CONFIG_RELOCATABLE=y")
        ka = self.fields["kernel_alignment"]
        if ka == 0 or ka & (ka - 1):
            raise FormatError(
                f"{n}: kernel_alignment {ka:#x} (0x230) is not a power of two",
                "the header is corrupt: rebuild or re-download the kernel")
        pref = self.fields["pref_address"]
        if pref % ka:
            raise FormatError(
                f"{n}: pref_address {pref:#x} (0x258) is not a multiple of kernel_alignment "
                f"{ka:#x}", "the header is corrupt: rebuild or re-download the kernel")
        init = self.fields["init_size"]
        if init == 0 or init < self.payload_length():
            raise FormatError(
                f"{n}: init_size {init:#x} (0x260) is smaller than the payload "
                f"({self.payload_length():#x} bytes): the decompressor needs init_size bytes "
                "of memory from the load address",
                "the header is corrupt: rebuild or re-download the kernel")


def probe(data: Buffer) -> bool:
    """Whether ``data`` starts like a bzImage (HdrS and the boot flag)."""
    return len(data) >= MIN_SIZE and bytes(data[0x202:0x206]) == HDRS_MAGIC and \
        _u(data, 0x1FE, 2) == BOOT_FLAG


def parse(data: Buffer, name: str = "kernel") -> BzImage:
    """Parse the setup header of ``data``.

    Checks what makes the file a bzImage at all (size, "HdrS", 0xAA55, the
    setup and payload sizes the header announces); whether kexec_load can
    boot it is :meth:`BzImage.check_loadable`.
    """
    size = len(data)
    if size < MIN_SIZE:
        raise FormatError(f"{name} is {size} bytes: too short for a bzImage (at least "
                          f"{MIN_SIZE}: boot sector and setup header)",
                          "the file is truncated or not a kernel")
    if bytes(data[0x202:0x206]) != HDRS_MAGIC:
        raise FormatError(
            f"{name} is not a bzImage: no \"HdrS\" magic at 0x202 (found "
            f"{bytes(data[0x202:0x206])!r})",
            "give an x86 bzImage (/boot/vmlinuz-*) or an ELF vmlinux")
    flag = _u(data, 0x1FE, 2)
    if flag != BOOT_FLAG:
        raise FormatError(f"{name}: boot_flag is {flag:#06x} at 0x1fe, not 0xaa55",
                          "the file is damaged or not an x86 kernel")
    version = _u(data, 0x206, 2)
    end = 0x202 + data[0x201]
    fields: dict[str, int] = {}
    for f in HEADER:
        if f.since > version or (f.since >= 0x0200 and f.offset + f.size > max(end, 0x206)):
            continue
        fields[f.name] = _u(data, f.offset, f.size)
    img = BzImage(data, name, fields)
    if size < img.setup_size:
        raise FormatError(
            f"{name} is truncated: {size:#x} bytes, but the header says the setup alone is "
            f"{img.setup_size:#x} ({img.setup_sects} sectors + the boot sector)",
            "copy the kernel again; the file is incomplete")
    have = size - img.setup_size
    if img.payload_length() > have:
        raise FormatError(
            f"{name} is truncated: the header announces a payload of "
            f"{img.payload_length():#x} bytes (syssize at 0x1f4) but the file holds "
            f"{have:#x} after the setup", "copy the kernel again; the file is incomplete")
    return img


def header_table(img: BzImage) -> list[dict[str, Any]]:
    """The header fields of ``img`` in spec order, for ``inspect``."""
    out = []
    for f in HEADER:
        if f.name not in img.fields:
            continue
        out.append({"name": f.name, "offset": f.offset, "size": f.size,
                    "since": version_str(f.since) if f.since else "all",
                    "value": img.fields[f.name], "meaning": f.meaning})
    return out


# --- boot_params (the zero page) ------------------------------------------------

BOOT_PARAMS_SIZE = 4096
#: offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h)
BP_SCREEN_INFO = 0x000  # struct screen_info, 0x40 bytes
BP_EXT_MEM_K = 0x002  # screen_info.ext_mem_k (u16)
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_ALT_MEM_K = 0x1E0
BP_E820_ENTRIES = 0x1E8
BP_SENTINEL = 0x1EF
BP_HDR = 0x1F1
BP_E820_TABLE = 0x2D0
E820_MAX_ZEROPAGE = 128
E820_ENTRY = struct.Struct("<QQI")  # addr, size, type: 20 bytes, packed

#: e820 types (arch/x86/include/asm/e820/types.h) by the names that
#: /sys/firmware/memmap and /proc/iomem print
E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS, E820_UNUSABLE = 1, 2, 3, 4, 5
E820_PMEM, E820_PRAM, E820_SOFT_RESERVED = 7, 12, 0xEFFFFFFF
E820_TYPES: dict[str, int] = {
    "System RAM": E820_RAM,
    "Crash kernel": E820_RAM,  # RAM to the new kernel; only placement avoids it
    "Reserved": E820_RESERVED,
    "reserved": E820_RESERVED,
    "ACPI Tables": E820_ACPI,
    "ACPI Non-volatile Storage": E820_NVS,
    "Unusable memory": E820_UNUSABLE,
    "Persistent Memory": E820_PMEM,
    "Persistent Memory (legacy)": E820_PRAM,
    "Soft Reserved": E820_SOFT_RESERVED,
}

#: struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
SETUP_DATA_HDR = struct.Struct("<QII")
SETUP_E820_EXT = 1
SETUP_RNG_SEED = 9
RNG_SEED_SIZE = 32


def e820_table(memmap: Sequence[MemRegion]) -> list[tuple[int, int, int]]:
    """``(addr, size, type)`` for the regions an e820 map describes, sorted,
    with touching regions of one type joined.  Regions of other kinds (PCI
    windows, ROMs in /proc/iomem) are left out, as kexec-tools does."""
    out: list[tuple[int, int, int]] = []
    for r in sorted(memmap, key=lambda m: m.start):
        t = E820_TYPES.get(r.kind)
        if t is None or r.range.size == 0:
            continue
        if out and out[-1][2] == t and out[-1][0] + out[-1][1] == r.start:
            a, s, _ = out[-1]
            out[-1] = (a, s + r.range.size, t)
        else:
            out.append((r.start, r.range.size, t))
    return out


def placement_ram(memmap: Sequence[MemRegion]) -> list[Range]:
    """Where the segments of a normal load may go: System RAM, the crash
    kernel region included.  kexec-tools places there too (it reads RAM from
    /sys/firmware/memmap, or top-level /proc/iomem, which both contain it):
    destination pages are only written at the jump, when the reservation no
    longer matters."""
    return [r.range for r in memmap if r.is_ram or r.kind == "Crash kernel"]


def ram_bytes(memmap: Sequence[MemRegion]) -> int:
    """RAM the running kernel counts for kexec_load's half-of-RAM rule
    (``totalram_pages()``): System RAM without the crash reservation."""
    return sum(r.range.size for r in memmap if r.is_ram)


#: what the stub completes with 16 hex digits for a kexec jump (the
#: parameter kexec-tools' purgatory appends for --load-preserve-context)
JUMP_BACK_TEXT = b" kexec_jump_back_entry=0x"


class SetupBlock(NamedTuple):
    """The boot_params segment: the zero page, the command line right after
    it, then the setup_data chain (RNG seed, e820 entries beyond 128)."""

    cmdline: bytes  # without the NUL
    rng_seed: bytes | None
    e820_extra: int  # e820 entries that do not fit the zero page
    jump_back: bool

    @property
    def full_cmdline(self) -> bytes:
        if not self.jump_back:
            return self.cmdline
        return self.cmdline + JUMP_BACK_TEXT + b"0" * 16

    @property
    def cmdline_offset(self) -> int:
        return BOOT_PARAMS_SIZE

    @property
    def setup_data_offset(self) -> int:
        return align_up(self.cmdline_offset + len(self.full_cmdline) + 1, 16)

    def setup_data_items(self) -> list[tuple[int, int]]:
        """``(type, payload length)`` of each setup_data, in chain order."""
        items = []
        if self.rng_seed is not None:
            items.append((SETUP_RNG_SEED, len(self.rng_seed)))
        if self.e820_extra:
            items.append((SETUP_E820_EXT, self.e820_extra * E820_ENTRY.size))
        return items

    @property
    def size(self) -> int:
        off = self.setup_data_offset
        for _, n in self.setup_data_items():
            off = align_up(off + SETUP_DATA_HDR.size + n, 16)
        return off

    def jump_back_digits(self, base: int) -> int:
        """Physical address of the 16 digits the stub fills in, or 0."""
        if not self.jump_back:
            return 0
        return base + self.cmdline_offset + len(self.full_cmdline) - 16


def build_setup_block(block: SetupBlock, base: int, header: bytes,
                      e820: Sequence[tuple[int, int, int]], initrd: tuple[int, int] | None,
                      running: bytes | None = None) -> bytearray:
    """The bytes of the boot_params segment loaded at ``base``.

    ``header`` is the setup header to copy at 0x1f1; ``e820`` the memory
    map; ``initrd`` its ``(address, size)``; ``running`` the running
    kernel's ``/sys/kernel/boot_params/data``, from which screen_info,
    ``acpi_rsdp_addr`` and ``hardware_subarch`` are taken when given
    (kexec-tools does the same).  Post-condition: ``len(result) ==
    block.size``.
    """
    buf = bytearray(block.size)
    if running is not None and len(running) >= 0x240:
        buf[BP_SCREEN_INFO:BP_SCREEN_INFO + 0x40] = running[0:0x40]
        buf[BP_ACPI_RSDP_ADDR:BP_ACPI_RSDP_ADDR + 8] = running[0x70:0x78]
    buf[BP_HDR:BP_HDR + len(header)] = header
    version = _u(buf, 0x206, 2)
    if running is not None and len(running) >= 0x240 and version >= 0x0207:
        buf[0x23C:0x240] = running[0x23C:0x240]
    struct.pack_into("<B", buf, FIELDS["type_of_loader"].offset, TYPE_OF_LOADER_KEXEC)
    # command line
    cmd = block.full_cmdline + b"\0"
    co = block.cmdline_offset
    buf[co:co + len(cmd)] = cmd
    ptr = base + co
    struct.pack_into("<I", buf, FIELDS["cmd_line_ptr"].offset, ptr & 0xFFFFFFFF)
    struct.pack_into("<I", buf, BP_EXT_CMD_LINE_PTR, ptr >> 32)
    # initrd
    if initrd is not None:
        addr, size = initrd
        struct.pack_into("<I", buf, FIELDS["ramdisk_image"].offset, addr & 0xFFFFFFFF)
        struct.pack_into("<I", buf, FIELDS["ramdisk_size"].offset, size & 0xFFFFFFFF)
        struct.pack_into("<I", buf, BP_EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", buf, BP_EXT_RAMDISK_SIZE, size >> 32)
    # e820: 128 entries in the zero page, the rest as SETUP_E820_EXT
    first, rest = e820[:E820_MAX_ZEROPAGE], e820[E820_MAX_ZEROPAGE:]
    if len(rest) != block.e820_extra:
        raise ValueError("e820 entries beyond the zero page do not match the block")
    buf[BP_E820_ENTRIES] = len(first)
    for i, (a, s, t) in enumerate(first):
        E820_ENTRY.pack_into(buf, BP_E820_TABLE + i * E820_ENTRY.size, a, s, t)
    # memory above 1 MiB in KiB, for kernels that fall back to e801/88h
    for a, s, t in e820:
        if t == E820_RAM and a <= 0x100000 < a + s:
            mem_k = ((a + s) >> 10) - (0x100000 >> 10)
            struct.pack_into("<H", buf, BP_EXT_MEM_K, min(mem_k, 0xFC00))
            struct.pack_into("<I", buf, BP_ALT_MEM_K, min(mem_k, 0xFFFFFFFF))
    # setup_data chain, linked in order
    off = block.setup_data_offset
    prev = FIELDS["setup_data"].offset if version >= 0x0209 else None
    for kind, n in block.setup_data_items():
        if prev is None:
            break
        payload = block.rng_seed if kind == SETUP_RNG_SEED else b"".join(
            E820_ENTRY.pack(*e) for e in rest)
        assert payload is not None and len(payload) == n
        SETUP_DATA_HDR.pack_into(buf, off, 0, kind, n)
        buf[off + SETUP_DATA_HDR.size:off + SETUP_DATA_HDR.size + n] = payload
        struct.pack_into("<Q", buf, prev, base + off)
        prev = off  # the "next" field of this entry
        off = align_up(off + SETUP_DATA_HDR.size + n, 16)
    return buf


def cmdline_limit(header: bytes) -> int:
    """The longest command line (without NUL) the kernel takes: cmdline_size
    for protocol 2.06+, else 255."""
    version = _u(header, 0x206 - BP_HDR, 2)
    if version >= 0x0206 and len(header) >= 0x238 - BP_HDR + 4:
        return _u(header, 0x238 - BP_HDR, 4)
    return OLD_CMDLINE_MAX


# --- placement ------------------------------------------------------------------


@dataclass
class LinuxBoot:
    """Everything a 64-bit Linux entry needs besides the kernel itself.

    ``header`` is the setup header to copy into boot_params (:func:`plan`
    sets the bzImage's; an ELF vmlinux gets :func:`synth_header`); ``cmdline`` without NUL;
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


def synth_header(cmdline_size: int = 2047, version: int = 0x020C) -> bytes:
    """A setup header for kernels that come without one (an ELF vmlinux):
    HdrS, the protocol version whose boot_params fields we fill, LOADED_HIGH,
    ``cmdline_size``.  kexec-tools' ``init_linux_parameters()`` does the
    same with protocol 2.06; 2.12 makes the ext_* fields (initrd and
    command line above 4 GiB) part of the contract."""
    hdr = bytearray(0x26C - BP_HDR)

    def put(name: str, value: int) -> None:
        f = FIELDS[name]
        struct.pack_into(_FMT[f.size], hdr, f.offset - BP_HDR, value)

    put("boot_flag", BOOT_FLAG)
    hdr[0x202 - BP_HDR:0x206 - BP_HDR] = HDRS_MAGIC
    put("jump", 0x66EB)  # "jmp 0x26a", the same jump a 2.12 header has
    put("version", version)
    put("loadflags", LOADED_HIGH)
    put("initrd_addr_max", 0x7FFFFFFF)
    put("cmdline_size", cmdline_size)
    put("xloadflags", XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G)
    return bytes(hdr[:0x202 + 0x66 - BP_HDR])

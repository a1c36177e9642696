"""x86 bzImage: the setup header.

The layout is the Linux/x86 boot protocol (Documentation/arch/x86/boot.rst).
A bzImage is ``setup_sects + 1`` sectors of real-mode setup code, whose
second sector holds the *setup header* at 0x1f1, then the protected-mode
payload (the decompressor plus the compressed kernel).  Its 64-bit entry
``startup_64`` sits at payload + 0x200 (protocol 2.12+, ``XLF_KERNEL_64``).

This module reads the header (:data:`HEADER`, :func:`parse`), says whether
kexec_load can boot the image (:meth:`BzImage.check_loadable`) and makes a
header for kernels that come without one (:func:`synth_header`).  What a
boot loader does with it (the zero page, where the segments go, the entry
stub) is in :mod:`kexec_py.arch.x86`.

The header has the same offsets in the image and in ``struct
boot_params``, which embeds it at 0x1f1, so :func:`read_field` and
:func:`write_field` serve both.  A boot loader copies it from 0x1f1 up to
``0x202 + byte[0x201]``, never the 0x1ef sentinel (found in QEMU by
tests/vm/test_kexec_load.py).

Nothing here opens files: the caller hands in buffers (mmap slices).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kexec_py.errors import FormatError
from kexec_py.segments import Buffer

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

    @property
    def end(self) -> int:
        return self.offset + self.size


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
#: where the header starts, in the image and in boot_params
HEADER_START = FIELDS["setup_sects"].offset
#: struct formats of the integer fields, by size (little-endian, unsigned)
_INT_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
SECTOR = 512
#: the 64-bit entry point, from the start of the payload
STARTUP_64 = 0x200
#: a bzImage needs at least this much: setup sectors and the header
MIN_SIZE = 2 * SECTOR


class LoadFlags(enum.IntFlag):
    """The bits of ``loadflags`` (0x211), named as boot.rst names them."""

    LOADED_HIGH = 1 << 0
    KASLR_FLAG = 1 << 1
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7


class XLoadFlags(enum.IntFlag):
    """The bits of ``xloadflags`` (0x236): bits 0 to 6, in order."""

    XLF_KERNEL_64 = enum.auto()
    XLF_CAN_BE_LOADED_ABOVE_4G = enum.auto()
    XLF_EFI_HANDOVER_32 = enum.auto()
    XLF_EFI_HANDOVER_64 = enum.auto()
    XLF_EFI_KEXEC = enum.auto()
    XLF_5LEVEL = enum.auto()
    XLF_5LEVEL_ENABLED = enum.auto()


#: the flags kexec-py and the model check, by their boot.rst names
LOADED_HIGH = LoadFlags.LOADED_HIGH
XLF_KERNEL_64 = XLoadFlags.XLF_KERNEL_64
XLF_CAN_BE_LOADED_ABOVE_4G = XLoadFlags.XLF_CAN_BE_LOADED_ABOVE_4G

_FLAGS: dict[str, type[enum.IntFlag]] = {"loadflags": LoadFlags, "xloadflags": XLoadFlags}


def version_str(v: int) -> str:
    return f"{v >> 8}.{v & 0xFF:02d}"


def flag_names(name: str, value: int) -> list[str]:
    """Names of the bits set in ``loadflags`` or ``xloadflags``."""
    flags = list(_FLAGS.get(name, ()))
    known = sum(flags)
    return [str(f.name) for f in flags if value & f] + \
        [f"{value & ~known:#x}"] * bool(value & ~known)


def setup_header_end(data: Buffer) -> int:
    """End of the setup header: 0x202 plus the jump's 8-bit displacement
    at 0x201 (what a boot loader copies)."""
    return 0x202 + data[0x201]


def read_field(buf: Buffer, f: Field, start: int = 0) -> int:
    """The value of the integer field ``f`` in ``buf``, whose first byte is
    at offset ``start`` of the image or boot_params (``HEADER_START`` for a
    bare header)."""
    return int(struct.unpack_from(_INT_FORMATS[f.size], buf, f.offset - start)[0])


def write_field(buf: bytearray, f: Field, value: int, start: int = 0) -> None:
    """Store ``value`` in the integer field ``f`` of ``buf`` (``start`` as
    for :func:`read_field`)."""
    struct.pack_into(_INT_FORMATS[f.size], buf, f.offset - start, value)


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
        """End of the setup header (:func:`setup_header_end`)."""
        return setup_header_end(self.data)

    @property
    def payload(self) -> memoryview:
        """The protected-mode payload: everything after the setup."""
        return memoryview(self.data)[self.setup_size:]

    def header_bytes(self) -> bytes:
        """The setup header as a boot loader copies it into boot_params:
        ``[0x1f1, 0x202 + byte[0x201])``, at most 0x7f bytes as kexec-tools
        does (a little under a page)."""
        end = min(self.header_end, HEADER_START + 0x7F)
        return bytes(self.data[HEADER_START:end])

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
        missing = [str(f.name) for f in (XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G)
                   if not xl & f]
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
        read_field(data, FIELDS["boot_flag"]) == BOOT_FLAG


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
    flag = read_field(data, FIELDS["boot_flag"])
    if flag != BOOT_FLAG:
        raise FormatError(f"{name}: boot_flag is {flag:#06x} at 0x1fe, not 0xaa55",
                          "the file is damaged or not an x86 kernel")
    version = read_field(data, FIELDS["version"])
    end = setup_header_end(data)
    fields: dict[str, int] = {}
    for f in HEADER:
        if f.since > version or (f.since >= 0x0200 and f.offset + f.size > max(end, 0x206)):
            continue
        fields[f.name] = read_field(data, f)
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


def synth_header(cmdline_size: int = 2047, version: int = 0x020C) -> bytes:
    """A setup header for kernels that come without one (an ELF vmlinux):
    HdrS, the protocol version whose boot_params fields we fill, LOADED_HIGH,
    ``cmdline_size``.  kexec-tools' ``init_linux_parameters()`` does the
    same with protocol 2.06; 2.12 makes the ext_* fields (initrd and
    command line above 4 GiB) part of the contract."""
    hdr = bytearray(HEADER[-1].end - HEADER_START)

    def put(name: str, value: int) -> None:
        write_field(hdr, FIELDS[name], value, HEADER_START)

    put("boot_flag", BOOT_FLAG)
    magic = FIELDS["header"]
    hdr[magic.offset - HEADER_START:magic.end - HEADER_START] = HDRS_MAGIC
    put("jump", 0x66EB)  # "jmp 0x26a", the same jump a 2.12 header has
    put("version", version)
    put("loadflags", LOADED_HIGH)
    put("initrd_addr_max", 0x7FFFFFFF)
    put("cmdline_size", cmdline_size)
    put("xloadflags", XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G)
    return bytes(hdr[:0x202 + 0x66 - HEADER_START])


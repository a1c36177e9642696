"""x86 ``struct boot_params`` (the "zero page"), as a 64-bit kernel reads it.

The layout is ``struct boot_params`` in the kernel's
arch/x86/include/uapi/asm/bootparam.h, described in
Documentation/arch/x86/zero-page.rst: one page holding, among firmware
leftovers, the e820 memory map and, at 0x1f1, a copy of the bzImage's
setup header (whose fields are :data:`kexec_py.formats.bzimage.HEADER`,
at the same offsets).  :data:`BOOT_PARAMS` declares it; every offset used
here comes from that table or the header's.

A boot loader (kexec-tools, kexec-py, the kernel's own kexec_file_load)
fills it with a copy of the setup header, the command line pointer and
the initrd (with their ``ext_*`` high halves above 4 GiB), ``type_of_loader``
and the e820 table; entries beyond the page's 128 and extras such as an
RNG seed go into a chain of ``struct setup_data``.  Facts found in QEMU
(tests/vm/test_kexec_load.py boots what :func:`build_setup_block` builds):
without the e820 table the kernel panics; with ``type_of_loader`` 0 it
ignores the initrd.

Nothing here opens files.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from kexec_py.formats.bzimage import FIELDS, HEADER_START, Field, read_field, write_field
from kexec_py.memmap import Kind, MemRegion
from kexec_py.ranges import align_up
from kexec_py.segments import Buffer

BOOT_PARAMS_SIZE = 4096

#: ``struct boot_params``, in offset order (the ``since`` of every field is
#: 0: the "ALL" of zero-page.rst).  A dotted name lies inside the field
#: before the dot; the setup header's fields are looked up by their own
#: names (:func:`param`).
BOOT_PARAMS: tuple[Field, ...] = (
    Field("screen_info", 0x000, 0x40, 0,
          "text mode or frame buffer information (struct screen_info)"),
    Field("screen_info.ext_mem_k", 0x002, 2, 0,
          "memory above 1 MiB in KiB, at most 0xfc00 (include/uapi/linux/screen_info.h)"),
    Field("apm_bios_info", 0x040, 0x14, 0, "APM BIOS information (struct apm_bios_info)"),
    Field("tboot_addr", 0x058, 8, 0, "physical address of tboot shared page"),
    Field("ist_info", 0x060, 0x10, 0,
          "Intel SpeedStep (IST) BIOS support information (struct ist_info)"),
    Field("acpi_rsdp_addr", 0x070, 8, 0, "physical address of ACPI RSDP table"),
    Field("hd0_info", 0x080, 0x10, 0, "hd0 disk parameter (obsolete)"),
    Field("hd1_info", 0x090, 0x10, 0, "hd1 disk parameter (obsolete)"),
    Field("sys_desc_table", 0x0A0, 0x10, 0,
          "system description table (struct sys_desc_table) (obsolete)"),
    Field("olpc_ofw_header", 0x0B0, 0x10, 0, "OLPC's OpenFirmware CIF and friends"),
    Field("ext_ramdisk_image", 0x0C0, 4, 0, "ramdisk_image high 32 bits"),
    Field("ext_ramdisk_size", 0x0C4, 4, 0, "ramdisk_size high 32 bits"),
    Field("ext_cmd_line_ptr", 0x0C8, 4, 0, "cmd_line_ptr high 32 bits"),
    Field("cc_blob_address", 0x13C, 4, 0, "physical address of Confidential Computing blob"),
    Field("edid_info", 0x140, 0x80, 0, "video mode setup (struct edid_info)"),
    Field("efi_info", 0x1C0, 0x20, 0, "EFI 32 information (struct efi_info)"),
    Field("alt_mem_k", 0x1E0, 4, 0, "alternative mem check, in KiB"),
    Field("scratch", 0x1E4, 4, 0, "scratch field for the kernel setup code"),
    Field("e820_entries", 0x1E8, 1, 0, "number of entries in e820_table"),
    Field("eddbuf_entries", 0x1E9, 1, 0, "number of entries in eddbuf"),
    Field("edd_mbr_sig_buf_entries", 0x1EA, 1, 0, "number of entries in edd_mbr_sig_buffer"),
    Field("kbd_status", 0x1EB, 1, 0, "numlock is enabled"),
    Field("secure_boot", 0x1EC, 1, 0, "secure boot is enabled in the firmware"),
    Field("sentinel", 0x1EF, 1, 0, "used to detect broken boot loaders"),
    Field("hdr", HEADER_START, 0x7B, 0,
          "the setup header (struct setup_header: kexec_py.formats.bzimage.HEADER)"),
    Field("edd_mbr_sig_buffer", 0x290, 0x40, 0, "EDD MBR signatures"),
    Field("e820_table", 0x2D0, 0xA00, 0,
          "E820 memory map table (array of struct boot_e820_entry)"),
    Field("eddbuf", 0xD00, 0x1EC, 0, "EDD data (array of struct edd_info)"),
)
PARAMS: dict[str, Field] = {f.name: f for f in BOOT_PARAMS}


def param(name: str) -> Field:
    """The boot_params field ``name``: one of :data:`BOOT_PARAMS`, or a
    setup-header field (``"cmd_line_ptr"``), which boot_params holds at
    the header's own offset."""
    return PARAMS[name] if name in PARAMS else FIELDS[name]


def read_param(buf: Buffer, name: str) -> int:
    return read_field(buf, param(name))


def write_param(buf: bytearray, name: str, value: int) -> None:
    write_field(buf, param(name), value)


def copy_param(dst: bytearray, src: Buffer, name: str) -> None:
    """Copy field ``name``'s bytes from the boot_params ``src`` into ``dst``."""
    f = param(name)
    dst[f.offset:f.end] = src[f.offset:f.end]


def set_cmd_line_ptr(buf: bytearray, addr: int) -> None:
    """Point boot_params at the command line at physical ``addr``
    (``cmd_line_ptr``, and ``ext_cmd_line_ptr`` for the high half)."""
    write_param(buf, "cmd_line_ptr", addr & 0xFFFFFFFF)
    write_param(buf, "ext_cmd_line_ptr", addr >> 32)


def set_initrd(buf: bytearray, addr: int, size: int) -> None:
    """Describe the initrd: ``ramdisk_image``/``ramdisk_size`` and their
    ``ext_*`` high halves."""
    write_param(buf, "ramdisk_image", addr & 0xFFFFFFFF)
    write_param(buf, "ramdisk_size", size & 0xFFFFFFFF)
    write_param(buf, "ext_ramdisk_image", addr >> 32)
    write_param(buf, "ext_ramdisk_size", size >> 32)


#: kexec-tools' "LOADER_TYPE_KEXEC << 4": the boot protocol's ID for kexec
TYPE_OF_LOADER_KEXEC = 0xD0

# --- the e820 memory map -----------------------------------------------------------

#: struct boot_e820_entry: addr, size, type; 20 bytes, packed
E820_ENTRY = struct.Struct("<QQI")
#: entries the zero page holds (the size of ``e820_table``)
E820_MAX_ZEROPAGE = 128

#: e820 types (arch/x86/include/asm/e820/types.h) by the names that
#: /sys/firmware/memmap and /proc/iomem print
E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS, E820_UNUSABLE = 1, 2, 3, 4, 5
E820_PMEM, E820_PRAM, E820_SOFT_RESERVED = 7, 12, 0xEFFFFFFF
E820_TYPES: dict[str, int] = {
    Kind.SYSTEM_RAM: E820_RAM,
    Kind.CRASH_KERNEL: E820_RAM,  # RAM to the new kernel; only placement avoids it
    Kind.RESERVED: E820_RESERVED,
    Kind.RESERVED_LOWER_CASE: E820_RESERVED,
    Kind.ACPI_TABLES: E820_ACPI,
    Kind.ACPI_NVS: E820_NVS,
    Kind.UNUSABLE: E820_UNUSABLE,
    Kind.PERSISTENT_MEMORY: E820_PMEM,
    Kind.PERSISTENT_MEMORY_LEGACY: E820_PRAM,
    Kind.SOFT_RESERVED: E820_SOFT_RESERVED,
}

E820Entry = tuple[int, int, int]


def e820_table(memmap: Sequence[MemRegion]) -> list[E820Entry]:
    """``(addr, size, type)`` for the regions an e820 map describes, sorted,
    with touching regions of one type joined.  Regions of other kinds (PCI
    windows, ROMs in /proc/iomem) are left out, as kexec-tools does."""
    out: list[E820Entry] = []
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


def put_e820(buf: bytearray, entries: Sequence[E820Entry]) -> Sequence[E820Entry]:
    """Write the first :data:`E820_MAX_ZEROPAGE` of ``entries`` into the
    zero page's ``e820_table`` and their count into ``e820_entries``;
    return the rest (for a SETUP_E820_EXT setup_data, or to drop)."""
    first, rest = entries[:E820_MAX_ZEROPAGE], entries[E820_MAX_ZEROPAGE:]
    write_param(buf, "e820_entries", len(first))
    table = PARAMS["e820_table"].offset
    for i, entry in enumerate(first):
        E820_ENTRY.pack_into(buf, table + i * E820_ENTRY.size, *entry)
    return rest


# --- setup_data and the command line ----------------------------------------------

#: struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
SETUP_DATA_HDR = struct.Struct("<QII")
SETUP_E820_EXT = 1
SETUP_RNG_SEED = 9
RNG_SEED_SIZE = 32
#: command-line limit before protocol 2.06 (cmdline_size)
OLD_CMDLINE_MAX = 255

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
                      e820: Sequence[E820Entry], initrd: tuple[int, int] | None,
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
    if running is not None and len(running) < FIELDS["hardware_subarch"].end:
        running = None  # too short to be a running kernel's boot_params
    if running is not None:
        copy_param(buf, running, "screen_info")
        copy_param(buf, running, "acpi_rsdp_addr")
    buf[HEADER_START:HEADER_START + len(header)] = header
    version = read_param(buf, "version")
    if running is not None and version >= 0x0207:
        copy_param(buf, running, "hardware_subarch")
    write_param(buf, "type_of_loader", TYPE_OF_LOADER_KEXEC)
    # command line
    cmd = block.full_cmdline + b"\0"
    cmd_offset = block.cmdline_offset
    buf[cmd_offset:cmd_offset + len(cmd)] = cmd
    set_cmd_line_ptr(buf, base + cmd_offset)
    if initrd is not None:
        set_initrd(buf, *initrd)
    # e820: 128 entries in the zero page, the rest as SETUP_E820_EXT
    rest = put_e820(buf, e820)
    if len(rest) != block.e820_extra:
        raise ValueError("e820 entries beyond the zero page do not match the block")
    # memory above 1 MiB in KiB, for kernels that fall back to e801/88h
    for a, s, t in e820:
        if t == E820_RAM and a <= 0x100000 < a + s:
            mem_k = ((a + s) >> 10) - (0x100000 >> 10)
            write_param(buf, "screen_info.ext_mem_k", min(mem_k, 0xFC00))
            write_param(buf, "alt_mem_k", min(mem_k, 0xFFFFFFFF))
    # setup_data chain, linked in order
    off = block.setup_data_offset
    prev = param("setup_data").offset if version >= 0x0209 else None
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
    for protocol 2.06+, else 255.  ``header`` starts at 0x1f1."""
    version = read_field(header, FIELDS["version"], HEADER_START)
    size = FIELDS["cmdline_size"]
    if version >= 0x0206 and len(header) >= size.end - HEADER_START:
        return read_field(header, size, HEADER_START)
    return OLD_CMDLINE_MAX

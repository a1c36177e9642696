"""The x86 zero page as a declared table, and the pieces of boot_params
that the loader and the model's kexec_file_load share."""

from __future__ import annotations

import struct

from kexec_py.arch.x86 import bootparams
from kexec_py.formats import bzimage
from kexec_py.memmap import MemRegion
from kexec_py.model import fileload
from kexec_py.ranges import Range


def test_the_table_is_struct_boot_params() -> None:
    top = [f for f in bootparams.BOOT_PARAMS if "." not in f.name]
    for a, b in zip(top, top[1:], strict=False):
        assert a.end <= b.offset, (a.name, b.name)
    assert top[-1].end + 276 == bootparams.BOOT_PARAMS_SIZE  # then _pad9[276]
    for f in bootparams.BOOT_PARAMS:
        if "." in f.name:
            parent = bootparams.PARAMS[f.name.split(".")[0]]
            assert parent.offset <= f.offset and f.end <= parent.end, f.name
    # zero-page.rst, spot checks
    where = {f.name: (f.offset, f.size) for f in bootparams.BOOT_PARAMS}
    assert where["acpi_rsdp_addr"] == (0x070, 8)
    assert where["ext_ramdisk_image"] == (0x0C0, 4) and where["ext_cmd_line_ptr"] == (0x0C8, 4)
    assert where["alt_mem_k"] == (0x1E0, 4) and where["e820_entries"] == (0x1E8, 1)
    assert where["sentinel"] == (0x1EF, 1) and where["e820_table"] == (0x2D0, 0xA00)
    assert where["screen_info.ext_mem_k"] == (0x002, 2)


def test_the_setup_header_sits_in_hdr() -> None:
    hdr = bootparams.PARAMS["hdr"]
    assert hdr.offset == bzimage.HEADER_START == 0x1F1
    assert hdr.end == bzimage.HEADER[-1].end  # sizeof(struct setup_header)
    assert not set(bootparams.PARAMS) & set(bzimage.FIELDS)
    assert bootparams.param("cmd_line_ptr") is bzimage.FIELDS["cmd_line_ptr"]
    assert bootparams.param("ext_cmd_line_ptr").offset == 0x0C8
    table = bootparams.PARAMS["e820_table"]
    assert table.size == bootparams.E820_MAX_ZEROPAGE * bootparams.E820_ENTRY.size


def test_pointers_split_into_low_and_ext_halves() -> None:
    buf = bytearray(bootparams.BOOT_PARAMS_SIZE)
    bootparams.set_cmd_line_ptr(buf, 0x6_1234_5000)
    bootparams.set_initrd(buf, 0x7_0000_1000, 0x1_0000_0010)
    assert struct.unpack_from("<I", buf, 0x228)[0] == 0x12345000
    assert struct.unpack_from("<I", buf, 0x0C8)[0] == 6
    assert struct.unpack_from("<II", buf, 0x218) == (0x1000, 0x10)
    assert struct.unpack_from("<II", buf, 0x0C0) == (7, 1)
    assert bootparams.read_param(buf, "ext_ramdisk_size") == 1


def test_put_e820_fills_the_zero_page_and_returns_the_rest() -> None:
    entries = [(i << 20, 0x1000, 1 + i % 3) for i in range(130)]
    buf = bytearray(bootparams.BOOT_PARAMS_SIZE)
    assert list(bootparams.put_e820(buf, entries)) == entries[128:]
    assert buf[0x1E8] == 128
    assert struct.unpack_from("<QQI", buf, 0x2D0 + 20 * 127) == entries[127]
    small = bytearray(bootparams.BOOT_PARAMS_SIZE)
    assert not bootparams.put_e820(small, entries[:3]) and small[0x1E8] == 3


def test_header_fields_read_and_write_from_any_start() -> None:
    hdr = bytearray(0x20)
    bzimage.write_field(hdr, bzimage.FIELDS["version"], 0x020F, bzimage.HEADER_START)
    assert hdr[0x206 - 0x1F1:0x208 - 0x1F1] == b"\x0f\x02"
    assert bzimage.read_field(hdr, bzimage.FIELDS["version"], bzimage.HEADER_START) == 0x020F
    assert bzimage.setup_header_end(bytes(0x201) + b"\x6a") == 0x26C


def test_the_models_e820_keeps_every_region() -> None:
    """kexec_file_load copies the kernel's own table: one entry per region,
    not joined, other kinds as Reserved (unlike kexec-tools' rule)."""
    regions = [MemRegion(Range(0, 0x1000), "System RAM"),
               MemRegion(Range(0x1000, 0x2000), "System RAM"),
               MemRegion(Range(0x2000, 0x3000), "PCI Bus 0000:00"),
               MemRegion(Range(0x3000, 0x4000), "Crash kernel"),
               MemRegion(Range(0x4000, 0x5000), "Persistent Memory (legacy)")]
    assert fileload.e820_entries(regions) == [(0, 0x1000, 1), (0x1000, 0x1000, 1),
                                              (0x2000, 0x1000, 2), (0x3000, 0x1000, 1),
                                              (0x4000, 0x1000, 2)]
    assert bootparams.e820_table(regions) == [(0, 0x2000, 1), (0x3000, 0x1000, 1),
                                              (0x4000, 0x1000, 12)]

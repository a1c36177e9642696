"""The entry stub: its table assembles with binutils to the same bytes, and
it does what the 64-bit boot protocol needs."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kexec_py.arch.x86 import entry as purgatory

VALUES = [(0x1FFDD000, 0x1C000200, 0), (0x63FFF1000, 0x63C000200, 0x63FFF2040),
          (0xFFFFFFFFFFFFF000, 0x1234, 0x8000000000000000)]


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                    reason="needs binutils (as, objcopy): apt-get install binutils")
@pytest.mark.parametrize(("bp", "entry", "digits"), VALUES)
def test_the_table_is_what_gnu_as_assembles(tmp_path: Path, bp: int, entry: int,
                                            digits: int) -> None:
    src = tmp_path / "stub.s"
    src.write_text(purgatory.assembly(bp, entry, digits))
    subprocess.run(["as", "--64", "-o", str(tmp_path / "stub.o"), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "stub.o"),
                    str(tmp_path / "stub.bin")], check=True)
    relocs = subprocess.run(["readelf", "-r", str(tmp_path / "stub.o")], capture_output=True,
                            text=True, check=True).stdout if shutil.which("readelf") else ""
    assert "R_X86_64" not in relocs  # position independent: nothing to relocate
    assert (tmp_path / "stub.bin").read_bytes() == purgatory.build(bp, entry, digits)


def test_patched_immediates_are_where_the_offsets_say() -> None:
    code = purgatory.build(0x1122334455667788, 0x99AABBCCDDEEFF00, 0x0102030405060708)
    off = purgatory.patch_offsets()
    assert set(off) == set(purgatory.PATCHES)
    assert struct.unpack_from("<Q", code, off["BOOT_PARAMS"])[0] == 0x1122334455667788
    assert struct.unpack_from("<Q", code, off["KERNEL_ENTRY"])[0] == 0x99AABBCCDDEEFF00
    assert struct.unpack_from("<Q", code, off["JUMP_BACK_DIGITS"])[0] == 0x0102030405060708
    # the opcodes in front: movabs $imm64 into rsi, rax, rdi
    assert code[off["BOOT_PARAMS"] - 2:off["BOOT_PARAMS"]] == b"\x48\xbe"
    assert code[off["KERNEL_ENTRY"] - 2:off["KERNEL_ENTRY"]] == b"\x48\xb8"
    assert code[off["JUMP_BACK_DIGITS"] - 2:off["JUMP_BACK_DIGITS"]] == b"\x48\xbf"


def test_only_the_immediates_change_between_loads() -> None:
    a = purgatory.build(0x1000, 0x2000, 0)
    b = purgatory.build(0x7000, 0x9000, 0x5000)
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    spans = [range(o, o + 8) for o in purgatory.patch_offsets().values()]
    assert diff and all(any(i in s for s in spans) for i in diff)


def test_boot_protocol_state() -> None:
    code = purgatory.build(0x1000, 0x2000)
    assert code[0] == 0xFA  # cli first
    assert len(code) < purgatory.STUB_PAGE // 2  # the rest of the page is stack
    assert purgatory.STUB_PAGE == 4096
    # the GDT: null, unused, __BOOT_CS (0x10) 64-bit code, __BOOT_DS (0x18) data
    gdt = code.index(struct.pack("<Q", purgatory.GDT_CODE64)) - 16
    assert gdt % 8 == 0
    descs = struct.unpack_from("<4Q", code, gdt)
    assert descs[0] == 0 and descs[1] == 0
    code64, data = descs[2], descs[3]
    assert (code64 >> 53) & 1 == 1 and (code64 >> 54) & 1 == 0  # L=1, D=0: long mode
    assert (code64 >> 47) & 1 and (data >> 47) & 1  # present
    assert (code64 >> 40) & 0xF == 0xA and (data >> 40) & 0xF == 0x2  # exec/read, read/write
    assert purgatory.BOOT_CS == 0x10 and purgatory.BOOT_DS == 0x18
    # far return pushes __BOOT_CS; the data selector loaded is __BOOT_DS
    assert b"\x6a\x10\x50\x48\xcb" in code and b"\xb8\x18\x00\x00\x00\x8e\xd8" in code
    # the last instruction before the GDT is "jmp *%rax"
    assert code[:gdt].rstrip(b"\0").endswith(b"\xff\xe0")


def test_every_instruction_is_commented() -> None:
    for line in purgatory.SOURCE:
        assert line.asm and line.encoding
        if not line.asm.startswith((".quad", ".ascii")):  # data lines say what they hold too
            assert line.comment, f"no comment for {line.asm!r}"
    text = purgatory.assembly()
    assert ".set BOOT_PARAMS, 0x0" in text and "lgdt (%rsp)" in text

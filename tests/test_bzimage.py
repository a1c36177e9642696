"""bzImage header parsing and validation, boot_params, and the CLI's errors
for bad kernels."""

from __future__ import annotations

import glob
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import iomem_for, make_bzimage, write

from kexec_py.arch.x86 import bootparams, placement
from kexec_py.errors import FormatError, PlanError
from kexec_py.formats import bzimage as bz
from kexec_py.frontend.cli import cli, run
from kexec_py.memmap import MemRegion
from kexec_py.ranges import Range
from kexec_py.segments import Layout

DEBIAN = sorted(glob.glob("/boot/vmlinuz-6.1.0-*-amd64"))
needs_debian = pytest.mark.skipif(
    not DEBIAN, reason="needs Debian's kernel in /boot: apt-get install linux-image-amd64")


def memmap(entries: list[tuple[int, int, str]] = QEMU_MEMMAP) -> list[MemRegion]:
    return [MemRegion(Range(s, e + 1), k) for s, e, k in entries]


# --- the header table --------------------------------------------------------------


def test_header_table_is_in_spec_order_without_overlap() -> None:
    offs = [f.offset for f in bz.HEADER]
    assert offs == sorted(offs)
    for a, b in zip(bz.HEADER, bz.HEADER[1:], strict=False):
        assert a.offset + a.size <= b.offset, (a.name, b.name)
    assert bz.FIELDS["xloadflags"].since == 0x020C and bz.FIELDS["init_size"].offset == 0x260
    assert bz.FIELDS["kernel_alignment"].offset == 0x230
    assert bz.FIELDS["pref_address"].since == 0x020A


@needs_debian
def test_debian_bzimage_header() -> None:
    data = Path(DEBIAN[-1]).read_bytes()
    img = bz.parse(data, DEBIAN[-1])
    img.check_loadable()
    assert img.version >= 0x020C
    assert img["xloadflags"] & 3 == 3 and img["loadflags"] & bz.LOADED_HIGH
    assert img["relocatable_kernel"] == 1
    assert img["kernel_alignment"] == 0x200000  # CONFIG_PHYSICAL_ALIGN
    assert img["pref_address"] == 0x1000000  # CONFIG_PHYSICAL_START
    assert img.setup_size == (data[0x1F1] + 1) * 512
    assert len(img.payload) == len(data) - img.setup_size
    assert img["init_size"] >= img.payload_length()
    # what a boot loader copies: 0x1f1 up to 0x202 + the jump's displacement
    assert img.header_bytes() == data[0x1F1:0x202 + data[0x201]]
    assert (img.kernel_version() or "").startswith("6.1.0-")
    rows = bz.header_table(img)
    assert [r["name"] for r in rows][:3] == ["setup_sects", "root_flags", "syssize"]
    assert rows[-1]["name"] == "kernel_info_offset"  # protocol 2.15


def test_synthesized_image_parses() -> None:
    img = bz.parse(make_bzimage(), "k")
    img.check_loadable()
    assert img.setup_size == 5 * 512 and img.version == 0x020F
    assert img.kernel_version() == "6.1.0-kexec-py-test (test@example) #1"
    assert bz.flag_names("xloadflags", 0x83) == ["XLF_KERNEL_64", "XLF_CAN_BE_LOADED_ABOVE_4G",
                                                 "0x80"]
    assert bz.probe(make_bzimage()) and not bz.probe(b"\x7fELF" + bytes(2000))


def test_setup_sects_zero_means_four() -> None:
    img = bz.parse(make_bzimage(setup_sects=0), "k")
    assert img.setup_sects == 4 and img.setup_size == 5 * 512


def test_old_protocol_has_no_new_fields() -> None:
    img = bz.parse(make_bzimage(version=0x0204), "k")
    assert "xloadflags" not in img.fields and "init_size" not in img.fields
    assert "syssize" in img.fields and "kernel_alignment" not in img.fields


# --- bad images: each a clear error ------------------------------------------------


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"truncate": 600}, "too short for a bzImage"),
    ({"truncate": 2000}, "truncated: 0x7d0 bytes, but the header says the setup alone"),
    ({"truncate": 0x1500}, "truncated: the header announces a payload"),
    ({"magic": b"HdrX"}, "no \"HdrS\" magic at 0x202"),
    ({"boot_flag": 0x1234}, "boot_flag is 0x1234 at 0x1fe, not 0xaa55"),
])
def test_not_a_bzimage(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(FormatError) as e:
        bz.parse(make_bzimage(**kwargs), "k")  # type: ignore[arg-type]
    assert words in e.value.message and e.value.hint


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"version": 0x020A}, "boot protocol 2.10 (version at 0x206); the 64-bit entry point and "
                          "xloadflags need protocol 2.12"),
    ({"loadflags": 0}, "lacks LOADED_HIGH: this is a zImage"),
    ({"xloadflags": 0x2}, "xloadflags 0x2 (0x236) lacks XLF_KERNEL_64"),
    ({"xloadflags": 0x1}, "lacks XLF_CAN_BE_LOADED_ABOVE_4G"),
    ({"relocatable": 0}, "relocatable_kernel is 0 (0x234)"),
    ({"kernel_alignment": 0x300000}, "kernel_alignment 0x300000 (0x230) is not a power of two"),
    ({"kernel_alignment": 0}, "kernel_alignment 0x0 (0x230) is not a power of two"),
    ({"pref_address": 0x1100000}, "pref_address 0x1100000 (0x258) is not a multiple"),
    ({"init_size": 0x1000}, "init_size 0x1000 (0x260) is smaller than the payload"),
    ({"init_size": 0}, "init_size 0x0 (0x260)"),
])
def test_not_loadable(kwargs: dict[str, object], words: str) -> None:
    img = bz.parse(make_bzimage(**kwargs), "k")  # type: ignore[arg-type]
    with pytest.raises(FormatError) as e:
        img.check_loadable()
    assert words in e.value.message, e.value.message
    assert e.value.hint


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        run(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"truncate": 0x1500}, "is truncated"),
    ({"magic": b"HdrX"}, "neither a bzImage nor an ELF file"),
    ({"version": 0x0209}, "boot protocol 2.09"),
    ({"relocatable": 0}, "relocatable_kernel is 0"),
    ({"init_size": 0x1000}, "init_size 0x1000"),
])
def test_cli_bad_kernel_exit_1(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str],
                               kwargs: dict[str, object], words: str) -> None:
    k = write(tmp_path / "bzImage", make_bzimage(**kwargs))  # type: ignore[arg-type]
    code, out, err = _run(["--backend", "linux", "--root", str(root), "load", "-c", str(k),
                           "--dry-run"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and words in err and "\nhint: " in err
    assert "Traceback" not in err


def test_cli_initrd_missing(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    k = write(tmp_path / "bzImage", make_bzimage())
    code, _, err = _run(["--backend", "linux", "--root", str(root), "load", "-c", str(k),
                         "--initrd", str(tmp_path / "nope.img"), "--dry-run"], capsys)
    assert code == 1
    assert err.startswith(f"error: initrd {tmp_path / 'nope.img'} does not exist\nhint: ")


def test_cli_no_room_in_the_memory_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = [(0x0, 0x9FBFF, "System RAM"), (0x100000, 0x17FFFFF, "System RAM")]  # 24 MiB
    root = make_root(tmp_path / "root", memmap=small, iomem=iomem_for(small))
    k = write(tmp_path / "bzImage", make_bzimage(init_size=0x2000000))  # needs 32 MiB
    code, out, err = _run(["--backend", "linux", "--root", str(root), "--json", "load", "-c",
                           str(k), "--dry-run"], capsys)
    assert code == 1
    assert "error: no room for the kernel: 0x2000000 bytes aligned to 0x200000" in err
    assert json.loads(out)["exit"] == 1


def test_cli_command_line_too_long(tmp_path: Path, root: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    k = write(tmp_path / "bzImage", make_bzimage(cmdline_size=16))
    code, _, err = _run(["--backend", "linux", "--root", str(root), "load", "-c", str(k),
                         "--append", "x" * 17, "--dry-run"], capsys)
    assert code == 1 and "command line is 17 bytes; this kernel (protocol 2.15) takes at " \
                          "most 16 (cmdline_size at 0x238)" in err


# --- boot_params -------------------------------------------------------------------


def _u(buf: bytes, off: int, fmt: str) -> int:
    return int(struct.unpack_from(fmt, buf, off)[0])


def test_boot_params_fields() -> None:
    img = bz.parse(make_bzimage(), "k")
    mm = memmap()
    block = bootparams.SetupBlock(b"console=ttyS0", None, 0, False)
    base = 0x1FFDD000
    buf = bytes(bootparams.build_setup_block(block, base, img.header_bytes(),
                                             bootparams.e820_table(mm), (0x1A247000, 0x1DB8C00)))
    assert len(buf) == block.size
    # the header, copied; then what a boot loader fills in
    want = bytearray(img.header_bytes())
    want[0x210 - 0x1F1] = 0xD0
    struct.pack_into("<II", want, 0x218 - 0x1F1, 0x1A247000, 0x1DB8C00)
    struct.pack_into("<I", want, 0x228 - 0x1F1, base + 4096)
    assert buf[0x1F1:0x26C] == bytes(want)
    assert buf[0x1EF] == 0  # the sentinel stays 0: the kernel keeps our fields
    assert buf[0x210] == 0xD0  # type_of_loader: kexec
    assert _u(buf, 0x228, "<I") == base + 4096 and _u(buf, 0xC8, "<I") == 0
    assert buf[4096:4096 + 14] == b"console=ttyS0\0"
    assert _u(buf, 0x218, "<I") == 0x1A247000 and _u(buf, 0x21C, "<I") == 0x1DB8C00
    assert _u(buf, 0xC0, "<I") == 0 and _u(buf, 0xC4, "<I") == 0
    # e820: the firmware map, in order, with types
    n = buf[0x1E8]
    table = [struct.unpack_from("<QQI", buf, 0x2D0 + 20 * i) for i in range(n)]
    assert table == [(s, e + 1 - s, 1 if k == "System RAM" else 2) for s, e, k in QEMU_MEMMAP]
    assert _u(buf, 0x1E0, "<I") == (0x1FFE0000 >> 10) - 1024  # alt_mem_k
    assert _u(buf, 0x002, "<H") == 0xFC00  # ext_mem_k, capped at 64 MiB
    assert _u(buf, 0x250, "<Q") == 0  # no setup_data asked for
    assert buf[4:0x40] == bytes(0x3C)  # no running boot_params: no screen_info


def test_boot_params_above_4g_use_the_ext_fields() -> None:
    img = bz.parse(make_bzimage(), "k")
    block = bootparams.SetupBlock(b"", None, 0, False)
    base = 0x63FFF1000
    buf = bytes(bootparams.build_setup_block(block, base, img.header_bytes(), [],
                                             (0x63A247000, 0x1_2345_6000)))
    assert _u(buf, 0x228, "<I") == (base + 4096) & 0xFFFFFFFF and _u(buf, 0xC8, "<I") == 6
    assert _u(buf, 0x218, "<I") == 0x3A247000 and _u(buf, 0xC0, "<I") == 6
    assert _u(buf, 0x21C, "<I") == 0x23456000 and _u(buf, 0xC4, "<I") == 1


def test_boot_params_setup_data_chain_and_e820_ext() -> None:
    img = bz.parse(make_bzimage(), "k")
    entries = [(0x100000 * i, 0x80000, 1 + i % 2) for i in range(130)]
    block = bootparams.SetupBlock(b"quiet", bytes(range(32)), 2, True)
    base = 0x10000000
    running = bytearray(4096)
    running[0:0x40] = b"S" * 0x40
    running[0x70:0x78] = struct.pack("<Q", 0xF5A80)
    running[0x23C:0x240] = struct.pack("<I", 0)
    buf = bytes(bootparams.build_setup_block(block, base, img.header_bytes(), entries, None,
                                             bytes(running)))
    assert buf[0x1E8] == 128
    assert buf[0:0x40] == b"S" * 0x40 and _u(buf, 0x70, "<Q") == 0xF5A80
    assert _u(buf, 0x218, "<I") == 0 and _u(buf, 0x21C, "<I") == 0  # no initrd
    # command line with the jump-back placeholder; the stub fills the digits
    cmd = buf[4096:].split(b"\0", 1)[0]
    assert cmd == b"quiet kexec_jump_back_entry=0x" + b"0" * 16
    assert block.jump_back_digits(base) == base + 4096 + len(cmd) - 16
    # the chain: RNG seed, then the two e820 entries that did not fit
    ptr = _u(buf, 0x250, "<Q")
    seen = []
    while ptr:
        off = ptr - base
        nxt, kind, ln = struct.unpack_from("<QII", buf, off)
        seen.append((kind, bytes(buf[off + 16:off + 16 + ln])))
        ptr = nxt
    assert [k for k, _ in seen] == [bootparams.SETUP_RNG_SEED, bootparams.SETUP_E820_EXT]
    assert seen[0][1] == bytes(range(32))
    assert seen[1][1] == b"".join(struct.pack("<QQI", *e) for e in entries[128:])


def test_e820_table_kinds() -> None:
    mm = [MemRegion(Range(0, 0x9F000), "System RAM"),
          MemRegion(Range(0x9F000, 0xA0000), "Reserved"),
          MemRegion(Range(0xA0000, 0xC0000), "PCI Bus 0000:00"),  # iomem noise: left out
          MemRegion(Range(0x100000, 0xC000000), "System RAM"),
          MemRegion(Range(0xC000000, 0x1C000000), "Crash kernel"),  # RAM to the new kernel
          MemRegion(Range(0x1C000000, 0x1FFE0000), "System RAM"),
          MemRegion(Range(0x1FFE0000, 0x20000000), "ACPI Tables"),
          MemRegion(Range(0x20000000, 0x20001000), "ACPI Non-volatile Storage"),
          MemRegion(Range(0x40000000, 0x80000000), "Persistent Memory")]
    assert bootparams.e820_table(mm) == [(0, 0x9F000, 1), (0x9F000, 0x1000, 2),
                                         (0x100000, 0x1FEE0000, 1), (0x1FFE0000, 0x20000, 3),
                                         (0x20000000, 0x1000, 4), (0x40000000, 0x40000000, 7)]


def test_synth_header_for_vmlinux() -> None:
    h = bz.synth_header()
    assert h[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"
    assert _u(h, 0x206 - 0x1F1, "<H") == 0x020C and bootparams.cmdline_limit(h) == 2047
    assert len(h) == 0x202 + h[0x201 - 0x1F1] - 0x1F1


# --- placement (placement.plan) ---------------------------------------------------


def test_plan_places_like_kexec_tools_in_512m() -> None:
    """The layout kexec-tools 2.0.25 printed in a 512 MiB QEMU guest
    (recorded when this test was written): kernel at 0x1c000000 with memsz init_size,
    the initrd ending where the kernel starts, the setup block and the
    entry code at the top of RAM."""
    img = bz.parse(make_bzimage(init_size=0x3F98000), "k")
    initrd = bytes(0x79C000)
    boot = placement.LinuxBoot(b"", b"console=ttyS0", memmap(), initrd, None, bytes(32))
    segs, entry, notes = placement.plan(img, boot, Layout([r.range for r in memmap() if r.is_ram]))
    by = {s.name: s for s in segs}
    assert by["kernel"].mem == 0x1C000000 and by["kernel"].memsz == 0x3F98000
    assert by["kernel"].bufsz == len(img.payload)
    assert by["initrd"].mem == 0x1B864000 and by["initrd"].end == 0x1C000000  # as kexec-tools
    assert by["entry stub"].end == 0x1FFE0000 and entry == by["entry stub"].mem
    assert by["boot_params"].end == by["entry stub"].mem
    assert [s.mem for s in segs] == sorted(s.mem for s in segs)
    assert "entered at 0x1c000200" in notes[0]


def test_plan_refuses_what_check_loadable_refuses() -> None:
    img = bz.parse(make_bzimage(xloadflags=0), "k")
    boot = placement.LinuxBoot(b"", b"", memmap())
    with pytest.raises(FormatError, match="lacks XLF_KERNEL_64"):
        placement.plan(img, boot, Layout([r.range for r in memmap() if r.is_ram]))


def test_plan_refuses_a_nul_in_the_command_line() -> None:
    img = bz.parse(make_bzimage(), "k")
    boot = placement.LinuxBoot(b"", b"a\0b", memmap())
    with pytest.raises(PlanError, match="NUL"):
        placement.plan(img, boot, Layout([r.range for r in memmap() if r.is_ram]))


def test_cli_inspect_of_a_synthesized_bzimage(tmp_path: Path, root: Path) -> None:
    k = write(tmp_path / "bzImage", make_bzimage())
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(root), "--json",
                                 "inspect", str(k)])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["format"] == "bzImage" and rep["protocol"] == "2.15" and rep["loadable"]

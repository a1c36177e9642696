"""``kexec-py inspect``: bzImage, ELF kernel and ELF core, as text and JSON."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import ElfSpec, Load, iomem_for, make_bzimage, make_elf, vmlinux_spec, write

from kexec_py.frontend.cli import cli

REPO = Path(__file__).resolve().parent.parent
DEBIAN = sorted(glob.glob("/boot/vmlinuz-6.1.0-*-amd64"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))


def inspect(root: Path, path: Path, as_json: bool = True) -> Any:
    opts = ["--backend", "linux", "--root", str(root)] + (["--json"] if as_json else [])
    r = CliRunner().invoke(cli, [*opts, "inspect", str(path)])
    assert r.exit_code == 0, (r.output, r.exception)
    return json.loads(r.output) if as_json else r.output


def test_bzimage_json(root: Path, tmp_path: Path) -> None:
    rep = inspect(root, write(tmp_path / "bz", make_bzimage(init_size=0x3F98000)))
    assert rep["format"] == "bzImage" and rep["loadable"] and rep["problem"] is None
    names = [h["name"] for h in rep["header"]]
    assert names[0] == "setup_sects" and "init_size" in names and "xloadflags" in names
    xl = next(h for h in rep["header"] if h["name"] == "xloadflags")
    assert xl["offset"] == 0x236 and xl["since"] == "2.12"
    assert xl["flags"] == ["XLF_KERNEL_64", "XLF_CAN_BE_LOADED_ABOVE_4G"]
    assert [s["name"] for s in rep["segments"]] == ["kernel", "boot_params", "entry stub"]
    assert rep["segments"][0] == {"name": "kernel", "mem": 0x1C000000, "memsz": 0x3F98000,
                                  "bufsz": 0x9000}
    assert rep["entry"] == rep["segments"][2]["mem"]


def test_bzimage_text(root: Path, tmp_path: Path) -> None:
    out = inspect(root, write(tmp_path / "bz", make_bzimage()), as_json=False)
    assert "format: bzImage, boot protocol 2.15, kernel 6.1.0-kexec-py-test" in out
    assert "loadable through kexec_load: yes" in out
    assert "0x236  xloadflags" in out and "2.12" in out
    assert "segments for kexec_load, entry 0x1ffdf000:" in out
    assert "\x1b[" not in out and all(line == line.rstrip() for line in out.splitlines())


def test_bzimage_not_loadable_is_reported_not_refused(root: Path, tmp_path: Path) -> None:
    rep = inspect(root, write(tmp_path / "bz", make_bzimage(version=0x020B)))
    assert rep["loadable"] is False and "protocol 2.11" in rep["problem"]
    assert rep["segments"] == []
    out = inspect(root, tmp_path / "bz", as_json=False)
    assert "loadable through kexec_load: no: " in out


@pytest.mark.skipif(not DEBIAN, reason="needs Debian's kernel in /boot: "
                    "apt-get install linux-image-amd64")
def test_debian_bzimage(root: Path) -> None:
    rep = inspect(root, Path(DEBIAN[-1]))
    assert rep["format"] == "bzImage" and rep["loadable"]
    assert rep["kernel_version"].startswith("6.1.0-")
    kernel = rep["segments"][0]
    assert kernel["name"] == "kernel" and kernel["mem"] % 0x200000 == 0


def test_elf_kernel(root: Path, tmp_path: Path) -> None:
    rep = inspect(root, write(tmp_path / "vmlinux", make_elf(vmlinux_spec())))
    assert rep["format"] == "elf-kernel" and rep["loadable"]
    assert {h["name"]: h["value"] for h in rep["header"]}["machine"] == "EM_X86_64"
    assert len(rep["program_headers"]) == 4
    assert [s["name"] for s in rep["segments"]] == ["kernel PT_LOAD"] * 4 + [
        "boot_params", "entry stub"]
    out = inspect(root, tmp_path / "vmlinux", as_json=False)
    assert "program headers:" in out and "LOAD" in out and "0xffffffff81000000" in out


def test_elf_kernel_for_another_machine(root: Path, tmp_path: Path) -> None:
    spec = ElfSpec(loads=[Load(0x100000, 0x10, 0x10)], bits=32, machine=3)
    rep = inspect(root, write(tmp_path / "vmlinux32", make_elf(spec)))
    assert rep["loadable"] is False and "EM_386" in rep["problem"]


def test_elf_core(root: Path, tmp_path: Path) -> None:
    loads = [Load(0x1000 * (2 * i + 1), 0x1000, 0x1000) for i in range(60)]
    rep = inspect(root, write(tmp_path / "core", make_elf(ElfSpec(loads=loads, e_type=4))))
    assert rep["format"] == "elf-core" and len(rep["segments"]) == 60
    assert rep["segments"][0] == {"name": "PT_LOAD", "mem": 0x1000, "memsz": 0x1000,
                                  "bufsz": 0x1000}
    assert "kexec-py resume" in rep["notes"][0]
    out = inspect(root, tmp_path / "core", as_json=False)
    assert "format: elf-core" in out and "... 20 more" in out  # long tables are elided


def test_no_memory_map_still_shows_the_header(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rep = inspect(empty, write(tmp_path / "bz", make_bzimage()))
    assert rep["header"] and rep["segments"] == []
    assert any("segments not planned: no memory map" in n for n in rep["notes"])


def test_unknown_file_is_an_error(root: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "junk", b"hello" * 300)
    p = subprocess.run([sys.executable, "-m", "kexec_py", "--backend", "linux", "--root",
                        str(root), "inspect", str(f)], capture_output=True, text=True,
                       cwd=REPO, check=False)
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: {f} is neither a bzImage nor an ELF file\nhint: ")


def test_inspect_of_a_bzimage_does_not_import_pyelftools(root: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "bz", make_bzimage())
    code = ("import sys\nfrom kexec_py.frontend.main import main\n"
            f"try:\n    main(['--backend', 'linux', '--root', {str(root)!r}, '--json', "
            f"'inspect', {str(f)!r}])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('elftools' in sys.modules, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"

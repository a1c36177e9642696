"""The CLI on the model backend: load, pgmap, exec, status, unload,
dump-memory and model-reset as separate invocations sharing one state."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from importcheck import heavy_modules_after
from kernelgen import make_bzimage

from kexec_py.boundary import procfs
from kexec_py.frontend.cli import cli

REPO = Path(__file__).resolve().parent.parent


class Model:
    """Runs ``kexec-py --backend model --model-state DIR ...`` in-process."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.state = tmp / "model-state"
        self.extra = list(extra)

    def __call__(self, *args: str, ok: bool = True) -> Result:
        r = CliRunner().invoke(cli, ["--backend", "model", "--model-state", str(self.state),
                                     *self.extra, *args])
        if ok:
            assert r.exit_code == 0, (args, r.output, r.exception)
        return r

    def json(self, *args: str) -> object:
        return json.loads(self("--json", *args).stdout)


@pytest.fixture
def bz(tmp_path: Path) -> Path:
    p = tmp_path / "bzImage"
    p.write_bytes(make_bzimage())
    return p


def test_file_load_pgmap_exec_dump_across_invocations(tmp_path: Path, bz: Path) -> None:
    m = Model(tmp_path)
    m("model-reset", "--memory", "128M", "--seed", "7")
    assert m.json("status")["loaded"] is False  # type: ignore[index]
    m("load", "-s", str(bz), "--append", "console=ttyS0 model=1")
    st = m.json("status")
    assert st["loaded"] is True and st["running"] == "the original kernel"  # type: ignore[index]
    pg = m.json("pgmap")
    raw = m("pgmap", "--raw").stdout
    pairs = procfs.parse_pgmap(raw.encode()).pairs()
    assert pg["pages"] == len(pairs) > 0  # type: ignore[index]
    flat = [(r["dst_pfn"] + i, r["src_pfn"] + i) for r in pg["runs"]  # type: ignore[index]
            for i in range(r["pages"])]
    assert flat == pairs
    assert raw == procfs.format_pgmap(pairs)
    table = m("pgmap", "--limit", "3").stdout
    assert f"{len(pairs)} pages not in place" in table and "more runs" in table
    r = m("exec")
    assert "executed the image" in r.stderr and "console=ttyS0 model=1" in r.stderr
    st = m.json("status")
    assert st["loaded"] is False and st["running"].startswith("image@")  # type: ignore[index]
    dump = tmp_path / "mem.elf"
    info = m.json("dump-memory", str(dump))
    assert info["loads"] == 2 and dump.stat().st_size == info["file_size"]  # type: ignore[index]
    # the dump holds the booted kernel's boot_params with its command line
    from elftools.elf.elffile import ELFFile

    with open(dump, "rb") as f:
        high = [s for s in ELFFile(f).iter_segments() if s["p_paddr"] == 0x100000][0]
        mem = high.data()
    at = mem.find(b"console=ttyS0 model=1\0")
    assert at > 0
    bp = (0x100000 + at - 0x1000) - 0x100000
    assert mem[bp + 0x202:bp + 0x206] == b"HdrS"
    ptr, = struct.unpack("<I", mem[bp + 0x228:bp + 0x22C])
    assert ptr == 0x100000 + at


def test_kexec_load_preserve_context_jump_and_return(tmp_path: Path, bz: Path) -> None:
    m = Model(tmp_path)
    m("model-reset", "--memory", "256M")
    m("load", "-c", str(bz), "--append", "quiet", "--load-preserve-context",
      "--mem-min", "0x8000000", "--mem-max", "0xbffffff")
    r = m("--json", "exec")
    out = json.loads(r.stdout)
    assert out["returned"] is False and out["model"]["what"] == "jump"
    assert out["model"]["cmdline"].startswith("quiet")
    st = m.json("status")
    assert "preserve-context jump" in st["running"]  # type: ignore[index]
    assert st["loaded"] is False  # type: ignore[index]
    r = m("--json", "exec")  # nothing loaded in the jumped-to kernel: it returns
    assert json.loads(r.stdout)["returned"] is True
    st = m.json("status")
    assert st["running"] == "the original kernel" and st["loaded"] is True  # type: ignore[index]


def test_unload_and_errors(tmp_path: Path, bz: Path) -> None:
    m = Model(tmp_path)
    m("model-reset")
    r = m("pgmap", ok=False)
    assert r.exit_code != 0 and "ENODEV" in str(r.exception)
    r = m("exec", ok=False)
    assert "no kernel is loaded" in str(r.exception)
    m("load", "-s", str(bz))
    assert m.json("status")["loaded"] is True  # type: ignore[index]
    m("unload")
    assert m.json("status")["loaded"] is False  # type: ignore[index]
    m("model-reset", "--no-cap-sys-boot")
    r = m("load", "-s", str(bz), ok=False)
    assert "EPERM" in str(r.exception)
    st = m.json("status")
    assert st["cap_sys_boot"] is False and st["problems"]  # type: ignore[index]


def test_stock_kernels_have_no_pgmap(tmp_path: Path, bz: Path) -> None:
    m = Model(tmp_path, "--model-kernel", "stock-6.6")
    m("load", "-s", str(bz))
    r = m("pgmap", ok=False)
    assert "no /proc/kexec_pgmap" in str(r.exception)
    assert m.json("status")["staged"] is False  # type: ignore[index]


def test_model_only_commands_refuse_the_linux_backend(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(tmp_path),
                                 "dump-memory", str(tmp_path / "x")])
    assert r.exit_code != 0 and "model backend only" in str(r.exception)


def test_crash_region_from_model_reset(tmp_path: Path, bz: Path) -> None:
    m = Model(tmp_path)
    m("model-reset", "--memory", "512M", "--crashkernel", "64M@256M")
    st = m.json("status")
    assert st["crash_size"] == 64 << 20  # type: ignore[index]
    m("load", "-s", "-p", str(bz))
    st = m.json("status")
    assert st["crash_loaded"] is True and st["loaded"] is False  # type: ignore[index]


def _main(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KEXEC_PY_MODEL_STATE=str(state))
    env.pop("KEXEC_PY_JSON", None)
    return subprocess.run([sys.executable, "-m", "kexec_py", "--backend", "model", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, check=False)


def test_separate_processes_and_exit_codes(tmp_path: Path, bz: Path) -> None:
    state = tmp_path / "s"
    assert _main(state, "model-reset", "--memory", "64M").returncode == 0
    assert _main(state, "load", "-s", str(bz)).returncode == 0
    r = _main(state, "status")
    assert r.returncode == 0 and "loaded:              yes" in r.stdout
    r = _main(state, "exec")
    assert r.returncode == 0 and "now running image@" in r.stderr
    r = _main(state, "pgmap")
    assert r.returncode == 1 and r.stderr.startswith("error: /proc/kexec_pgmap: no kexec image")
    (state / "state").write_bytes(b"garbage")
    r = _main(state, "status")
    assert r.returncode == 1 and "model-reset" in r.stderr
    assert _main(state, "model-reset").returncode == 0
    assert _main(state, "status").returncode == 0


def test_model_status_imports_no_rich_no_pyelftools_no_cffi(tmp_path: Path) -> None:
    assert heavy_modules_after(["--backend", "model", "--model-state", str(tmp_path / "s"),
                                "status"]) == []

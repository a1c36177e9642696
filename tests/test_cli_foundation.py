"""The CLI contract: exit codes, error format, --json, env vars, start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeroot import QEMU_MEMMAP, make_root
from importcheck import heavy_modules_after

from kexec_py import __version__
from kexec_py.frontend.cli import cli

REPO = Path(__file__).resolve().parent.parent


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.pop("KEXEC_PY_JSON", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kexec_py", *args], capture_output=True,
                          text=True, cwd=REPO, env=e, check=False)


def test_version_without_click() -> None:
    code = ("import sys\nfrom kexec_py.frontend.main import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('click' in sys.modules, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split("\n")
    assert out[0] == f"kexec-py {__version__}"
    assert out[1] == "False False"


def test_status_imports_no_rich_no_pyelftools_no_cffi_module(fake_root: Path) -> None:
    assert heavy_modules_after(["--backend", "linux", "--root", str(fake_root), "status"]) == []


def test_status_text_and_json(fake_root: Path) -> None:
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(fake_root), "status"])
    assert r.exit_code == 0, r.output
    assert "loaded:" in r.output and "lockdown:" in r.output
    assert "problem:" not in r.output
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(fake_root), "--json",
                                 "status"])
    data = json.loads(r.output)
    assert data["loaded"] is False and data["crash_size"] == 0
    assert data["backend"] == "linux" and data["staged"] is False
    assert data["kexec_load"].startswith("unknown")  # no probing under --root


def test_status_explains_why_a_load_would_fail(tmp_path: Path) -> None:
    root = make_root(tmp_path, lockdown="none integrity [confidentiality]", load_disabled=1,
                     cap_sys_boot=False, memmap=QEMU_MEMMAP)
    (root / "proc/sys/kernel/kexec_load_limit_reboot").write_text("0\n")
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(root), "--json", "status"])
    problems = " | ".join(json.loads(r.output)["problems"])
    assert "CAP_SYS_BOOT" in problems
    assert "kexec_load_disabled" in problems
    assert "locked down (confidentiality)" in problems
    assert "kexec_load_limit_reboot is 0" in problems


def test_only_kexec_py_json_is_read_from_the_environment(fake_root: Path) -> None:
    # KEXEC_PY_JSON is documented; options are never read from KEXEC_PY_* variables
    # (tests/test_environment.py has the rest)
    r = CliRunner().invoke(cli, ["--backend", "linux", "--root", str(fake_root), "status"],
                           env={"KEXEC_PY_BACKEND": "model", "KEXEC_PY_ROOT": "/nonexistent",
                                "KEXEC_PY_JSON": "1"})
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["backend"] == "linux"


def test_usage_error_exits_2() -> None:
    p = run_main("load")
    assert p.returncode == 2
    assert "Missing argument 'KERNEL'" in p.stderr
    p = run_main("--backend", "nonsense", "status")
    assert p.returncode == 2
    p = run_main("no-such-command")
    assert p.returncode == 2


def test_runtime_error_exits_1_with_hint(fake_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kernel"
    p = run_main("--backend", "linux", "--root", str(fake_root), "load", "-s", str(missing))
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: kernel {missing} does not exist\nhint: ")
    assert "Traceback" not in p.stderr


def test_runtime_error_json_on_stdout(fake_root: Path, tmp_path: Path) -> None:
    p = run_main("--json", "--backend", "linux", "--root", str(fake_root), "load", "-s",
                 str(tmp_path / "nope"))
    assert p.returncode == 1
    err = json.loads(p.stdout)
    assert err["exit"] == 1 and "does not exist" in err["error"] and err["hint"]


def test_exec_with_nothing_loaded_is_refused(fake_root: Path) -> None:
    p = run_main("--backend", "linux", "--root", str(fake_root), "exec", "--no-sync")
    assert p.returncode == 1
    assert "error: no kernel is loaded" in p.stderr


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["load", "--help"]])
def test_help_exits_0(args: list[str]) -> None:
    assert CliRunner().invoke(cli, args).exit_code == 0

"""Only documented environment variables are read.

In an initramfs the words of the kernel command line become init's
environment, so an option that any ``KEXEC_PY_*`` variable could set (as
click's ``auto_envvar_prefix`` allowed) could be set from the boot line:
``KEXEC_PY_RESUME_ENTRY=0x...`` reached ``kexec-py resume``.  The native
command line takes its options from argv only; the variables it reads are
exactly the ones the man page's ENVIRONMENT section lists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from coregen import pattern, simple_core
from kernelgen import make_bzimage, write

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.formats.vmcore import jump_back_note
from kexec_py.frontend.cli import CONTEXT, cli

REPO = Path(__file__).resolve().parent.parent
MAN = (REPO / "man" / "kexec-py.8").read_text()
ENTRY = 0x7654000


def _kexec_py(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("KEXEC_PY_", "_KEXEC_PY"))}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "kexec_py", *args], capture_output=True,
                          text=True, cwd=REPO, env=e, check=False, timeout=60)


# every variable a boot line could set to steer the native CLI, were it read
HOSTILE = {
    "KEXEC_PY_BACKEND": "model", "KEXEC_PY_ROOT": "/nonexistent",
    "KEXEC_PY_MODEL_KERNEL": "stock-6.1", "KEXEC_PY_VERBOSE": "2",
    "KEXEC_PY_RESUME_ENTRY": "0x1234000", "KEXEC_PY_RESUME_STAGED": "never",
    "KEXEC_PY_RESUME_DRY_RUN": "0", "KEXEC_PY_LOAD_ENTRY": "0x5000",
    "KEXEC_PY_LOAD_APPEND": "init=/bin/sh", "KEXEC_PY_LOAD_DRY_RUN": "0",
    "KEXEC_PY_EXEC_NO_SYNC": "1", "KEXEC_PY_UNLOAD_CRASH": "1",
    "_KEXEC_PY_COMPLETE": "bash_source",
}


def test_options_are_not_read_from_the_environment(fake_root: Path, tmp_path: Path) -> None:
    # status: --backend and --root come from argv, never KEXEC_PY_BACKEND/ROOT
    r = _kexec_py("--root", str(fake_root), "--json", "status", env=HOSTILE)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "linux"
    # load --dry-run: the entry point is kexec-py's own stub, not KEXEC_PY_LOAD_ENTRY
    k = write(tmp_path / "bzImage", make_bzimage())
    argv = ["--backend", "linux", "--root", str(fake_root), "--json", "load", "-c", str(k),
            "--dry-run"]
    clean = _kexec_py(*argv, env={})
    r = _kexec_py(*argv, env=HOSTILE)
    assert r.returncode == clean.returncode == 0, r.stderr
    assert r.stdout == clean.stdout
    assert json.loads(r.stdout)["entry"] != 0x5000


def test_resume_entry_comes_from_the_image_not_the_boot_line(tmp_path: Path) -> None:
    img = simple_core([(0x2000000, pattern(0x2000000, PAGE_SIZE), PAGE_SIZE)],
                      notes=jump_back_note(ENTRY)).write(tmp_path / "img")
    g = ["--backend", "model", "--model-state", str(tmp_path / "state"), "--root",
         str(tmp_path / "root")]
    (tmp_path / "root").mkdir()
    assert _kexec_py(*g, "model-reset", "--memory", "128M", env={}).returncode == 0
    r = _kexec_py(*g, "--json", "resume", str(img), "--dry-run", env=HOSTILE)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entry"] == ENTRY


def test_documented_variables_still_work(fake_root: Path, tmp_path: Path) -> None:
    r = _kexec_py("--backend", "linux", "--root", str(fake_root), "status",
                  env={"KEXEC_PY_JSON": "1"})
    assert r.returncode == 0 and json.loads(r.stdout)["backend"] == "linux"
    state = tmp_path / "from-env"
    r = _kexec_py("--backend", "model", "--json", "model-reset", "--memory", "64M",
                  env={"KEXEC_PY_MODEL_STATE": str(state)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == str(state)


def test_no_option_has_an_environment_variable() -> None:
    assert CONTEXT.get("auto_envvar_prefix") is None
    cmds: list[click.Command] = [cli]
    assert isinstance(cli, click.Group)
    cmds += list(cli.commands.values())
    for cmd in cmds:
        for p in cmd.params:
            assert not p.envvar, f"{cmd.name}: {p.name} reads {p.envvar}"
            assert not getattr(p, "show_envvar", False), f"{cmd.name}: {p.name}"
    r = _kexec_py("--help", env={})
    assert "env var" not in r.stdout.lower()


# --- the man page lists exactly what the code reads ------------------------------------


_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def _read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "kexec_py").rglob("*.py"):
        text = path.read_text()
        names |= set(_READ.findall(text))
        if re.search(r"^\s*(?:import tempfile|from tempfile import)", text, re.M):
            names.add("TMPDIR")  # tempfile.gettempdir(): TMPDIR (then TEMP, TMP)
    return names


def _environment_section() -> str:
    m = re.search(r'^\.SH "?ENVIRONMENT"?\n(.*?)^\.SH ', MAN, re.M | re.S)
    assert m, "no ENVIRONMENT section"
    return m.group(1).replace("\\-", "-")


def test_man_page_environment_lists_exactly_what_is_read() -> None:
    section = _environment_section()
    listed = set(re.findall(r"\b(?:KEXEC_PY_[A-Z_]+|NO_COLOR|XDG_RUNTIME_DIR|TMPDIR)\b",
                            section))
    read = _read_by_the_code()
    assert read, "the scan found nothing: the regular expression is broken"
    assert read - listed == set(), f"read but not documented: {sorted(read - listed)}"
    assert listed - read == set(), f"documented but not read: {sorted(listed - read)}"


def test_global_options_do_not_claim_environment_variables() -> None:
    m = re.search(r'^\.SH "GLOBAL OPTIONS"\n(.*?)^\.SH ', MAN, re.M | re.S)
    assert m
    section = m.group(1).replace("\\-", "-")
    assert "Each can also be set in the environment" not in section
    for name in ("KEXEC_PY_BACKEND", "KEXEC_PY_ROOT", "KEXEC_PY_MODEL_KERNEL"):
        assert name not in section  # only the kexec symlink (compatibility mode) reads them


@pytest.mark.parametrize("value", ["1", "true", "TRUE"])
def test_kexec_py_json_values(fake_root: Path, value: str) -> None:
    r = _kexec_py("--backend", "linux", "--root", str(fake_root), "status",
                  env={"KEXEC_PY_JSON": value})
    assert r.returncode == 0 and r.stdout.startswith("{")

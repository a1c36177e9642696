"""Nothing touches the host unless kexec-py talks to the running kernel at
root /.

The compatibility mode's steps that reach outside the backend -- ``shutdown
-r now`` after a load without -l, bringing the network interfaces down
before an exec -- run only when ``compat.Env.touches_host()`` says so: the
linux backend at root /.  On the model the reboot becomes an exec in the
model; with the linux backend under another --root, whose kexec system
calls would still go to this machine's kernel, compat refuses every step
that would change it.

Every test here replaces os.execv, the interface code and the system calls
by recorders, so that a regression records instead of acting."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import iomem_for, make_bzimage, write

from kexec_py.boundary import syscall
from kexec_py.frontend import compat, netdown
from kexec_py.frontend.cli import run


class Host:
    """Records what would have touched this machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.execs: list[tuple[str, list[str]]] = []
        self.ifdowns = 0
        self.syscalls: list[str] = []

        def execv(path: str, args: list[str]) -> None:
            self.execs.append((path, list(args)))

        def ifdown(trace: Any) -> int:
            self.ifdowns += 1
            return 0

        def call(name: str) -> Any:
            def record(*args: Any, **kw: Any) -> None:
                self.syscalls.append(name)
            return record

        monkeypatch.setattr(os, "execv", execv)
        monkeypatch.setattr(os, "execve", lambda path, args, env: execv(path, args))
        monkeypatch.setattr(netdown, "ifdown", ifdown)
        monkeypatch.setattr(compat, "_ifdown", lambda trace: ifdown(trace))
        for name in ("kexec_load", "kexec_file_load", "reboot_kexec", "sync"):
            monkeypatch.setattr(syscall, name, call(name))

    @property
    def untouched(self) -> bool:
        return self.execs == [] and self.ifdowns == 0 and self.syscalls == []


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(monkeypatch)


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    return str(write(tmp_path / "bzImage", make_bzimage()))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        run(list(argv))
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def _model(tmp_path: Path) -> list[str]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return ["--backend", "model", "--model-state", str(tmp_path / "state"), "--root", str(root)]


# --- the model: shutdown -r now becomes an exec in the model ---------------------------


def test_compat_load_then_reboot_on_the_model_boots_in_the_model(
        tmp_path: Path, kernel: str, host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    g = _model(tmp_path)
    assert _run(capsys, *g, "model-reset", "--memory", "128M")[0] == 0
    rc, out, err = _run(capsys, *g, "compat", "--", kernel, "--append=console=ttyS0")
    assert rc == 0, err
    assert host.untouched, (host.execs, host.ifdowns, host.syscalls)
    assert "shutdown -r now" in err and "model" in err  # says what it did instead
    rc, out, _ = _run(capsys, *g, "--json", "status")
    st = json.loads(out)
    assert st["loaded"] is False and st["running"] != "the original kernel", st
    # -f: load, sync, exec, and never this machine's interfaces
    assert _run(capsys, *g, "model-reset", "--memory", "128M")[0] == 0
    rc, _, err = _run(capsys, *g, "compat", "--", "-f", kernel)
    assert rc == 0, err
    assert host.untouched


@pytest.mark.parametrize("touches", [True, False])
def test_one_predicate_fences_shutdown_and_ifdown(tmp_path: Path, kernel: str,
                                                  touches: bool) -> None:
    """compat.Env.touches_host() alone decides: on a recording backend, True
    makes the run call execv (shutdown) and ifdown, False neither."""
    from test_compat import Recorder

    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))
    execs: list[str] = []
    ifdowns: list[int] = []

    class E(compat.Env):
        def touches_host(self) -> bool:
            return touches

    def env(be: Recorder) -> E:
        return E(lambda: be, root, execv=lambda p, a: execs.append(p),
                 ifdown=lambda t: ifdowns.append(1), lock=lambda: None)

    assert compat.run([kernel], env(Recorder(root))) == 0
    assert bool(execs) is touches
    be = Recorder(root)
    assert compat.run(["-f", kernel], env(be)) == 0
    assert bool(ifdowns) is touches
    assert be.names()[-1] == "reboot"


# --- the linux backend under another root: nothing reaches this kernel ---------------------


@pytest.mark.parametrize("argv", [["{k}"], ["-l", "{k}"], ["-f", "{k}"], ["-e"], ["-u"],
                                  ["-p", "-u"]])
def test_compat_linux_backend_at_another_root_changes_nothing(
        tmp_path: Path, kernel: str, host: Host, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP),
                     loaded=1)
    args = [a.format(k=kernel) for a in argv]
    rc, out, err = _run(capsys, "--backend", "linux", "--root", str(root), "compat", "--",
                        *args)
    assert host.untouched, (host.execs, host.ifdowns, host.syscalls)
    assert rc == 1, err
    first = err.splitlines()[0]
    assert first.startswith("kexec: ") and str(root) in first, err
    assert "\nhint: " in err


def test_compat_linux_backend_at_another_root_still_answers_status(
        tmp_path: Path, host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, loaded=1)
    g = ["--backend", "linux", "--root", str(root), "compat", "--"]
    assert _run(capsys, *g, "-S", "-l")[0] == 1  # loaded
    assert _run(capsys, *g, "-S")[0] == 0  # no crash kernel
    assert host.untouched


# --- the kexec symlink on the model keeps what it did -------------------------------------


def test_kexec_symlink_on_the_model_saves_the_model(tmp_path: Path, kernel: str, host: Host,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from kexec_py.frontend.main import main

    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("KEXEC_PY_BACKEND", "model")
    monkeypatch.setenv("KEXEC_PY_ROOT", str(root))
    monkeypatch.setenv("KEXEC_PY_MODEL_STATE", str(tmp_path / "state"))

    def kexec(*args: str) -> int:
        with pytest.raises(SystemExit) as ei:
            main(list(args), "kexec")
        return int(ei.value.code or 0)

    assert kexec("-l", kernel) == 0, capsys.readouterr().err
    assert kexec("-S", "-l") == 1  # the load is still there in the next invocation
    assert kexec("-u") == 0
    assert kexec("-S", "-l") == 0
    assert host.untouched


# --- the native commands: the linux backend under another --root calls nothing -----------


@pytest.mark.parametrize("argv", [["load", "-s", "{k}"], ["load", "-c", "{k}"],
                                  ["load", "{k}"], ["unload"], ["unload", "-p"],
                                  ["exec"], ["exec", "--no-sync"]])
def test_linux_backend_at_another_root_changes_nothing(
        tmp_path: Path, kernel: str, host: Host, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP),
                     loaded=1)
    args = [a.format(k=kernel) for a in argv]
    rc, out, err = _run(capsys, "--backend", "linux", "--root", str(root), *args)
    assert host.untouched, (host.execs, host.ifdowns, host.syscalls)
    assert rc == 1 and out == "", err
    assert err.startswith("error: ") and str(root) in err and "nothing was called" in err, err
    assert "\nhint: " in err


def test_linux_backend_at_another_root_still_plans_and_reports(
        tmp_path: Path, kernel: str, host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))
    g = ["--backend", "linux", "--root", str(root)]
    assert _run(capsys, *g, "status")[0] == 0
    assert _run(capsys, *g, "load", "-c", kernel, "--dry-run")[0] == 0
    assert _run(capsys, *g, "inspect", kernel)[0] == 0
    assert host.untouched

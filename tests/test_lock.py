"""The load lock (kexec_py/boundary/lock.py): every command that changes what is
loaded takes it, dry runs and read-only commands do not; the lock file is
never a symbolic link, never anything but a regular file, and never
truncated or written unless kexec-py made it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernelgen import make_bzimage, write

from kexec_py.boundary.lock import LoadLock, lock_path
from kexec_py.errors import LockError
from kexec_py.frontend.cli import run

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def held_elsewhere(holder_code: str) -> Iterator[int]:
    """Another process that holds the lock ``holder_code`` takes (a Python
    expression with a .acquire()), until the block ends; yields its pid."""
    code = textwrap.dedent(f"""\
        import sys
        from pathlib import Path
        from kexec_py.boundary.lock import LoadLock
        if "lock_for" in {holder_code!r}:
            from kexec_py.boundary.backends.model import ModelBackend
            from kexec_py.boundary.lock import lock_for
        lk = {holder_code}
        lk.acquire()
        print("held", flush=True)
        sys.stdin.read()
        lk.release()
        """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        yield p.pid
    finally:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.wait(timeout=30)
        p.stdout.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        run(list(argv))
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


class Model:
    def __init__(self, tmp: Path, root: Path | None) -> None:
        self.state = tmp / "state"
        self.g = ["--backend", "model", "--model-state", str(self.state)]
        if root is not None:
            root.mkdir(exist_ok=True)
            self.g += ["--root", str(root)]

    def __call__(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        return _run(capsys, *self.g, *args)

    def snapshot(self) -> tuple[bytes, int, int]:
        st = (self.state / "memory").stat()
        return (self.state / "state").read_bytes(), st.st_size, st.st_mtime_ns


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    return str(write(tmp_path / "bzImage", make_bzimage()))


CHANGING = [
    (["load", "-s", "{k}"], 1), (["load", "-c", "{k}", "--append", "x"], 1),
    (["load", "--staged=always", "--segments-per-call", "1", "{k}"], 1),
    (["unload"], 1), (["exec"], 1), (["model-reset", "--memory", "64M"], 1),
    (["compat", "--", "-u"], 255), (["compat", "--", "-l", "{k}"], 255),
    (["compat", "--", "-e"], 255), (["compat", "--", "{k}"], 255),
    (["compat", "--", "-f", "{k}"], 255),
]
READING = [
    ["status"], ["load", "-c", "{k}", "--dry-run"], ["pgmap"], ["inspect", "{k}"],
    ["compat", "--", "-S", "-l"],
]


@pytest.mark.parametrize("with_root", [True, False], ids=["root", "no-root"])
def test_commands_that_change_what_is_loaded_take_the_lock(
        tmp_path: Path, kernel: str, capsys: pytest.CaptureFixture[str],
        with_root: bool) -> None:
    root = tmp_path / "root" if with_root else None
    m = Model(tmp_path, root)
    assert m(capsys, "model-reset", "--memory", "128M")[0] == 0
    rc, _, err = m(capsys, "load", "-s", kernel)
    assert rc == 0, err
    before = m.snapshot()
    if with_root:
        holder = f"LoadLock(Path({str(root)!r}))"
    else:  # the model at root /: its lock is beside its own state directory, not in /run
        holder = f"lock_for(ModelBackend(Path('/'), state_path=Path({str(m.state)!r})))"
    with held_elsewhere(holder) as pid:
        for argv, code in CHANGING:
            args = [a.format(k=kernel) for a in argv]
            rc, out, err = m(capsys, *args)
            assert rc == code, (args, rc, err)
            lines = err.splitlines()
            prefix = "kexec: " if args[0] == "compat" else "error: "
            assert lines[0].startswith(f"{prefix}another kexec-py (pid {pid}) is loading"), \
                (args, err)
            assert lines[1].startswith("hint: "), (args, err)
            assert m.snapshot() == before, f"{args} changed the model"
        for argv in READING:
            args = [a.format(k=kernel) for a in argv]
            rc, out, err = m(capsys, *args)
            assert rc in (0, 1) and "is loading" not in err, (args, err)
            if args[0] == "compat":
                assert rc == 1  # -S -l: loaded
            else:
                assert rc == 0, (args, err)
        assert m.snapshot() == before
    rc, out, err = m(capsys, "--json", "unload")
    assert rc == 0 and json.loads(out)["unloaded"] is True, err


def test_the_model_lock_at_root_slash_is_beside_the_state_directory(tmp_path: Path) -> None:
    from kexec_py.boundary.backends.model import ModelBackend
    from kexec_py.boundary.lock import lock_for

    be = ModelBackend(Path("/"), state_path=tmp_path / "s")
    assert lock_for(be).path == tmp_path / "s.lock"  # not in it: its contents are the model's
    be2 = ModelBackend(tmp_path / "r", state_path=tmp_path / "s")
    assert lock_for(be2).path == lock_path(tmp_path / "r")


# --- the lock file itself ------------------------------------------------------------------


def test_a_symlink_at_the_lock_path_is_refused(tmp_path: Path, kernel: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    m = Model(tmp_path, root)
    assert m(capsys, "model-reset", "--memory", "128M")[0] == 0
    before = m.snapshot()
    lock_path(root).unlink(missing_ok=True)
    lock_path(root).parent.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "precious"
    target.write_text("precious contents\n")
    lock_path(root).symlink_to(target)
    with pytest.raises(LockError) as ei:
        LoadLock(root).acquire()
    assert str(lock_path(root)) in ei.value.message and "symbolic link" in ei.value.message
    assert ei.value.hint
    assert target.read_text() == "precious contents\n"
    for args in (["load", "-s", kernel], ["unload"], ["compat", "--", "-u"]):
        rc, _, err = m(capsys, *args)
        assert rc in (1, 255) and "symbolic link" in err.splitlines()[0], (args, err)
        assert "\nhint: " in err
        assert target.read_text() == "precious contents\n"
        assert m.snapshot() == before
    # a dangling link: its target is not created either
    lock_path(root).unlink()
    lock_path(root).symlink_to(tmp_path / "made-by-kexec-py")
    with pytest.raises(LockError):
        LoadLock(root).acquire()
    assert not (tmp_path / "made-by-kexec-py").exists()


def test_a_fifo_or_directory_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    os.mkfifo(lock_path(tmp_path))
    with pytest.raises(LockError, match="not a regular file") as ei:
        LoadLock(tmp_path).acquire()
    assert str(lock_path(tmp_path)) in ei.value.message
    os.unlink(lock_path(tmp_path))
    lock_path(tmp_path).mkdir()
    with pytest.raises(LockError) as ei:
        LoadLock(tmp_path).acquire()
    assert str(lock_path(tmp_path)) in ei.value.message


def test_a_file_kexec_py_did_not_make_is_neither_truncated_nor_written(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    p = lock_path(tmp_path)
    text = "this is not a pid file, and it is longer than one pid field\n" * 3
    p.write_text(text)
    with LoadLock(tmp_path):
        assert p.read_text() == text
    assert p.read_text() == text
    # a hard link to some other file: flock-ed, never written
    p.unlink()
    other = tmp_path / "other"
    other.write_text("12\n")
    os.link(other, p)
    with LoadLock(tmp_path):
        assert other.read_text() == "12\n"
    assert other.read_text() == "12\n"


def test_the_pid_is_written_and_blanked_without_truncating(tmp_path: Path) -> None:
    p = lock_path(tmp_path)
    with LoadLock(tmp_path):
        assert p.read_text().strip() == str(os.getpid())
        size = p.stat().st_size
    assert p.read_text().strip() == ""
    assert p.stat().st_size == size
    p.write_text("99\n")  # an older kexec-py's file: shorter than the field
    with held_elsewhere(f"LoadLock(Path({str(tmp_path)!r}))") as pid:
        with pytest.raises(LockError, match=rf"another kexec-py \(pid {pid}\)"):
            LoadLock(tmp_path).acquire()
    assert p.read_text().strip() == ""


def test_a_lock_out_of_reach_for_a_user_who_could_not_load_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user without CAP_SYS_BOOT cannot open /run/kexec-py.lock (root's):
    the error names the lock and says the kernel would refuse the load too,
    with the reasons as the hint (as the EPERM of a load would)."""
    from kexec_py.boundary import lock as lockmod
    from kexec_py.errors import LockError

    class Backend:
        name = "linux"
        root = tmp_path

        def eperm_reasons(self) -> list[str]:
            return ["this process lacks CAP_SYS_BOOT: run as root"]

        def lock_path(self) -> Path:
            return lockmod.lock_path(tmp_path)

    real_open = os.open

    def denied(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if str(path).endswith("kexec-py.lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(lockmod.os, "open", denied)
    with pytest.raises(LockError) as ei:
        lockmod.take_lock(Backend())  # type: ignore[arg-type]
    assert "Permission denied" in ei.value.message and "EPERM" in ei.value.message
    assert "CAP_SYS_BOOT" in ei.value.hint and "root" in ei.value.hint
    Backend.eperm_reasons = lambda self: []  # type: ignore[method-assign]
    with pytest.raises(LockError) as ei:
        lockmod.take_lock(Backend())  # type: ignore[arg-type]
    assert "EPERM" not in ei.value.message and "run as root" in ei.value.hint

"""The model's state directory is private and never followed through a
symlink: every directory from / down to it is root's or this user's and
writable by nobody else (unless sticky, as /tmp), the directories kexec-py
creates (and an explicit --model-state) are this user's own, mode without
group/other write, not symlinks, and every file in it is opened without
following a symlink.  Refusals are KexecErrors naming the path, what is
wrong and a hint; model-reset still clears a damaged state, without
following what was planted there either."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import KexecError
from kexec_py.frontend.cli import run
from kexec_py.model.config import ModelConfig, pc_layout

NOWHERE = Path("/nonexistent-root")
CONFIG = ModelConfig(regions=pc_layout(16 << 20))
NOBODY = 65534
VICTIM = b"the victim's own bytes\n"
STATE_FILES = ["state", "memory", "lock", "dirty", "state.tmp"]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$XDG_RUNTIME_DIR, as a login manager makes it (0700, ours)."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.delenv("KEXEC_PY_MODEL_STATE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d


def default_model() -> ModelBackend:
    """The model at its default place ($XDG_RUNTIME_DIR or the temporary
    directory), on a small machine."""
    return ModelBackend(Path("/"), config=CONFIG)


def explicit(state: Path) -> ModelBackend:
    return ModelBackend(NOWHERE, state_path=state, config=CONFIG)


def change(b: ModelBackend) -> None:
    """An invocation that changes the model and saves it."""
    try:
        b.write_phys(0x200000, b"secret")
    finally:
        b.close()


def refused(b: ModelBackend, *words: str) -> KexecError:
    with pytest.raises(KexecError) as ei:
        change(b)
    e = ei.value
    for w in words:
        assert w in e.message, (w, e.message)
    assert e.hint, e.message
    return e


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        run(["--backend", "model", *args])
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def victim(tmp: Path) -> Path:
    v = tmp / "victim"
    v.write_bytes(VICTIM)
    v.chmod(0o644)
    return v


# --- the default place: $XDG_RUNTIME_DIR ------------------------------------------------


def test_xdg_runtime_dir_of_another_user_is_refused(xdg: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``sudo -E`` / ``su`` without ``-`` leave the user's XDG_RUNTIME_DIR to root."""
    os.chown(xdg, NOBODY, NOBODY)
    e = refused(default_model(), str(xdg), f"uid {NOBODY}")
    assert "--model-state" in e.hint and "XDG_RUNTIME_DIR" in e.hint
    with pytest.raises(KexecError, match=f"uid {NOBODY}"):
        default_model().status()  # not even read
    assert tree(xdg) == []
    rc, _, err = cli(capsys, "model-reset", "--memory", "16M")
    assert rc == 1 and "error: unsafe model state directory" in err and str(xdg) in err, err
    assert "\nhint: " in err
    assert tree(xdg) == []


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o702])
def test_xdg_runtime_dir_writable_by_others_is_refused(xdg: Path, mode: int) -> None:
    xdg.chmod(mode)
    refused(default_model(), str(xdg), "writable by group or others", oct(mode))
    assert tree(xdg) == []


def test_a_sticky_xdg_runtime_dir_is_fine(xdg: Path, umask022: None) -> None:
    xdg.chmod(0o1777)
    change(default_model())
    assert default_model().read_phys(0x200000, 6) == b"secret"
    d = xdg / "kexec-py"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "model").stat().st_mode) == 0o700


def plant(d: Path, problem: str, elsewhere: Path, bad_mode: int) -> None:
    """Make directory ``d`` wrong: another user's ("owner"), writable by
    others (``bad_mode``), or a symlink to ``elsewhere`` (made, 0700)."""
    elsewhere.mkdir(mode=0o700)
    if problem == "symlink":
        d.symlink_to(elsewhere)
        return
    d.mkdir(mode=0o700)
    if problem == "owner":
        os.chown(d, NOBODY, NOBODY)
    else:
        d.chmod(bad_mode)


@pytest.mark.parametrize("which", ["kexec-py", "kexec-py/model"])
@pytest.mark.parametrize("problem", ["owner", "mode", "symlink"])
def test_our_directories_must_be_ours(xdg: Path, tmp_path: Path, which: str,
                                      problem: str) -> None:
    d = xdg / which
    d.parent.mkdir(mode=0o700, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    plant(d, problem, elsewhere, 0o777)
    words = {"owner": f"uid {NOBODY}", "mode": "0o777", "symlink": "symbolic link"}[problem]
    refused(default_model(), str(d), words)
    assert tree(elsewhere) == []
    if problem != "symlink":
        assert tree(d) == []


# --- the fallback: the temporary directory ----------------------------------------------


@pytest.fixture
def tmpdir_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    t = tmp_path / "tmp"
    t.mkdir()
    t.chmod(0o1777)
    monkeypatch.delenv("KEXEC_PY_MODEL_STATE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def test_the_tmp_fallback_is_created_private(tmpdir_fallback: Path, umask022: None) -> None:
    change(default_model())
    d = tmpdir_fallback / f"kexec-py-{os.geteuid()}"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "model").stat().st_mode) == 0o700


@pytest.mark.parametrize("problem", ["owner", "mode", "symlink"])
def test_the_model_dir_under_tmp_is_checked_too(tmpdir_fallback: Path, tmp_path: Path,
                                                problem: str) -> None:
    top = tmpdir_fallback / f"kexec-py-{os.geteuid()}"
    top.mkdir(mode=0o700)
    d = top / "model"
    elsewhere = tmp_path / "elsewhere"
    plant(d, problem, elsewhere, 0o757)
    refused(default_model(), str(d))
    assert tree(elsewhere) == []


def test_tmp_fallback_of_another_user_is_refused(tmpdir_fallback: Path) -> None:
    top = tmpdir_fallback / f"kexec-py-{os.geteuid()}"
    top.mkdir(mode=0o700)
    os.chown(top, NOBODY, NOBODY)
    refused(default_model(), str(top), f"uid {NOBODY}")
    assert tree(top) == []


# --- with --root ------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["owner", "symlink"])
def test_root_run_kexec_py_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      problem: str) -> None:
    monkeypatch.delenv("KEXEC_PY_MODEL_STATE", raising=False)
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    d = root / "run/kexec-py"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if problem == "symlink":
        d.symlink_to(elsewhere)
    else:
        d.mkdir()
        os.chown(d, NOBODY, NOBODY)
    b = ModelBackend(root, config=CONFIG)
    assert b.state_path == root / "run/kexec-py/model"
    refused(b, str(d))
    assert tree(elsewhere) == []


# --- an explicit --model-state --------------------------------------------------------------


def test_explicit_state_dir_symlink_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "state").write_bytes(VICTIM)  # a file that model-reset would remove
    link = tmp_path / "state"
    link.symlink_to(elsewhere)
    refused(explicit(link), str(link), "symbolic link")
    rc, _, err = cli(capsys, "--model-state", str(link), "model-reset", "--memory", "16M")
    assert rc == 1 and f"error: unsafe model state directory {link}" in err, err
    assert "hint: " in err
    assert tree(elsewhere) == ["state"] and (elsewhere / "state").read_bytes() == VICTIM


@pytest.mark.parametrize("problem", ["owner", "mode"])
def test_explicit_state_dir_must_be_ours(tmp_path: Path, problem: str) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    if problem == "owner":
        os.chown(d, NOBODY, NOBODY)
    else:
        d.chmod(0o777)
    refused(explicit(d), str(d))
    assert tree(d) == []


def test_explicit_state_dir_under_a_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir(mode=0o755)
    os.chown(parent, NOBODY, NOBODY)
    refused(explicit(parent / "state"), str(parent), f"uid {NOBODY}")
    assert tree(parent) == []


def test_explicit_state_dir_in_a_sticky_dir_is_fine(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    t.chmod(0o1777)
    change(explicit(t / "a" / "state"))
    assert explicit(t / "a" / "state").read_phys(0x200000, 6) == b"secret"


def test_state_files_are_private(tmp_path: Path, umask022: None) -> None:
    d = tmp_path / "state"
    b = explicit(d)
    b.write_phys(0x200000, b"secret")
    b.flush()
    b.write_phys(0x300000, b"more")  # the dirty marker is there now
    assert (d / "dirty").exists()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    b.close()
    modes.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()})
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert modes == {"state": 0o600, "memory": 0o600, "lock": 0o600, "dirty": 0o600}


# --- symlinks planted for the files in it ---------------------------------------------------


def saved(tmp: Path) -> Path:
    d = tmp / "state"
    change(explicit(d))
    return d


@pytest.mark.parametrize("name", STATE_FILES)
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_planted_symlink_is_never_followed(tmp_path: Path, name: str, dangling: bool) -> None:
    d = saved(tmp_path)
    target = tmp_path / "nothing-here" if dangling else victim(tmp_path)
    link = d / name
    if link.exists():
        link.unlink()
    link.symlink_to(target)
    e = refused(explicit(d), str(link), "symbolic link")
    assert "model-reset" in e.hint
    if dangling:
        assert not target.exists()
    else:
        assert target.read_bytes() == VICTIM and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert link.is_symlink()


@pytest.mark.parametrize("name", ["state", "memory", "dirty"])
def test_a_reader_does_not_follow_a_planted_symlink(tmp_path: Path, name: str) -> None:
    d = saved(tmp_path)
    if name == "dirty":
        b = explicit(d)
        b.write_phys(0x300000, b"x")  # dies with the dirty marker there
        assert b.store is not None
        b.store.unlock()
    v = victim(tmp_path)
    (d / name).unlink()
    (d / name).symlink_to(v)
    b = explicit(d)
    with pytest.raises(KexecError, match="symbolic link"):
        b.write_phys(0x400000, b"y")
    b.close()
    if name != "dirty":
        with pytest.raises(KexecError, match="symbolic link"):
            explicit(d).status()
    assert v.read_bytes() == VICTIM


@pytest.mark.parametrize("name", STATE_FILES)
def test_model_reset_removes_planted_symlinks_not_their_targets(
        tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = saved(tmp_path)
    v = victim(tmp_path)
    link = d / name
    if link.exists():
        link.unlink()
    link.symlink_to(v)
    rc, _, err = cli(capsys, "--model-state", str(d), "model-reset", "--memory", "16M")
    assert rc == 0, err
    assert v.read_bytes() == VICTIM
    assert not link.is_symlink()
    change(ModelBackend(NOWHERE, state_path=d))  # a working model again
    assert ModelBackend(NOWHERE, state_path=d).read_phys(0x200000, 6) == b"secret"
    assert v.read_bytes() == VICTIM


def test_model_reset_still_clears_a_damaged_state(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d = saved(tmp_path)
    (d / "state").write_bytes(b"garbage")
    (d / "memory").unlink()
    (d / "dirty").write_bytes(b"\xff\xfe")
    (d / "state.tmp").write_bytes(b"half")
    rc, _, err = cli(capsys, "--model-state", str(d), "status")
    assert rc == 1 and "model-reset" in err
    rc, _, err = cli(capsys, "--model-state", str(d), "model-reset", "--memory", "16M")
    assert rc == 0, err
    assert sorted(p.name for p in d.iterdir()) == ["lock", "memory", "state"]
    rc, _, err = cli(capsys, "--model-state", str(d), "status")
    assert rc == 0, err


def test_model_reset_refuses_a_directory_that_is_not_ours(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = saved(tmp_path)
    os.chown(d, NOBODY, NOBODY)
    rc, _, err = cli(capsys, "--model-state", str(d), "model-reset", "--memory", "16M")
    assert rc == 1 and f"uid {NOBODY}" in err and "hint: " in err, err
    assert (d / "state").exists() and (d / "memory").exists()


def test_kexec_py_model_state_is_checked_as_an_explicit_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(elsewhere)
    monkeypatch.setenv("KEXEC_PY_MODEL_STATE", str(link))
    refused(ModelBackend(NOWHERE, config=CONFIG), str(link), "symbolic link")
    assert tree(elsewhere) == []


def test_a_leftover_state_tmp_of_a_dead_invocation_is_replaced(tmp_path: Path,
                                                               umask022: None) -> None:
    d = saved(tmp_path)
    (d / "state.tmp").write_bytes(b"half a state")
    b = explicit(d)
    b.write_phys(0x300000, b"more")
    b.close()
    assert not (d / "state.tmp").exists()
    assert stat.S_IMODE((d / "state").stat().st_mode) == 0o600
    assert explicit(d).read_phys(0x300000, 4) == b"more"

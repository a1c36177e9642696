"""save-image and dump-memory write all of RAM (keys, passwords): the file is
created mode 0600 whatever the umask, never through a symlink (at OUT or
at OUT.part), atomically (OUT.part, fsync, rename, fsync of the directory),
and every refusal is a KexecError naming the path, with a hint."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from coregen import pattern, simple_core

from kexec_py.boundary.abi import PAGE_SIZE
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import KexecError
from kexec_py.frontend.cli import run
from kexec_py.hibernate import save as hibsave
from kexec_py.model.config import ModelConfig, pc_layout

P = PAGE_SIZE
NOWHERE = Path("/nonexistent-root")
VICTIM = b"the victim's own bytes\n"


@pytest.fixture(params=[0o022, 0o000, 0o277], ids=["umask022", "umask000", "umask277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(old)


def core(tmp: Path) -> Path:
    loads = [(0x100000, pattern(0x100000, 3 * P), 4 * P), (0x400000, b"tail", P)]
    return simple_core(loads).write(tmp / "vmcore")


def save(tmp: Path, out: Path) -> hibsave.SaveResult:
    src = hibsave.FileSource(core(tmp))
    try:
        return hibsave.save_image(src, out, jump_back=0x2000000)
    finally:
        src.close()


def small_model() -> ModelBackend:
    b = ModelBackend(NOWHERE, persist=False, config=ModelConfig(regions=pc_layout(16 << 20)))
    b.write_phys(0x200000, b"secret" * 100)
    return b


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def cli(tmp: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``kexec-py --backend model --model-state TMP/state ...`` through run()."""
    with pytest.raises(SystemExit) as ei:
        run(["--backend", "model", "--model-state", str(tmp / "state"), *args])
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def victim(tmp: Path) -> Path:
    v = tmp / "victim"
    v.write_bytes(VICTIM)
    v.chmod(0o644)
    return v


# --- mode 0600 whatever the umask ---------------------------------------------------------


def test_save_image_is_0600(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "hib.img"
    save(tmp_path, out)
    assert mode(out) == 0o600
    assert not out.with_name("hib.img.part").exists()


def test_dump_memory_is_0600(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "mem.core"
    small_model().dump_memory(out)
    assert mode(out) == 0o600
    assert not out.with_name("mem.core.part").exists()


def test_cli_save_image_and_dump_memory_are_0600(tmp_path: Path, umask022: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(tmp_path, capsys, "model-reset", "--memory", "16M")
    assert rc == 0, err
    rc, _, err = cli(tmp_path, capsys, "dump-memory", str(tmp_path / "mem.core"))
    assert rc == 0, err
    assert mode(tmp_path / "mem.core") == 0o600
    rc, _, err = cli(tmp_path, capsys, "save-image", "--from", str(core(tmp_path)), "--entry",
                     "0x2000000", str(tmp_path / "hib.img"))
    assert rc == 0, err
    assert mode(tmp_path / "hib.img") == 0o600


def test_an_existing_file_is_replaced_by_a_private_one(tmp_path: Path, umask022: None) -> None:
    out = tmp_path / "hib.img"
    out.write_bytes(b"old")
    out.chmod(0o644)
    save(tmp_path, out)
    assert mode(out) == 0o600 and out.read_bytes()[:4] == b"\x7fELF"


# --- symlinks at OUT ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["save-image", "dump-memory"])
def test_a_symlink_at_out_is_not_followed(tmp_path: Path, command: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    v = victim(tmp_path)
    out = tmp_path / "out.img"
    out.symlink_to(v)
    args = ["--from", str(core(tmp_path)), "--entry", "0x2000000"] if command == "save-image" \
        else []
    if command == "dump-memory":
        assert cli(tmp_path, capsys, "model-reset", "--memory", "16M")[0] == 0
    rc, _, err = cli(tmp_path, capsys, command, *args, str(out))
    assert v.read_bytes() == VICTIM and mode(v) == 0o644
    assert rc == 1
    assert f"error: {out}" in err or f"{out} is a symbolic link" in err, err
    assert "symbolic link" in err and "hint: " in err
    assert out.is_symlink() and os.readlink(out) == str(v)  # left as it was
    assert not out.with_name("out.img.part").exists()


def test_a_dangling_symlink_at_out_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "created-through-the-link"
    out = tmp_path / "mem.core"
    out.symlink_to(target)
    with pytest.raises(KexecError) as ei:
        small_model().dump_memory(out)
    assert not target.exists()
    assert str(out) in ei.value.message and ei.value.hint


# --- symlinks and leftovers at OUT.part ---------------------------------------------------


@pytest.mark.parametrize("command", ["save-image", "dump-memory"])
def test_a_symlink_at_out_part_is_not_followed(tmp_path: Path, command: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    v = victim(tmp_path)
    out = tmp_path / "out.img"
    part = tmp_path / "out.img.part"
    part.symlink_to(v)
    args = ["--from", str(core(tmp_path)), "--entry", "0x2000000"] if command == "save-image" \
        else []
    if command == "dump-memory":
        assert cli(tmp_path, capsys, "model-reset", "--memory", "16M")[0] == 0
    rc, _, err = cli(tmp_path, capsys, command, *args, str(out))
    assert v.read_bytes() == VICTIM and mode(v) == 0o644
    assert rc == 1 and f"error: {part}" in err and "symbolic link" in err, err
    assert f"rm {part}" in err and "hint: " in err
    assert part.is_symlink()  # not ours: left for the operator to look at
    assert not out.exists()


def test_a_dangling_symlink_at_out_part_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "created-through-the-link"
    out = tmp_path / "hib.img"
    out.with_name("hib.img.part").symlink_to(target)
    with pytest.raises(KexecError, match="symbolic link"):
        save(tmp_path, out)
    assert not target.exists() and not out.exists()


def test_a_leftover_part_file_of_an_interrupted_run_is_replaced(tmp_path: Path,
                                                                umask022: None) -> None:
    out = tmp_path / "hib.img"
    part = tmp_path / "hib.img.part"
    part.write_bytes(b"half an image")
    save(tmp_path, out)
    assert not part.exists() and mode(out) == 0o600
    assert out.read_bytes()[:4] == b"\x7fELF"


def test_a_part_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "hib.img"
    part = tmp_path / "hib.img.part"
    part.mkdir()
    with pytest.raises(KexecError) as ei:
        save(tmp_path, out)
    assert str(part) in ei.value.message and "not a regular file" in ei.value.message
    assert ei.value.hint and part.is_dir() and not out.exists()


def test_a_part_file_of_another_user_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mem.core"
    part = tmp_path / "mem.core.part"
    part.write_bytes(b"someone's")
    os.chown(part, 65534, 65534)
    with pytest.raises(KexecError) as ei:
        small_model().dump_memory(out)
    assert str(part) in ei.value.message and "uid 65534" in ei.value.message
    assert part.read_bytes() == b"someone's" and not out.exists()


# --- atomic, synced -----------------------------------------------------------------------


def test_a_failed_dump_leaves_the_old_file_and_no_part(tmp_path: Path) -> None:
    out = tmp_path / "mem.core"
    out.write_bytes(b"the previous dump")
    b = small_model()

    def broken(start: int, end: int) -> Iterator[tuple[int, bytes]]:
        yield start, b"x" * P
        raise OSError(28, "No space left on device")

    b.kernel.mem.nonzero_runs = broken  # type: ignore[method-assign]
    with pytest.raises(KexecError) as ei:
        b.dump_memory(out)
    assert str(out) in ei.value.message and "No space left" in ei.value.message
    assert ei.value.hint
    assert out.read_bytes() == b"the previous dump"
    assert not out.with_name("mem.core.part").exists()


def test_a_failed_save_leaves_the_old_file_and_no_part(tmp_path: Path) -> None:
    out = tmp_path / "hib.img"
    out.write_bytes(b"the previous image")
    src = hibsave.FileSource(core(tmp_path))
    phase = [""]
    real = src.read

    def read(offset: int, size: int) -> bytes:
        if phase[0] == "write":  # once some of the image is written
            raise OSError(5, "Input/output error")
        return real(offset, size)

    def progress(what: str, done: int, total: int) -> None:
        phase[0] = what

    src.read = read  # type: ignore[method-assign]
    with pytest.raises(KexecError, match="Input/output error"):
        hibsave.save_image(src, out, jump_back=None, chunk=P, progress=progress)
    src.close()
    assert out.read_bytes() == b"the previous image"
    assert not out.with_name("hib.img.part").exists()


@pytest.mark.parametrize("what", ["save", "dump"])
def test_the_file_and_its_directory_are_fsynced(tmp_path: Path, what: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[int, int, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out.img"
    if what == "save":
        save(tmp_path, out)
    else:
        small_model().dump_memory(out)
    st, dst = os.stat(out), os.stat(tmp_path)
    assert (st.st_dev, st.st_ino, False) in synced
    assert (dst.st_dev, dst.st_ino, True) in synced
    # the file is synced before the rename, the directory after
    assert synced.index((st.st_dev, st.st_ino, False)) < \
        synced.index((dst.st_dev, dst.st_ino, True))


def test_out_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "adir"
    out.mkdir()
    with pytest.raises(KexecError) as ei:
        small_model().dump_memory(out)
    assert str(out) in ei.value.message and ei.value.hint
    with pytest.raises(KexecError) as ei:
        save(tmp_path, out)
    assert str(out) in ei.value.message and ei.value.hint
    assert out.is_dir() and not (tmp_path / "adir.part").exists()

"""``kexec-py demo``: the whole hibernation cycle on the model, in the suite."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest

from kexec_py.boundary.procfs import PageMap
from kexec_py.frontend.cli import run
from kexec_py.hibernate import window as backupmap


def _demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        run([*args])
    out = capsys.readouterr()
    return int(ei.value.code or 0), out.out, out.err


def test_demo_every_check_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _demo(capsys, "demo", "--workdir", str(tmp_path))
    assert rc == 0, out + err
    for step in ("1. kernel A", "2. A loads the hibernating kernel B", "3. A jumps to B",
                 "4. B reads A's memory", "5. B saves the image", "6. a fresh kernel C",
                 "7. C resumes the image", "8. memory equals A's"):
        assert step in out
    assert "every check holds" in out and "FAILED" not in out
    assert (tmp_path / "hibernation.img").exists()


def test_demo_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _demo(capsys, "--json", "demo", "--seed", "4", "--workdir", str(tmp_path))
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and len(doc["checks"]) == 8
    assert all(c["ok"] for c in doc["checks"])
    assert "every check holds" in err  # the rendering goes to stderr with --json


def test_demo_fails_when_the_backup_map_is_wrong(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup map that forgets where the pages went must make the demo
    fail (exit 1), naming the check."""
    real = backupmap.build_elfcorehdr

    def forgetful(ram, pm, **kw):  # type: ignore[no-untyped-def]
        return real(ram, PageMap(array("Q"), array("Q")), **kw)

    monkeypatch.setattr(backupmap, "build_elfcorehdr", forgetful)
    rc, out, err = _demo(capsys, "demo", "--workdir", str(tmp_path))
    assert rc == 1
    assert "error: the demo failed: B sees A's memory byte for byte" in err
    assert "FAILED" in out

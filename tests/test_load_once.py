"""A load opens, maps and identifies its kernel once, whichever way it
goes: kexec-py load (-c, -s, the default with its fallback, --dry-run,
--staged) and kexec -l.  Counted on the model backend by spying on the two
places a kernel can be mapped (mmap.mmap in kexec_py.load.image) and
identified (image_kind): the kernel's mappings are counted, the model's own
state files are not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kernelgen import make_bzimage

from kexec_py.frontend.cli import cli
from kexec_py.frontend.compat import main as compat_main
from kexec_py.load import image


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    seen = {"mmap": 0, "kind": 0}
    real_map, real_kind = image._map_fd, image.image_kind

    def map_fd(path: Path, what: str, fd: int) -> image.MappedFile:
        if what == "kernel":
            seen["mmap"] += 1
        return real_map(path, what, fd)

    def kind(data: Any) -> str:
        seen["kind"] += 1
        return real_kind(data)

    monkeypatch.setattr(image, "_map_fd", map_fd)
    monkeypatch.setattr(image, "image_kind", kind)
    yield seen


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    k = tmp_path / "bzImage"
    k.write_bytes(make_bzimage())
    return k


@pytest.mark.parametrize("args", [
    ["-c"], ["-s"], [], ["--dry-run"], ["-c", "--dry-run"], ["--staged=always"],
    ["--staged=always", "--dry-run"],
])
def test_kexec_py_load_maps_and_identifies_the_kernel_once(
        tmp_path: Path, kernel: Path, counts: dict[str, int], args: list[str]) -> None:
    r = CliRunner().invoke(cli, ["--backend", "model", "--model-state", str(tmp_path / "m"),
                                 "--json", "load", *args, str(kernel)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert counts == {"mmap": 1, "kind": 1}


def test_compat_load_maps_and_identifies_the_kernel_once(
        tmp_path: Path, kernel: Path, counts: dict[str, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEXEC_PY_BACKEND", "model")
    monkeypatch.setenv("KEXEC_PY_MODEL_STATE", str(tmp_path / "m"))
    assert compat_main(["-l", "-c", str(kernel)]) == 0
    assert counts == {"mmap": 1, "kind": 1}


@pytest.mark.parametrize("args", [
    ["--staged=always"],
    ["--staged=always", "--load-preserve-context", "--mem-min", "0x10000000",
     "--mem-max", "0x17ffffff"],
])
def test_a_staged_plan_outlives_the_opening_of_its_files(tmp_path: Path, kernel: Path,
                                                         args: list[str]) -> None:
    """The staged planners return segments after the files are closed: the
    initrd's segment is the whole mapping, which must still be there when
    the calls are made (the QEMU hibernation test caught a released one)."""
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(range(256)) * 64)
    r = CliRunner().invoke(cli, ["--backend", "model", "--model-state", str(tmp_path / "m"),
                                 "--json", "load", *args, "--initrd", str(initrd),
                                 str(kernel)])
    assert r.exit_code == 0, (r.output, r.exception)

"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeroot import QEMU_MEMMAP, make_root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root", memmap=QEMU_MEMMAP)


@pytest.fixture
def umask022() -> Iterator[None]:
    """The usual umask, whatever the test runner's: files kexec-py must keep
    private have to be 0600 in spite of it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)

"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeroot import QEMU_MEMMAP, make_root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root", memmap=QEMU_MEMMAP)

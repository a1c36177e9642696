"""The kernel of kernel/build.sh, built (or found in its cache) once per
session for the tests of this directory."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from vm.harness import record
from vm.patched.common import BUILD, BUILD_TIMEOUT


@pytest.fixture(scope="session")
def patched_kernel(vm_ready: None) -> Path:
    """kernel/build.sh: the directory of the built (or cached) kernel."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([str(BUILD)], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kernel/build.sh took more than {BUILD_TIMEOUT} s", pytrace=False)
    if p.returncode != 0:
        pytest.fail(f"kernel/build.sh failed ({p.returncode}):\n{p.stderr[-6000:]}",
                    pytrace=False)
    out = Path(p.stdout.strip().splitlines()[-1])
    how = "cached" if "cached" in p.stderr else "built"
    record("kernel", f"KERNEL {how} in {time.monotonic() - t0:.1f}s: {out}",
           seconds=time.monotonic() - t0, path=str(out), how=how)
    assert (out / "bzImage").is_file() and (out / "vmlinux").is_file(), out
    return out

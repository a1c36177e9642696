"""Gate, fixtures and the measurement report of the QEMU tests (marker ``vm``).

Tests marked ``vm`` skip unless KEXEC_PY_VM_TESTS=1; with it set, a host
that lacks a prerequisite fails them (CI must not skip silently).  What the
tests measured is written to tests/vm/.cache/results.json and shown at the
end of the pytest run (harness.record).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from vm import harness

SKIP_REASON = ("QEMU tests: set KEXEC_PY_VM_TESTS=1 (needs qemu-system-x86, "
               "linux-image-amd64, busybox-static, cpio, kexec-tools)")


def vm_enabled() -> bool:
    return os.environ.get("KEXEC_PY_VM_TESTS") == "1"


@pytest.fixture(autouse=True)
def _vm_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("vm") is not None and not vm_enabled():
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="session")
def vm_ready() -> None:
    """Skip (KEXEC_PY_VM_TESTS unset) or fail (a prerequisite missing) before
    any module-scoped fixture boots a guest."""
    if not vm_enabled():
        pytest.skip(SKIP_REASON)
    missing = harness.missing_prerequisites()
    if missing:
        pytest.fail("KEXEC_PY_VM_TESTS=1 but this host lacks: " + "; ".join(missing),
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not harness.RESULTS:
        return
    terminalreporter.section(f"kexec-py VM measurements ({harness.CACHE / 'results.json'})")
    for res in harness.RESULTS:
        terminalreporter.write_line(str(res["line"]))

"""Issue 2 ("Foundation") against real kernels: Debian's linux-image-amd64
booted under QEMU/TCG runs kexec-py with Debian's python3.

Two boots: ``foundation`` (512 MiB: status, load -s, the peer's timing,
errors, unload, exec into a second kernel that prints the marker) and
``crash`` (1 GiB with crashkernel=256M: load -p, unload -p, a panic boots
the crash kernel).  Scripts: guest/scenarios/*.sh.
"""

from __future__ import annotations

import re
import secrets
import statistics

import pytest

from vm import harness
from vm.harness import SerialLog, record

pytestmark = pytest.mark.vm


def _boot_line(log: SerialLog) -> str:
    m = log.milestones()
    parts = [f"{k}={v:.1f}s" for k, v in m.items()]
    return f"BOOT {log.scenario}: " + " ".join(parts) + f" (qemu status {log.status})"


@pytest.fixture(scope="module")
def foundation(vm_ready: None) -> tuple[SerialLog, str]:
    marker = f"foundation-{secrets.token_hex(4)}"
    log = harness.run_scenario("foundation", params={"marker": marker, "reps": "3"})
    record("foundation", _boot_line(log), duration=log.duration,
           milestones=log.milestones(), log=str(log.path))
    return log, marker


@pytest.fixture(scope="module")
def crash(vm_ready: None) -> tuple[SerialLog, str]:
    marker = f"crash-{secrets.token_hex(4)}"
    log = harness.run_scenario("crash", memory=1024, append="crashkernel=256M",
                               params={"marker": marker})
    record("crash", _boot_line(log), duration=log.duration, milestones=log.milestones(),
           log=str(log.path))
    return log, marker


def _ok(log: SerialLog, name: str) -> harness.Step:
    st = log.step(name)
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    return st


def _refused(log: SerialLog, name: str) -> harness.Step:
    """A step that must fail the kexec-py way: exit 1, error and hint lines."""
    st = log.step(name)
    assert st.rc == 1, f"{st}\nlog: {log.path}"
    assert st.err_lines and st.err_lines[0].startswith("error: "), st
    assert any(line.startswith("hint: ") for line in st.err_lines), st
    assert "Traceback" not in st.err and "internal error" not in st.err, st
    return st


# --- foundation ------------------------------------------------------------------------


def test_version_and_status(foundation: tuple[SerialLog, str]) -> None:
    log, _ = foundation
    assert _ok(log, "version").out.startswith("kexec-py ")
    text = _ok(log, "status").out
    assert "backend:" in text and "linux" in text
    st = _ok(log, "status-json-initial").json()
    assert st["backend"] == "linux"
    assert st["loaded"] is False
    assert st["kexec_file_load"] == "yes" and st["kexec_load"] == "yes"
    assert st["cap_sys_boot"] is True
    assert st["problems"] == []


def test_load_status_exec_boots_the_second_kernel(foundation: tuple[SerialLog, str]) -> None:
    log, marker = foundation
    _ok(log, "load")
    st = _ok(log, "status-json-loaded").json()
    assert st["loaded"] is True
    assert "exec" not in log.steps, f"exec returned: {log.steps.get('exec')}"
    # the second kernel's /init saw the command line given to 'load --append'
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    assert f"KEXEC_PY_MARKER={marker}" in log.stage2["cmdline"]
    assert log.first("@@STAGE2 done") is not None
    exec_at, stage2_at = log.at("@@EXEC"), log.at("@@STAGE2 uptime")
    assert exec_at is not None and stage2_at is not None and stage2_at > exec_at


def test_unload_clears_the_state(foundation: tuple[SerialLog, str]) -> None:
    log, _ = foundation
    _ok(log, "unload-load")
    assert _ok(log, "unload-loaded").out.strip() == "1"
    _ok(log, "unload")
    assert _ok(log, "unload-status-json").json()["loaded"] is False
    assert _ok(log, "unload-after").out.strip() == "0"


def test_not_a_kernel_is_refused_and_loads_nothing(foundation: tuple[SerialLog, str]) -> None:
    log, _ = foundation
    st = _refused(log, "not-a-kernel")
    assert "/tmp/not-a-kernel" in st.err_lines[0]
    assert "ENOEXEC" in st.err or "not a" in st.err_lines[0].lower()
    assert _ok(log, "not-a-kernel-loaded").out.strip() == "0"


def test_eperm_without_root_or_cap_sys_boot(foundation: tuple[SerialLog, str]) -> None:
    log, _ = foundation
    for name in ("eperm-nonroot", "eperm-nocap"):
        st = _refused(log, name)
        assert "EPERM" in st.err_lines[0], st
        hint = next(line for line in st.err_lines if line.startswith("hint: "))
        assert "CAP_SYS_BOOT" in hint and "root" in hint, st
    # status explains it before a load is tried
    status = log.step("eperm-nocap-status")
    assert status.rc == 0, status
    data = status.json()
    assert data["cap_sys_boot"] is False
    assert any("CAP_SYS_BOOT" in p for p in data["problems"]), data
    assert _ok(log, "eperm-loaded").out.strip() == "0"


def test_timings_against_kexec_tools(foundation: tuple[SerialLog, str]) -> None:
    """The peer's ``kexec -s -l`` and ``kexec-py load -s`` of the same kernel,
    initrd and command line in one boot (numbers recorded, not asserted)."""
    log, _ = foundation
    failed = [t for t in log.timings if t.rc != 0]
    assert not failed, f"timed commands failed: {failed}\nlog: {log.path}"
    med: dict[str, float] = {}
    for label in ("kexec-tools-load", "kexec-py-load", "kexec-tools-unload",
                  "kexec-py-unload", "kexec-py-version", "kexec-py-status", "python-start",
                  "python-import-click"):
        times = log.times(label)
        assert len(times) == 3, f"{label}: {times}"
        med[label] = statistics.median(times)
    record("timing", f"TIMING kexec-tools={med['kexec-tools-load']:.2f}s "
           f"kexec-py={med['kexec-py-load']:.2f}s (load -s, median of 3, TCG guest)",
           **{k: log.times(k) for k in med})
    record("timing", "TIMING guest: " + " ".join(
        f"{k}={v:.2f}s" for k, v in med.items() if k not in ("kexec-tools-load",
                                                              "kexec-py-load")))


# --- crash -------------------------------------------------------------------------------


def test_crash_kernel_boots_on_panic(crash: tuple[SerialLog, str]) -> None:
    log, marker = crash
    st = _ok(log, "status-json-initial").json()
    assert st["crash_loaded"] is False and st["crash_size"] > 0
    assert int(_ok(log, "crash-size").out) == st["crash_size"]
    _ok(log, "load-p-first")
    assert _ok(log, "crash-loaded-first").out.strip() == "1"
    _ok(log, "unload-p")
    assert _ok(log, "crash-loaded-unloaded").out.strip() == "0"
    _ok(log, "load-p")
    st = _ok(log, "status-json-loaded").json()
    assert st["crash_loaded"] is True and st["loaded"] is False
    assert _ok(log, "crash-loaded").out.strip() == "1"
    assert _ok(log, "normal-loaded").out.strip() == "0"
    assert "sysrq-returned" not in log.steps
    # the crash kernel booted with our command line and sees the old memory
    assert log.stage2.get("marker") == marker, f"no marker from the crash kernel:\n{log.tail()}"
    assert "elfcorehdr=" in log.stage2["cmdline"]
    assert log.stage2.get("vmcore_magic") == "177ELF", log.stage2
    assert int(log.stage2["vmcore"]) > 0


def test_import_time_in_the_guest(foundation: tuple[SerialLog, str]) -> None:
    """``python3 -X importtime kexec-py load -s``: the slowest top-level
    imports, recorded for the start-up work (not asserted)."""
    log, _ = foundation
    st = _ok(log, "importtime-load")
    _ok(log, "importtime-unload")
    rows = []
    for line in st.err_lines:
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and not m[3]:  # top level: no indentation
            rows.append((int(m[2]), m[4]))
    assert rows, st
    rows.sort(reverse=True)
    total = sum(us for us, _ in rows)
    record("importtime", f"IMPORTS load -s: {total / 1e6:.2f}s in top-level imports; " + ", ".join(
        f"{name}={us / 1e6:.2f}s" for us, name in rows[:6]), top=rows[:15], total_us=total)

"""Issue 6 scenarios 1, 2 and 5 driven by kexec-py itself, on the kernel of
kernel/build.sh (and on Debian's stock kernel for the refusal).

* ``patched_kpy``: scenario 5 (the idea of the kernel selftest
  test_kexec_jump.c: one page of code, ``incq counter; ret``, loaded by
  ``kexec-py load -t elf-x86_64 --load-preserve-context --entry``, in one
  call and with ``--staged=always``; ``kexec-py exec`` jumps there and
  back; the counter went up), scenario 2 (kexec-py's executor meets a
  KS_mid the kernel refuses: the error names the call and nothing stays
  loaded; with the kernel of scenario 1 loaded, a refused KS_mid, SIGINT and
  SIGTERM leave it loaded and bootable; ``kexec-py resume --staged=always``
  of a 60-PT_LOAD core makes KS_start, two KS_mid, KS_final), scenario 1 (``kexec-py load
  --staged=always`` of the kernel + initrd, ``kexec-py pgmap``, ``kexec-py
  exec``: the marker);
* ``patched_kpy_stages``: the kernel + initrd as a 60-PT_LOAD core loaded by
  kexec-py's planner and executor in four calls, ``kexec-py pgmap --raw``
  and ``--json`` checked against /dev/mem after every call, then the exec:
  the marker;
* ``patched_kpy_stock``: Debian's kernel refuses, with kexec-py's message,
  and nothing is loaded.

The kernel comes from conftest.py (kernel/build.sh), the boot helper and
the parsing of kstage.py's checks from common.py.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest

from vm import harness
from vm.harness import SerialLog, Step, record
from vm.patched.common import boot, checks, require

pytestmark = pytest.mark.vm

PRESERVE_CONTEXT = 0x2
LINE = re.compile(r"0x([0-9a-f]{16})\t0x([0-9a-f]{16})")


@pytest.fixture(scope="module")
def kpy(patched_kernel: Path) -> tuple[SerialLog, str]:
    marker = f"kpy-{secrets.token_hex(4)}"
    bz = patched_kernel / "bzImage"
    return boot("patched_kpy", "kpy.sh", bz, bz, params={"marker": marker}), marker


@pytest.fixture(scope="module")
def kpy_stages(patched_kernel: Path) -> tuple[SerialLog, str]:
    marker = f"kpy-stages-{secrets.token_hex(4)}"
    bz = patched_kernel / "bzImage"
    return boot("patched_kpy_stages", "kpy-stages.sh", bz, bz, params={"marker": marker}), marker


@pytest.fixture(scope="module")
def kpy_stock(vm_ready: None) -> SerialLog:
    stock = harness.default_kernel()
    return boot("patched_kpy_stock", "kpy-stock.sh", stock, stock)


def ok(log: SerialLog, name: str) -> Step:
    st = log.step(name)
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    assert "Traceback" not in st.err, st
    return st


def refused(log: SerialLog, name: str) -> Step:
    st = log.step(name)
    assert st.rc == 1, f"{st}\nlog: {log.path}"
    assert st.err_lines and st.err_lines[0].startswith("error: "), st
    assert any(line.startswith("hint: ") for line in st.err_lines), st
    assert "Traceback" not in st.err, st
    return st


def events(st: Step) -> list[dict[str, object]]:
    """The JSON event lines kexec-py --json writes on stderr."""
    return [json.loads(line) for line in st.err_lines if line.startswith("{")]


def step_seconds(log: SerialLog, name: str) -> float:
    """Host seconds from the end of the step before NAME to NAME's report
    (the step's run time plus a little serial output)."""
    t_end = 0.0
    for t, line in log.lines:
        if line.startswith("@@END "):
            t_end = t
        elif line.startswith(f"@@STEP {name} "):
            return t - t_end
    raise AssertionError(f"no step {name}")


# --- scenario 5: kexec jump -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["jump", "jump-staged"])
def test_kexec_py_jump_there_and_back(kpy: tuple[SerialLog, str], how: str) -> None:
    log, _ = kpy
    loaded = ok(log, f"kpy-{how}-load").json()
    assert loaded["loaded"] is True and loaded["entry"] == 0x400000, loaded
    assert loaded["flags"] & PRESERVE_CONTEXT, loaded
    if how == "jump-staged":
        assert loaded["staged"] is True and loaded["calls"] >= 2, loaded
        assert loaded["backup_map"]["encoding"] == "elfcorehdr", loaded
    assert ok(log, f"kpy-{how}-exec").json() == {"executed": True, "returned": True}
    require(checks(log, f"kpy-{how}-check"), "jump-check/code", "jump-check/code-ran")
    ok(log, f"kpy-{how}-unload")
    record("kexec-py", f"KEXEC-PY {how}: load {step_seconds(log, f'kpy-{how}-load'):.2f}s, "
           f"exec there and back {step_seconds(log, f'kpy-{how}-exec'):.2f}s (host clock, TCG)")


# --- scenario 2: the page map, a failed KS_mid ---------------------------------------------------


def test_kexec_py_failed_mid_leaves_nothing_loaded(kpy: tuple[SerialLog, str]) -> None:
    log, _ = kpy
    res = checks(log, "kpy-failed-mid")
    require(res, *(f"kpy-failed-mid/{c}" for c in (
        "before", "refused", "names-the-call", "says-abandoned", "start-ran", "abandoned",
        "loaded-as-before", "pgmap-enodev")))


def test_kexec_py_failed_or_interrupted_staged_load_keeps_the_kernel_before(
        kpy: tuple[SerialLog, str]) -> None:
    """With the kernel + initrd loaded (scenario 1), a staged load the kernel
    refuses, one interrupted by SIGINT and one by SIGTERM: the kernel stays
    loaded, its page map still matches memory, and exec boots it (the marker)."""
    log, marker = kpy
    require(checks(log, "kpy-failed-kept"), *(f"kpy-failed-mid/{c}" for c in (
        "before", "refused", "names-the-call", "says-abandoned", "abandoned",
        "loaded-as-before")))
    res = checks(log, "kpy-interrupted-kept")
    for sig in ("SIGINT", "SIGTERM"):
        require(res, *(f"kpy-interrupted/{sig}/{c}" for c in (
            "interrupted", "says-abandoned", "loaded-as-before")))
    require(checks(log, "kpy-pgmap-check-kept"), "pgmap/open", "pgmap/format",
            "pgmap/src-not-dst")
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"


def test_kexec_py_resume_makes_start_two_mids_final(kpy: tuple[SerialLog, str]) -> None:
    log, _ = kpy
    st = ok(log, "kpy-resume")
    assert st.json()["calls"] >= 4, st
    stages = [e["stage"] for e in events(st) if e.get("event") == "call"]
    assert stages[0] == "start" and stages[-1] == "final" and stages.count("mid") >= 2, stages
    require(checks(log, "kpy-resume-pgmap"), "pgmap/open", "pgmap/format", "pgmap/src-not-dst")
    ok(log, "kpy-resume-unload")
    record("kexec-py", f"KEXEC-PY resume --staged=always of 60 PT_LOADs: calls {stages}, "
           f"{step_seconds(log, 'kpy-resume'):.2f}s (host clock, TCG)")


def test_kexec_py_pgmap_between_stages(kpy_stages: tuple[SerialLog, str]) -> None:
    log, marker = kpy_stages
    res = checks(log, "kpy-stages")
    require(res, "kpy-stages/four-calls-or-more", "kpy-stages/all-calls")
    calls = sorted({k.split("/")[1] for k in res if re.match(r"kpy-stages/\d+-", k)})
    assert len(calls) >= 4, calls
    for c in calls:
        require(res, *(f"kpy-stages/{c}/{what}" for what in (
            "kexec-py-pgmap-raw", "raw/format", "kexec-py-pgmap-json", "loaded-only-after-final",
            "dst-in-segments", "src-not-destination", "contents")))
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    record("kexec-py", f"KEXEC-PY stages {calls}: load with checks "
           f"{step_seconds(log, 'kpy-stages'):.2f}s, exec -> /init "
           f"{(log.at('@@STAGE2 uptime') or 0) - (log.at('@@EXEC') or 0):.1f}s")


# --- scenario 1: a staged load of the kernel, exec ------------------------------------------------


def test_kexec_py_staged_load_boots(kpy: tuple[SerialLog, str]) -> None:
    log, marker = kpy
    st = ok(log, "kpy-status").json()
    assert st["staged"] is True and st["kernel"].endswith("-kexec-staged"), st
    load = ok(log, "kpy-load")
    out = load.json()
    assert out["staged"] is True and out["calls"] == 4, out
    stages = [e["stage"] for e in events(load) if e.get("event") == "call"]
    # one segment per call: entry stub, boot_params, kernel, initrd
    assert stages == ["start", "mid", "mid", "final"], stages
    assert ok(log, "kpy-loaded").out.strip() == "1"
    raw = ok(log, "kpy-pgmap-raw").out_lines
    assert raw and all(LINE.fullmatch(line) for line in raw), raw[:5]
    pairs = [(int(a, 16), int(b, 16)) for a, b in (LINE.fullmatch(x).groups() for x in raw)]
    assert not {s for _, s in pairs} & {d for d, _ in pairs}, "a source page is a destination"
    assert ok(log, "kpy-pgmap-json").json()["pages"] == len(raw)
    require(checks(log, "kpy-pgmap-check"), "pgmap/open", "pgmap/format", "pgmap/src-not-dst")
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    record("kexec-py", f"KEXEC-PY load --staged=always: calls {stages}, "
           f"{step_seconds(log, 'kpy-load'):.2f}s; exec -> /init "
           f"{(log.at('@@STAGE2 uptime') or 0) - (log.at('@@EXEC') or 0):.1f}s (TCG)")


def test_stock_kernel_refuses_kexec_py_staged(kpy_stock: SerialLog) -> None:
    log = kpy_stock
    assert ok(log, "kpy-status").json()["staged"] is False
    for name in ("kpy-load", "kpy-resume"):
        st = refused(log, name)
        assert "/proc/kexec_pgmap" in st.err_lines[0], st
        assert "multi-stage" in st.err_lines[0], st
    assert ok(log, "kpy-loaded-after-load").out.strip() == "0"
    assert ok(log, "kpy-loaded-after-resume").out.strip() == "0"
    assert "/proc/kexec_pgmap" in refused(log, "kpy-pgmap").err_lines[0]

"""A staged load that fails or is interrupted keeps the image loaded
before it, on the model of the patched kernel: kexec-py abandons the
staged load (KS_start with no segments, kernel/patches 0003) instead of
unloading, and 'exec' still boots the old image.  The same on the patched
kernel in QEMU: tests/vm/patched/test_kexec_py_on_patched.py."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

from kexec_py.boundary.abi import PAGE_SIZE, Stage, stage_flags
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import KexecError, SyscallError
from kexec_py.load.plan import Call, Plan
from kexec_py.load.staging import (
    Event,
    Interrupted,
    Parameter,
    StagedPlan,
    abandon,
    execute,
    plan_load,
)
from kexec_py.segments import Segment

P = PAGE_SIZE
OLD_ENTRY = 0x1000000
BASE = 0x8000000


def model(tmp: Path) -> ModelBackend:
    return ModelBackend(Path("/nonexistent-root"), state_path=tmp / "state")


def load_old(be: ModelBackend) -> None:
    be.kexec_load(OLD_ENTRY, [Segment(OLD_ENTRY, 4 * P, 5, b"old!!")], 0)


def staged_plan(bad_call: int | None) -> StagedPlan:
    """KS_start, two KS_mid, KS_final of one page each; ``bad_call`` (0..3)
    carries two overlapping segments, which the kernel refuses (EINVAL)."""
    calls = []
    for i, stage in enumerate((Stage.START, Stage.MID, Stage.MID, Stage.FINAL)):
        segs = [Segment(BASE + i * 0x10000, P, 3, b"new")]
        if i == bad_call:
            segs.append(Segment(BASE + i * 0x10000, 2 * P, 0, None))
        calls.append(Call(stage, stage_flags(stage), segs))
    return StagedPlan(Plan("kexec_load", BASE, calls), None, ["test"])


def assert_old_image_boots(be: ModelBackend) -> None:
    st = be.status()
    assert st.loaded is True and st.staging is None, st
    be.reboot_kexec()
    jump = be.last_jump
    assert jump is not None and jump.entry == OLD_ENTRY, jump


@pytest.mark.parametrize("bad_call", range(4))
def test_a_refused_call_keeps_the_image_before(tmp_path: Path, bad_call: int) -> None:
    be = model(tmp_path)
    load_old(be)
    with pytest.raises(SyscallError) as ei:
        execute(be, staged_plan(bad_call))
    assert ei.value.errno == errno.EINVAL
    assert f"call {bad_call + 1} of 4" in ei.value.message
    assert "the kernel loaded before it is still loaded" in ei.value.hint
    assert_old_image_boots(be)
    be.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("after", range(1, 4))
def test_a_signal_between_calls_keeps_the_image_before(tmp_path: Path, sig: int,
                                                       after: int) -> None:
    be = model(tmp_path)
    load_old(be)

    def on_event(e: Event) -> None:
        if e.kind == "call" and e.index == after:
            os.kill(os.getpid(), sig)

    with pytest.raises(Interrupted) as ei:
        execute(be, staged_plan(None), on_event=on_event)
    assert ei.value.exit_code == 128 + sig
    assert "the staged load was abandoned" in ei.value.hint
    assert_old_image_boots(be)
    be.close()


def test_a_failure_while_building_the_parameter_keeps_the_image_before(tmp_path: Path) -> None:
    be = model(tmp_path)
    load_old(be)

    def bad_map(*_: object) -> int:
        raise KexecError("the page map does not match the load")

    param = Parameter("backup map", BASE + 0x200000, P, lambda pm: b"map")
    segs = [Segment(BASE + i * 0x10000, P, 3, b"new") for i in range(20)]
    sp = plan_load(segs, BASE, supported=True, parameter=param)
    with pytest.raises(KexecError, match="does not match") as ei:
        execute(be, sp, validate=bad_map)
    assert "call 3 of 3 (KS_final)" in ei.value.message
    assert "the kernel loaded before it is still loaded" in ei.value.hint
    assert_old_image_boots(be)
    be.close()


def test_abandon_with_nothing_staged_changes_nothing(tmp_path: Path) -> None:
    be = model(tmp_path)
    abandon(be)
    assert be.status().loaded is False
    load_old(be)
    abandon(be)
    assert_old_image_boots(be)
    be.close()


def test_a_full_unload_still_unloads_everything(tmp_path: Path) -> None:
    be = model(tmp_path)
    load_old(be)
    be.kexec_load(BASE, [Segment(BASE, P, 0, None)], stage_flags(Stage.START))
    assert be.status().staging is not None
    be.kexec_load(0, [], 0)
    st = be.status()
    assert st.loaded is False and st.staging is None
    be.close()

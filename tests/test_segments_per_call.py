"""--segments-per-call, and the per-call byte budget from MemTotal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import make_bzimage

from kexec_py.boundary.abi import Stage
from kexec_py.boundary.backends import open_backend
from kexec_py.boundary.backends.linux import LinuxBackend
from kexec_py.boundary.procfs import parse_meminfo_total
from kexec_py.errors import PlanError, UnsupportedError
from kexec_py.frontend.cli import cli
from kexec_py.load.staging import call_budget, plan_load
from kexec_py.memmap import MemRegion
from kexec_py.ranges import Range
from kexec_py.segments import Segment

P = 4096


def segs(n: int) -> list[Segment]:
    return [Segment(0x100000 + 2 * i * P, P, 1, b"x", f"s{i}") for i in range(n)]


def test_one_segment_per_call_gives_start_mids_final() -> None:
    sp = plan_load(segs(4), 0x100000, staged="always", supported=True, max_segments=1)
    assert [c.stage for c in sp.plan.calls] == [Stage.START, Stage.MID, Stage.MID, Stage.FINAL]
    assert all(len(c.segments) == 1 for c in sp.plan.calls)


def test_auto_stages_when_the_cap_is_exceeded() -> None:
    sp = plan_load(segs(5), 0x100000, staged="auto", supported=True, max_segments=2)
    assert [len(c.segments) for c in sp.plan.calls] == [2, 2, 1]
    assert "--segments-per-call allows 2" in sp.plan.notes[-1]
    assert len(plan_load(segs(2), 0, staged="auto", supported=True,
                         max_segments=2).plan.calls) == 1


def test_cap_on_a_stock_kernel_is_refused_before_any_call() -> None:
    with pytest.raises(UnsupportedError, match="--segments-per-call allows 3"):
        plan_load(segs(4), 0, staged="auto", supported=False, max_segments=3)


@pytest.mark.parametrize("bad", [0, 17])
def test_cap_out_of_range(bad: int) -> None:
    with pytest.raises(PlanError, match="--segments-per-call"):
        plan_load(segs(2), 0, staged="auto", supported=True, max_segments=bad)


def test_meminfo_total() -> None:
    assert parse_meminfo_total("MemTotal:        8063520 kB\nMemFree: 1 kB\n") == 8063520 * 1024
    assert parse_meminfo_total("MemFree: 1 kB\n") is None


def test_call_budget_follows_memtotal(tmp_path: Path) -> None:
    ram = [MemRegion(Range(0x100000, 0x20000000), "System RAM")]  # ~511 MiB of firmware RAM
    root = make_root(tmp_path, memmap=QEMU_MEMMAP)
    # no MemTotal to go by: the memory map's RAM
    assert call_budget(ram, LinuxBackend(root)) == (0x1FF00 // 2) * 9 // 10 * P
    (root / "proc/meminfo").write_text("MemTotal:  393216 kB\n")  # booted with mem=384M
    assert call_budget(ram, LinuxBackend(root)) == (393216 // 4 // 2) * 9 // 10 * P


def test_cli_dry_run_four_calls(tmp_path: Path) -> None:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x00" * 10000)
    state = tmp_path / "model"
    r = CliRunner().invoke(cli, ["--backend", "model", "--model-state", str(state), "--json",
                                 "load", "-c", "--staged=always", "--segments-per-call", "1",
                                 "--dry-run", "--initrd", str(initrd), str(kernel)])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert [c["stage"] for c in plan["calls"]] == ["start", "mid", "mid", "final"]
    assert open_backend("model", tmp_path, {"state_path": state}).status().loaded is False

"""Issue 6, kernel half: Linux 6.1 with kernel/patches/ (the multi-stage
kexec_load, /proc/kexec_pgmap, the kexec jump fixes), built by
kernel/build.sh (cached by a hash of its inputs), booted under QEMU/TCG.

The guest side is guest/kstage.py, which calls kexec_load() raw and checks
what the kernel did through /proc/kexec_pgmap, /sys/kernel/kexec_loaded and
/dev/mem; it does not use kexec-py's staged loader.  The boots reuse the
harness of tests/vm (its initramfs, its /init, its second-stage /init that
prints the marker); the scenario scripts of this directory are added to the
initramfs as /scenarios/patched_*.sh.

Boots:

* ``patched_kstage`` (patched kernel, 512 MiB VM booted with mem=384M, so
  that kexec-py's placement at the top of the firmware's RAM puts segments
  above the running kernel's RAM): synthetic staged loads, two kexec jumps,
  a staged load of the patched kernel itself, exec, the marker;
* ``patched_kjump`` (two CPUs): the kexec jumps again;
* ``patched_kclassic`` twice: a one-call kexec_file_load and a one-call
  kexec_load (kexec-tools) still boot;
* ``patched_kstock`` (Debian's kernel): the stage bits are refused.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from vm import harness
from vm.harness import SerialLog, record
from vm.patched.common import boot, checks, require, times

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def kstage(patched_kernel: Path) -> tuple[SerialLog, str]:
    marker = f"staged-{secrets.token_hex(4)}"
    bz = patched_kernel / "bzImage"
    return boot("patched_kstage", "kstage.sh", bz, bz, append="mem=384M",
                params={"marker": marker}), marker


@pytest.fixture(scope="module")
def kjump(patched_kernel: Path) -> SerialLog:
    bz = patched_kernel / "bzImage"
    return boot("patched_kjump", "kjump.sh", bz, bz, smp=2, append="mem=384M")


@pytest.fixture(scope="module", params=["file", "tools"])
def kclassic(request: pytest.FixtureRequest, patched_kernel: Path) -> tuple[SerialLog, str]:
    marker = f"classic-{request.param}-{secrets.token_hex(4)}"
    bz = patched_kernel / "bzImage"
    return boot(f"patched_kclassic_{request.param}", "kclassic.sh", bz, bz,
                params={"marker": marker, "how": request.param}), marker


@pytest.fixture(scope="module")
def kstock(vm_ready: None) -> SerialLog:
    stock = harness.default_kernel()
    return boot("patched_kstock", "kstage-stock.sh", stock, stock)


# --- synthetic staged loads -----------------------------------------------------------------


def test_pgmap_between_stages_matches_the_loaded_pages(kstage: tuple[SerialLog, str]) -> None:
    log, _ = kstage
    res = checks(log, "kstage-synthetic")
    for when in ("after-start", "after-mid1", "after-mid2", "after-final"):
        require(res, *(f"a/{when}/{c}" for c in (
            "format", "sorted", "dst-in-segments", "src-not-destination", "src-distinct",
            "contents")))
    require(res, "a/start-not-loaded", "a/mid-not-loaded", "a/final-loaded")


def test_overlap_across_stages_and_rehoming(kstage: tuple[SerialLog, str]) -> None:
    log, _ = kstage
    res = checks(log, "kstage-synthetic")
    # contents checks after each stage cover the overlapping writes; this one
    # is the source page of KS_start that KS_mid loaded over
    require(res, "a/has-source-to-rehome", "a/rehomed", "a/after-mid1/contents")


def test_failed_stage_drops_the_whole_load(kstage: tuple[SerialLog, str]) -> None:
    log, _ = kstage
    res = checks(log, "kstage-synthetic")
    require(res, "c/exec-half-loaded", "c/2-mid", "c/failed-mid/unloaded",
            "c/failed-mid/pgmap-enodev", "c/mid-after-failure", "c/final-after-failure",
            "c/still-unloaded")
    for what in ("17-segments", "bad-buffer", "unaligned"):
        require(res, f"d-{what}/2-mid", f"d-{what}/pgmap-enodev",
                f"d-{what}/final-after-failure")


def test_state_machine_around_an_installed_image(kstage: tuple[SerialLog, str]) -> None:
    log, _ = kstage
    res = checks(log, "kstage-synthetic")
    require(res, "mid-after-final", "mid-after-final/keeps-loaded", "final-after-final",
            "crash-start", "b/start-keeps-old-loaded", "b/pgmap-shows-staged/dst-in-segments",
            "b/preserve-context-mismatch", "b/mid-after-drop", "b/drop-keeps-old-loaded",
            "a/pgmap-back-to-installed/contents", "unload/unloaded", "unload/pgmap-enodev")


def test_more_than_half_of_ram_in_stages(kstage: tuple[SerialLog, str]) -> None:
    log, _ = kstage
    res = checks(log, "kstage-synthetic")
    require(res, "half-ram/full-refused", "half-ram/1-start", "half-ram/2-mid",
            "half-ram/3-final", "half-ram/loaded", "half-ram/after-final/contents")
    t = times(log, "kstage-synthetic")
    info = next(line for line in log.step("kstage-synthetic").out_lines
                if line.startswith("info RAM "))
    record("patched", f"HALF-RAM {info[5:]}: stages "
           + " ".join(f"{k.split('/')[1]}={v:.2f}s" for k, v in t.items()
                      if k.startswith("half-ram/") and "pgmap" not in k)
           + f", pgmap read {t['half-ram/after-final/pgmap-read']:.3f}s", **t)


# --- kexec jumps ------------------------------------------------------------------------------

JUMP_CHECKS = ("returned", "our-page-restored", "same-pfn", "code-ran", "still-loaded", "unload")


@pytest.mark.parametrize("variant", ["classic", "staged"])
def test_kexec_jump_there_and_back(kstage: tuple[SerialLog, str], variant: str) -> None:
    log, _ = kstage
    res = checks(log, f"kstage-jump-{variant}")
    require(res, *(f"jump-{variant}/{c}" for c in JUMP_CHECKS))
    if variant == "staged":
        require(res, "jump-staged/ram-above-kernel", "jump-staged/image-page-swapped-back")
    t = times(log, f"kstage-jump-{variant}")
    record("patched", f"JUMP {variant}: there and back in "
           f"{t[f'jump-{variant}/there-and-back']:.3f}s (1 CPU)")


@pytest.mark.parametrize("variant", ["classic", "staged"])
def test_kexec_jump_with_two_cpus(kjump: SerialLog, variant: str) -> None:
    res = checks(kjump, f"kstage-jump-{variant}")
    require(res, *(f"jump-{variant}/{c}" for c in JUMP_CHECKS))
    t = times(kjump, f"kstage-jump-{variant}")
    record("patched", f"JUMP {variant}: there and back in "
           f"{t[f'jump-{variant}/there-and-back']:.3f}s (2 CPUs)")


# --- a real kernel, loaded in stages --------------------------------------------------------


def test_staged_load_of_a_kernel_boots_it(kstage: tuple[SerialLog, str]) -> None:
    log, marker = kstage
    res = checks(log, "kstage-load")
    for when in ("after-start", "after-mid1", "after-mid2", "after-final"):
        require(res, f"boot/{when}/contents", f"boot/{when}/src-not-destination")
    require(res, "boot/1-start", "boot/2-mid", "boot/3-mid", "boot/4-final",
            "boot/not-loaded-before-final", "boot/loaded")
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    assert log.stage2.get("kernel", "").endswith("-kexec-staged"), log.stage2
    exec_at, stage2_at = log.at("@@EXEC"), log.at("@@STAGE2 uptime")
    assert exec_at is not None and stage2_at is not None and stage2_at > exec_at
    record("patched", f"STAGED BOOT exec -> second kernel's /init {stage2_at - exec_at:.1f}s; "
           "calls " + " ".join(f"{k}={v:.3f}s" for k, v in times(log, "kstage-load").items()
                               if "pgmap" not in k))


# --- one-call loads, and the stock kernel -------------------------------------------------------


def test_one_call_loads_still_boot(kclassic: tuple[SerialLog, str]) -> None:
    log, marker = kclassic
    st = log.step("classic-load")
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    require(checks(log, "classic-pgmap"), "pgmap/open", "pgmap/format", "pgmap/src-not-dst")
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"


def test_stock_kernel_refuses_stage_bits(kstock: SerialLog) -> None:
    res = checks(kstock, "kstage-stock")
    require(res, "stock/no-pgmap", "stock/start-refused", "stock/unloaded")

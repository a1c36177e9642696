"""Issue 6 scenarios 3 and 4 on the kernel of kernel/build.sh: kexec-based
hibernation with kexec-py in the guest, three kernels in one QEMU run
(guest/hib-a.sh, hib-b.sh, hib-c.sh and their helper guest/hib.py), with
one CPU and with two.

1. Kernel A (``init_on_free=1``, so that memory it frees reads zero and
   stays out of the page-filtered image) holds anonymous pages inside and
   outside the window [W0, W1) (``WINDOW_MIB``), writes random markers into
   them through /dev/mem, writes a marker file and starts a counter loop;
   then ``kexec-py load --staged=always --load-preserve-context --mem-min
   W0 --mem-max W1-1`` of the patched kernel as B, and ``kexec-py exec``.
2. B, confined by kexec-py to the window and the RAM below 1 MiB
   (``memmap=exactmap``), reads /proc/vmcore -- which the kernel builds
   from the backup map kexec-py injected as ``elfcorehdr=`` -- and finds
   every marker at its physical address, the window's included, while its
   own memory at those addresses is not A's (scenario 3);
   ``kexec-py save-image``; then it boots kernel C with ``kexec-py load
   -c`` inside the window, the image appended to C's initramfs.
3. C, confined to the same memory, runs ``kexec-py resume /image.bin``
   (a normal load, in stages: the image has hundreds of PT_LOADs) and
   ``kexec-py exec``: A's ``kexec-py exec`` returns (scenario 4), its
   counter goes on, its marker file is there, the markers are at the same
   physical addresses (and in the holder's mapping), pages it held that
   were zero (left out of the image) still read zero, and its second CPU
   comes back.

How the resume enters A (arch/x86/kernel/relocate_kernel_64.S, 6.1): C's
load is not preserve-context, so C's ``identity_mapped`` copies the pages,
clears the registers and ``ret``s to the image's entry, the
``kexec_jump_back_entry`` B saw (save-image records it in the image): the
instruction after ``call *%rdx`` in A's control page.  There A's own code
reads the peer's re-entry point from ``0(%rsp)`` (C's pushed 0), switches to
A's kexec page table (still in A's memory: in the image), swaps the window
back with the backup pages and returns into ``machine_kexec``, which
reloads A's GDT (kernel/patches/0007).  C's identity map covers A's control
page because that page is a destination of the image; patch 0006 (map the
entry of a preserve-context image) is what B's jump back needs, not C's.
A's kexec image of B stays loaded with entry 0 (the value C left on its
stack), so A unloads it.

Why C is confined too: the image leaves out pages that read zero, so the
resume restores A only if nothing wrote to A's memory outside the window
after the jump (B and C stay inside it), while inside the window A's
jump-back swap takes the original contents from the backup pages, which
neither B nor C touched.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import pytest

from vm import harness
from vm.harness import SerialLog, Step, record
from vm.patched.common import GUEST, boot, checks, require

pytestmark = pytest.mark.vm

#: RAM of the VM.  B and C live in the window and each holds the image twice
#: (a file, and the kexec source pages of the next load); A needs free RAM
#: outside the window for the window's backup copies, plus its own.
MEMORY_MIB = 768
#: (start, size) in MiB: away from A's kernel and initramfs at the bottom and
#: from its initrd's pages at the top, which A reuses for what it allocates
#: later -- A's data inside the window is in the image twice (at its address
#: and in its backup copy)
WINDOW_MIB = (160, 288)
#: three kernels under TCG take 35 s
TIMEOUT = 300


def _concat(name: str, pieces: list[Path]) -> Path:
    """PIECES one after the other, each on a 4-byte boundary (VM-TESTING.md
    pitfall 1), cached under the names of the pieces."""
    key = harness._hash([harness._stat_key(p) for p in pieces])
    out = harness.CACHE / f"{name}-{key}.img"
    if not out.exists():
        def fill(f: BinaryIO) -> None:
            for p in pieces:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write(b"\0" * (-f.tell() % 4))
        harness._write_atomic(out, fill)
        harness._prune(f"{name}-", key)
    return out


def extra_files(kernel: Path) -> Mapping[str, Path | bytes]:
    """A's extra files: hib.py, the scripts of B and C, and B's initramfs:
    the base archive, the scripts, and as files C's initramfs (the same
    without them) and the kernel."""
    scripts: dict[str, Path | bytes] = {
        "scenarios/patched_hib_b.sh": GUEST / "hib-b.sh",
        "scenarios/patched_hib_c.sh": GUEST / "hib-c.sh",
        "patched/hib.py": GUEST / "hib.py"}
    own = harness.build_extra(scripts)
    assert own is not None
    c_img = _concat("hib-c", [harness.build_base().path, own])
    b_files = harness.build_extra({"boot/hib-c.img": c_img, "boot/vmlinuz": kernel})
    assert b_files is not None
    return {**scripts, "boot/hib-b.img": _concat("hib-b", [c_img, b_files])}


@pytest.fixture(scope="module", params=[1, 2], ids=["1cpu", "2cpu"])
def hib(request: pytest.FixtureRequest, patched_kernel: Path) -> tuple[SerialLog, str, int]:
    smp: int = request.param
    seed = secrets.token_hex(8)
    bz = patched_kernel / "bzImage"
    window = f"{WINDOW_MIB[0]}:{WINDOW_MIB[1]}"
    log = boot(f"patched_hib_{smp}cpu", "hib-a.sh", bz, bz, memory=MEMORY_MIB, smp=smp,
               append="init_on_free=1", params={"seed": seed, "window": window},
               timeout=TIMEOUT, extra_files=extra_files(bz))
    return log, seed, smp


def ok(log: SerialLog, name: str) -> Step:
    st = log.step(name)
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    assert "Traceback" not in st.err, st
    return st


def all_at(log: SerialLog, prefix: str) -> list[float]:
    """Host seconds of every line that starts with PREFIX."""
    return [t for t, line in log.lines if line.startswith(prefix)]


def step_seconds(log: SerialLog, name: str) -> float:
    """Host seconds from the line before NAME's command ran to its report."""
    t_prev = 0.0
    for t, line in log.lines:
        if line.startswith(("@@END ", "@@SCENARIO ", "@@HIB-A-BACK")):
            t_prev = t
        elif line.startswith(f"@@STEP {name} "):
            return t - t_prev
    raise AssertionError(f"no step {name} in {log.path}")


def counter(st: Step) -> tuple[int, float]:
    m = re.fullmatch(r"counter (\d+) ([\d.]+)", st.out.strip())
    assert m, st
    return int(m[1]), float(m[2])


def test_scenario3_vmcore_of_the_hibernating_kernel_holds_the_markers(
        hib: tuple[SerialLog, str, int]) -> None:
    log, _, smp = hib
    marks = dict(line.split(" ", 1) for line in ok(log, "a-markers").out_lines
                 if line.startswith(("in ", "out ", "zero ")))
    assert [len(marks[k].split(",")) for k in ("in", "out", "zero")] == [16, 16, 32], marks
    loaded = ok(log, "a-load").json()
    assert loaded["staged"] is True and loaded["calls"] >= 2, loaded
    assert loaded["flags"] & 0x2, loaded  # KEXEC_PRESERVE_CONTEXT
    bmap = loaded["backup_map"]
    assert bmap["encoding"] == "elfcorehdr" and bmap["window"] == [
        WINDOW_MIB[0] << 20, sum(WINDOW_MIB) << 20], bmap
    cmd = ok(log, "b-cmdline").out
    assert "memmap=exactmap" in cmd and "elfcorehdr=" in cmd, cmd
    assert re.search(r"kexec_jump_back_entry=0x[0-9a-f]{16}", cmd), cmd
    res = checks(log, "b-vmcore")
    require(res, "vmcore/elf64-core", "vmcore/notes", "vmcore/in/covered", "vmcore/in/markers",
            "vmcore/out/covered", "vmcore/out/markers", "vmcore/in/not-in-place")
    # the backup map's PT_NOTE ends as /proc/vmcore wants it
    assert "Exceeded p_memsz" not in log.text, log.path
    t_exec = all_at(log, "@@EXEC")[0]
    t_b = all_at(log, "@@INIT")[1]
    t_vmcore = log.at("@@END b-vmcore") or 0.0
    record("hibernate", f"HIBERNATE scenario 3 ({smp} CPU, {MEMORY_MIB} MiB, window "
           f"{WINDOW_MIB[1]} MiB): A's load in {loaded['calls']} calls "
           f"{step_seconds(log, 'a-load'):.1f}s, exec -> B's /init {t_b - t_exec:.1f}s, "
           f"vmcore check {step_seconds(log, 'b-vmcore'):.1f}s; QEMU start -> checked "
           f"{t_vmcore:.1f}s (TCG)", seconds=t_vmcore)


def test_scenario4_resume_carries_on(hib: tuple[SerialLog, str, int]) -> None:
    log, seed, smp = hib
    saved = ok(log, "b-save").json()
    assert saved["jump_back_entry"] and saved["zero_pages_left_out"] > 0, saved
    assert ok(log, "b-load").json()["loaded"] is True
    ok(log, "c-image")
    resumed = ok(log, "c-resume").json()
    assert resumed["entry"] == saved["jump_back_entry"] and resumed["staged"] is True, resumed
    # A's 'kexec-py exec' returned, after B and C ran
    assert ok(log, "a-exec").json() == {"executed": True, "returned": True}
    assert len(all_at(log, "@@INIT")) == 3, "A, B and C each ran /init once"
    before, after, later = (counter(ok(log, f"a-counter-{w}"))
                            for w in ("before", "after", "later"))
    assert before[0] <= after[0] < later[0] and before[1] < after[1] < later[1], \
        (before, after, later)
    ok(log, "a-counter-alive")
    assert ok(log, "a-marker-file").out.strip() == f"hibernation file of A, seed {seed}"
    res = checks(log, "a-verify")
    for g in ("in", "out", "zero"):
        require(res, *(f"resumed/{g}/{c}" for c in ("same-pfn", "mapping", "dev-mem")))
    cpus = "0" if smp == 1 else f"0-{smp - 1}"
    assert ok(log, "a-cpus-before").out.strip() == cpus
    assert ok(log, "a-cpus-after").out.strip() == cpus
    assert ok(log, "a-loaded-after").out.strip() == "1"
    ok(log, "a-unload")
    assert log.first(f"@@HIB-A-DONE seed={seed}") is not None, log.tail()
    t_exec_a, t_exec_b, t_exec_c = all_at(log, "@@EXEC")
    t_c = all_at(log, "@@INIT")[2]
    t_back = log.at("@@HIB-A-BACK") or 0.0
    record("hibernate", f"HIBERNATE scenario 4 ({smp} CPU): save-image "
           f"{step_seconds(log, 'b-save'):.1f}s ({saved['file_size'] >> 20} MiB, "
           f"{saved['loads']} PT_LOADs, {saved['zero_pages_left_out']} zero pages left out), "
           f"B loads C {step_seconds(log, 'b-load'):.1f}s, B exec -> C's /init "
           f"{t_c - t_exec_b:.1f}s, resume in {resumed['calls']} calls "
           f"{step_seconds(log, 'c-resume'):.1f}s, C exec -> A back {t_back - t_exec_c:.1f}s; "
           f"A's exec -> back {t_back - t_exec_a:.1f}s, whole run {log.duration:.1f}s (TCG)",
           seconds=t_back - t_exec_a)

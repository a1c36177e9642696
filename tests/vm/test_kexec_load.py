"""Issue 3 against real kernels: ``kexec-py load -c`` places the segments
itself and hands them to kexec_load(2); ``kexec-py exec`` boots them.

Three boots of guest/scenarios/kexec-load.sh, each ending in a second
kernel that prints the marker (kexec-tools is deleted from the guest
before the load that proves it):

* ``bzimage`` (512 MiB): Debian's bzImage + initrd, below 4 GiB; first,
  with kexec-tools still there, ``kexec -c -l`` and ``kexec-py load -c``
  (and ``kexec -i -c -l``, and both tools with -s) timed side by side.
* ``elf`` (768 MiB): the ELF vmlinux extracted from that bzImage
  (tools/extract_vmlinux.py, cached by the bzImage's hash), loaded once
  without -c (the default must pick kexec_load) and unloaded, then with -c.
* ``high`` (6 GiB): the bzImage again, everything placed above 4 GiB (the
  boot protocol's ext_* fields).

Each boot checks: the dry-run plan is the load that was made (the -vv
trace), the only kexec system call is kexec_load, and the second kernel
reports ``RAMDISK: [mem X-...]`` at the plan's initrd and ``Command line:``
equal to the --append text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import secrets
import statistics
import struct
from pathlib import Path
from typing import Any

import pytest

from vm import harness
from vm.harness import SerialLog, record

pytestmark = pytest.mark.vm

FLAGS_X86_64 = 0x3E0000  # KEXEC_ARCH_X86_64, as kexec-tools sends it
GIB4 = 1 << 32
PAGE = 4096
INITRD = "/boot/stage2.cpio.gz"


def _cmdline(marker: str) -> str:
    """What kexec-load.sh passes with --append."""
    return f"console=ttyS0 panic=-1 KEXEC_PY_MARKER={marker}"


def _boot_line(log: SerialLog) -> str:
    parts = [f"{k}={v:.1f}s" for k, v in log.milestones().items()]
    return f"BOOT {log.path.stem}: " + " ".join(parts) + f" (qemu status {log.status})"


def _boot(name: str, marker: str, **kw: Any) -> SerialLog:
    params = {"marker": marker, **kw.pop("params", {})}
    log = harness.run_scenario("kexec-load", params=params, log_name=f"kexec-load-{name}", **kw)
    record("kexec-load", _boot_line(log), duration=log.duration,
           milestones=log.milestones(), log=str(log.path))
    return log


# --- the ELF vmlinux -------------------------------------------------------------------


def _extractor() -> Any:
    path = harness.REPO / "tools" / "extract_vmlinux.py"
    spec = importlib.util.spec_from_file_location("extract_vmlinux", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cached_vmlinux(bzimage: Path) -> Path:
    """The ELF vmlinux inside ``bzimage``, extracted once and cached under
    the harness cache keyed by the bzImage's (and the extractor's) hash."""
    tool = harness.REPO / "tools" / "extract_vmlinux.py"
    h = hashlib.sha256(tool.read_bytes())
    with open(bzimage, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    key = h.hexdigest()[:16]
    out = harness.CACHE / f"vmlinux-{key}.elf"
    if not out.exists():
        vmlinux, _how = _extractor().extract(bzimage.read_bytes())
        harness._write_atomic(out, lambda f: f.write(vmlinux))
        for old in harness.CACHE.glob("vmlinux-*.elf"):
            if old != out:
                old.unlink(missing_ok=True)
    return out


def elf_loads(path: Path) -> list[tuple[int, int]]:
    """(p_paddr, p_memsz) of each PT_LOAD of an ELF64 little-endian file."""
    with open(path, "rb") as f:
        eh = f.read(64)
        assert eh[:4] == b"\x7fELF" and eh[4] == 2 and eh[5] == 1, "not ELF64 LSB"
        phoff, = struct.unpack_from("<Q", eh, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", eh, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    out = []
    for i in range(phnum):
        p_type, _flags, _off, _vaddr, paddr, _filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize)
        if p_type == 1:
            out.append((paddr, memsz))
    return out


# --- boots -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bzimage(vm_ready: None) -> tuple[SerialLog, str]:
    marker = f"kload-bz-{secrets.token_hex(4)}"
    return _boot("bzimage", marker, params={"reps": "3"}), marker


@pytest.fixture(scope="module")
def elf(vm_ready: None) -> tuple[SerialLog, str, Path]:
    vmlinux = cached_vmlinux(harness.default_kernel())
    marker = f"kload-elf-{secrets.token_hex(4)}"
    log = _boot("elf", marker, memory=768, extra_files={"boot/vmlinux": vmlinux},
                params={"kernel": "/boot/vmlinux", "auto": "1"})
    return log, marker, vmlinux


@pytest.fixture(scope="module")
def high(vm_ready: None) -> tuple[SerialLog, str]:
    marker = f"kload-high-{secrets.token_hex(4)}"
    return _boot("high", marker, memory=6144), marker


# --- what a boot shows ------------------------------------------------------------------


def _ok(log: SerialLog, name: str) -> harness.Step:
    st = log.step(name)
    assert st.rc == 0, f"{st}\nlog: {log.path}"
    return st


_CALL = re.compile(r"kexec_load\(entry=(0x[0-9a-f]+), nr_segments=(\d+), flags=(0x[0-9a-f]+)\)")
_SEG = re.compile(r"\s+segment\[(\d+)\]: mem=(0x[0-9a-f]+) memsz=(0x[0-9a-f]+) "
                  r"bufsz=(0x[0-9a-f]+)(?: \((.*)\))?$")


def traced_loads(st: harness.Step) -> list[dict[str, Any]]:
    """The kexec_load calls of a ``-vv`` step's trace: entry, flags,
    segments as (mem, memsz, bufsz, name), result line."""
    calls: list[dict[str, Any]] = []
    for line in st.err_lines:
        if m := _CALL.match(line):
            calls.append({"entry": int(m[1], 16), "flags": int(m[3], 16), "nr": int(m[2]),
                          "segments": [], "result": None})
        elif calls and (m := _SEG.match(line)):
            calls[-1]["segments"].append((int(m[2], 16), int(m[3], 16), int(m[4], 16), m[5]))
        elif calls and line.startswith("  = "):
            calls[-1]["result"] = line.strip()
    return calls


def second_kernel(log: SerialLog) -> list[str]:
    """The serial lines from the second "Linux version" banner on."""
    banners = [i for i, (_, line) in enumerate(log.lines) if "] Linux version " in line]
    assert len(banners) >= 2, f"the second kernel never started:\n{log.tail()}"
    return [line for _, line in log.lines[banners[1]:]]


def _kernel_line(lines: list[str], what: str) -> str:
    for line in lines:
        m = re.search(r"\] " + re.escape(what) + r" ?(.*)$", line)
        if m:
            return m[1]
    raise AssertionError(f"the second kernel printed no {what!r} line")


def check_proof(log: SerialLog, marker: str, kernel: str) -> tuple[dict[str, Any], int]:
    """The kexec_load proof of one boot; returns the dry-run plan and the
    initrd's guest address."""
    # the proof ran without kexec-tools, and nothing was loaded before it
    _ok(log, "no-kexec-tools")
    assert _ok(log, "loaded-initial").out.strip() == "0"
    sizes = dict(line.split() for line in _ok(log, "sizes").out_lines)
    initrd_size = int(sizes[INITRD])

    # the plan: one KS_full kexec_load for x86_64; --dry-run loads nothing
    plan = _ok(log, "dry-run-json").json()
    assert plan["syscall"] == "kexec_load", plan
    assert len(plan["calls"]) == 1 and plan["calls"][0]["stage"] == "full", plan
    assert plan["calls"][0]["flags"] == FLAGS_X86_64, plan
    segs = plan["calls"][0]["segments"]
    assert _ok(log, "loaded-after-dry-run").out.strip() == "0"
    text = _ok(log, "dry-run").out
    assert text.startswith("plan: kexec_load") and "initrd" in text, text

    # the load: exactly the plan, through kexec_load only, and it succeeded
    st = _ok(log, "load")
    assert "kexec_file_load(" not in st.err, st
    assert "Traceback" not in st.err, st
    calls = traced_loads(st)
    assert len(calls) == 1, st
    call = calls[0]
    assert call["result"] == "= 0", st
    assert call["entry"] == plan["entry"] and call["flags"] == FLAGS_X86_64, (call, plan)
    assert [s[:3] for s in call["segments"]] == [
        (s["mem"], s["memsz"], s["bufsz"]) for s in segs], (call, plan)
    assert f"loaded kernel {kernel} with kexec_load" in st.err, st
    assert _ok(log, "loaded").out.strip() == "1"
    assert _ok(log, "status-json-loaded").json()["loaded"] is True

    initrds = [s for s in call["segments"] if s[3] == "initrd"]
    assert len(initrds) == 1 and initrds[0][2] == initrd_size, call
    initrd_mem = initrds[0][0]

    # exec did not return; the second kernel booted with our command line and initrd
    assert "exec" not in log.steps, f"exec returned: {log.steps.get('exec')}"
    assert log.stage2.get("marker") == marker, f"no marker from the second kernel:\n{log.tail()}"
    assert log.stage2.get("cmdline") == _cmdline(marker), log.stage2
    assert log.first("@@STAGE2 done") is not None
    lines = second_kernel(log)
    assert _kernel_line(lines, "Command line:") == _cmdline(marker)
    ramdisk = _kernel_line(lines, "RAMDISK:")
    m = re.fullmatch(r"\[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]", ramdisk)
    assert m, ramdisk
    start, last = int(m[1], 16), int(m[2], 16)
    assert start == initrd_mem, f"RAMDISK {ramdisk}, plan initrd at {initrd_mem:#x}"
    # the kernel prints PAGE_ALIGN(image + size) - 1: the size reached it too
    assert last + 1 == -(-(initrd_mem + initrd_size) // PAGE) * PAGE, (ramdisk, initrd_size)
    assert not any("Initramfs unpacking failed" in line for line in lines)
    return plan, initrd_mem


# --- bzImage, below 4 GiB -----------------------------------------------------------


def test_bzimage_through_kexec_load_boots(bzimage: tuple[SerialLog, str]) -> None:
    log, marker = bzimage
    plan, _ = check_proof(log, marker, "/boot/vmlinuz")
    ends = [s["mem"] + s["memsz"] for s in plan["calls"][0]["segments"]]
    assert max(ends) <= GIB4, plan  # 512 MiB: the classic boot protocol fields
    info = _ok(log, "inspect").json()
    assert info["format"] == "bzImage" and info["loadable"] is True, info


def test_timing_kexec_tools_against_kexec_py(bzimage: tuple[SerialLog, str]) -> None:
    """``kexec -c -l`` and ``kexec-py load -c`` (and ``kexec -i -c -l``,
    which skips the segment digest as kexec-py's entry stub does, and both
    with -s) of the same kernel, initrd and command line, alternately in one
    guest (recorded, not asserted)."""
    log, _ = bzimage
    failed = [t for t in log.timings if t.rc != 0]
    assert not failed, f"timed commands failed: {failed}\nlog: {log.path}"
    med: dict[str, float] = {}
    for label in ("kexec-tools-load-c", "kexec-tools-load-ci", "kexec-py-load-c",
                  "kexec-py-plan-c", "kexec-tools-load-s", "kexec-py-load-s",
                  "kexec-tools-unload", "kexec-py-unload"):
        times = log.times(label)
        assert len(times) == (9 if label == "kexec-tools-unload" else
                              6 if label == "kexec-py-unload" else 3), f"{label}: {times}"
        med[label] = statistics.median(times)
    record("timing", f"TIMING load -c: kexec-tools={med['kexec-tools-load-c']:.2f}s "
           f"(-i: {med['kexec-tools-load-ci']:.2f}s) "
           f"kexec-py={med['kexec-py-load-c']:.2f}s; load -s: "
           f"kexec-tools={med['kexec-tools-load-s']:.2f}s kexec-py={med['kexec-py-load-s']:.2f}s "
           f"(median of 3, TCG guest, 512 MiB)",
           **{k: log.times(k) for k in med})
    record("timing", f"TIMING kexec-py load -c split: start-up+unload="
           f"{med['kexec-py-unload']:.2f}s, --dry-run --json={med['kexec-py-plan-c']:.2f}s, "
           f"load={med['kexec-py-load-c']:.2f}s; kexec -u={med['kexec-tools-unload']:.2f}s")


# --- ELF vmlinux ---------------------------------------------------------------------


def test_elf_vmlinux_through_kexec_load_boots(elf: tuple[SerialLog, str, Path]) -> None:
    log, marker, vmlinux = elf
    plan, _ = check_proof(log, marker, "/boot/vmlinux")
    sizes = dict(line.split() for line in _ok(log, "sizes").out_lines)
    assert int(sizes["/boot/vmlinux"]) == vmlinux.stat().st_size
    # every PT_LOAD went to its physical address
    segs = [(s[0], s[1], s[3]) for s in traced_loads(log.step("load"))[0]["segments"]]
    for paddr, memsz in elf_loads(vmlinux):
        assert any(mem <= paddr and paddr + memsz <= mem + size and "PT_LOAD" in (name or "")
                   for mem, size, name in segs), (hex(paddr), hex(memsz), segs)
    info = _ok(log, "inspect").json()
    assert info["format"] == "elf-kernel" and info["loadable"] is True, info


def test_elf_vmlinux_without_c_goes_to_kexec_load(elf: tuple[SerialLog, str, Path]) -> None:
    log, _, _ = elf
    st = _ok(log, "load-auto")
    assert "kexec_file_load(" not in st.err, st
    calls = traced_loads(st)
    assert len(calls) == 1 and calls[0]["result"] == "= 0", st
    assert _ok(log, "loaded-auto").out.strip() == "1"
    _ok(log, "unload-auto")
    assert _ok(log, "loaded-auto-unloaded").out.strip() == "0"


# --- bzImage, above 4 GiB ---------------------------------------------------------------


def test_bzimage_above_4gib_boots(high: tuple[SerialLog, str]) -> None:
    log, marker = high
    plan, initrd_mem = check_proof(log, marker, "/boot/vmlinuz")
    segs = plan["calls"][0]["segments"]
    assert all(s["mem"] >= GIB4 for s in segs), plan
    assert plan["entry"] >= GIB4 and initrd_mem >= GIB4, plan
    assert int(log.stage2["memtotal"].removesuffix("kB")) > 5 << 20, log.stage2

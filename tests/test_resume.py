"""Resume, the hibernation load and save-image on the model backend, through
the CLI and the library: the image lands where it says, the backup map lets
the hibernating kernel read the original memory exactly, failures unload,
and the three kernel flavours behave as they must."""

from __future__ import annotations

import errno
import json
import random
import struct
import sys
from pathlib import Path

import pytest
from coregen import pattern, simple_core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.boundary.backends.model import ModelBackend
from kexec_py.errors import SyscallError, UnsupportedError
from kexec_py.formats.vmcore import jump_back_note, open_core, parse_core
from kexec_py.frontend.cli import run
from kexec_py.frontend.demo import demo_kernel
from kexec_py.hibernate import hibernating, vmcore
from kexec_py.load import request, staging
from kexec_py.model.config import ModelConfig, pc_layout

P = PAGE_SIZE
MIB = 1 << 20
ENTRY = 0x7654000


class CLI:
    """``kexec-py --backend model --model-state S --root R ...`` in-process,
    through run() (exit codes and error lines as a shell sees them)."""

    def __init__(self, tmp: Path, kernel: str = "patched") -> None:
        self.state = tmp / "state"
        self.root = tmp / "root"
        self.root.mkdir(exist_ok=True)
        self.kernel = kernel

    def __call__(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as ei:
            run(["--backend", "model", "--model-state", str(self.state), "--root",
                 str(self.root), "--model-kernel", self.kernel, *args])
        out = capsys.readouterr()
        return int(ei.value.code or 0), out.out, out.err

    def backend(self) -> ModelBackend:
        return ModelBackend(self.root, self.kernel, self.state)


def image(tmp: Path, n: int, *, entry: int | None = ENTRY, base: int = 0x2000000,
          name: str = "img") -> tuple[Path, list[tuple[int, bytes, int]]]:
    """A core with ``n`` PT_LOADs of recognisable data (some with a zero
    tail), none coalescing, inside a 128 MiB model's RAM."""
    loads = []
    for i in range(n):
        paddr = base + i * 3 * P
        size = (i * 1237) % (2 * P) + 1
        loads.append((paddr, pattern(paddr ^ 0xA5A5, size), 2 * P))
    notes = jump_back_note(entry) if entry is not None else b""
    return simple_core(loads, notes=notes).write(tmp / name), loads


def reset(cli: CLI, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(capsys, "model-reset", "--memory", "128M", "--seed", "3")
    assert rc == 0, err


# --- resume + exec + dump-memory ------------------------------------------------------


@pytest.mark.parametrize("n", [5, 40])
def test_resume_exec_dump_equals_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           n: int) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, loads = image(tmp_path, n)
    rc, out, err = cli(capsys, "--json", "resume", str(path), "--dry-run")
    plan = json.loads(out)
    assert rc == 0 and plan["entry"] == ENTRY
    assert [c["stage"] for c in plan["calls"]][0] == ("full" if n <= 16 else "start")
    rc, out, err = cli(capsys, "--json", "resume", str(path))
    assert rc == 0, err
    res = json.loads(out)
    assert res["entry"] == ENTRY and res["staged"] == (n > 16)
    if n > 16:  # JSON events on stderr, one per call
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert [e["index"] for e in events if e["event"] == "call"] == \
            list(range(1, len(plan["calls"]) + 1))
    rc, out, err = cli(capsys, "exec")
    assert rc == 0, err
    rc, out, err = cli(capsys, "dump-memory", str(tmp_path / "mem.core"))
    assert rc == 0, err
    with open_core(tmp_path / "mem.core") as mem:
        runs = mem.runs()
        for paddr, data, memsz in loads:
            k = next(i for i in range(len(runs)) if runs.paddr[i] <= paddr < runs.paddr[i]
                     + runs.memsz[i])
            off = paddr - runs.paddr[k]
            filed = bytes(mem.data(runs.offset[k] + off, min(memsz, max(0, runs.filesz[k] - off))))
            got = filed.ljust(memsz, b"\0")
            assert got == data.ljust(memsz, b"\0"), f"PT_LOAD at {paddr:#x}"


def test_resume_needs_an_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, _ = image(tmp_path, 3, entry=None)
    rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1 and "no kexec-py note with the jump-back entry" in err and "--entry" in err
    rc, out, err = cli(capsys, "--json", "resume", str(path), "--entry", "0x1234000",
                       "--dry-run")
    assert rc == 0 and json.loads(out)["entry"] == 0x1234000


def test_resume_refuses_an_image_outside_ram(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, _ = image(tmp_path, 3, base=0x40000000)  # 1 GiB: above the model's 128 MiB
    rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1 and "not inside this machine's RAM" in err


def test_resume_refuses_a_kernel_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    (tmp_path / "k").write_bytes(demo_kernel())
    rc, out, err = cli(capsys, "resume", str(tmp_path / "k"))
    assert rc == 1 and "not an ELF file" in err


# --- the three kernel flavours ----------------------------------------------------------


@pytest.mark.parametrize("kernel", ["stock-6.1", "stock-6.6"])
def test_stock_kernels_refuse_before_any_call(tmp_path: Path, kernel: str,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CLI(tmp_path, kernel)
    reset(cli, capsys)
    calls: list[int] = []
    real = ModelBackend.kexec_load

    def spy(self: ModelBackend, entry: int, segments: object, flags: int) -> None:
        calls.append(flags)
        real(self, entry, segments, flags)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelBackend, "kexec_load", spy)
    path, _ = image(tmp_path, 40)
    rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1 and calls == []
    assert "no /proc/kexec_pgmap" in err and "6.6" in err and "misread" in err
    (tmp_path / "k").write_bytes(demo_kernel())
    rc, out, err = cli(capsys, "load", "--staged", "--load-preserve-context", "--mem-min",
                       "0x1000000", "--mem-max", "0x2ffffff", str(tmp_path / "k"))
    assert rc == 1 and calls == [] and "page map" in err
    rc, out, err = cli(capsys, "resume", "--staged", "always", str(image(tmp_path, 3)[0]))
    assert rc == 1 and calls == [] and "--staged always" in err
    # a small image fits one KS_full call: stock kernels load it, without stage bits
    small, _ = image(tmp_path, 5, name="small")
    rc, out, err = cli(capsys, "resume", str(small))
    assert rc == 0, err
    assert len(calls) == 1 and calls[0] & 0xC == 0
    assert cli.backend().status().loaded


def test_patched_kernel_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, _ = image(tmp_path, 40)
    rc, out, err = cli(capsys, "-vv", "resume", str(path))
    assert rc == 0, err
    assert "KS_start" in err and "KS_final" in err
    be = cli.backend()
    try:
        img = be.image("kexec")
        assert img is not None and img.calls == 3 and img.entry == ENTRY
    finally:
        be.close()


# --- fault injection -------------------------------------------------------------------


def _failing(monkeypatch: pytest.MonkeyPatch, at: int, err: int) -> list[int]:
    seen: list[int] = []
    real = ModelBackend.kexec_load

    def inject(self: ModelBackend, entry: int, segments: list, flags: int) -> None:
        if segments:
            seen.append(flags)
            if len(seen) - 1 == at:
                raise SyscallError(f"kexec_load(entry={entry:#x}, flags={flags:#x})", err,
                                   "injected")
        real(self, entry, segments, flags)

    monkeypatch.setattr(ModelBackend, "kexec_load", inject)
    return seen


@pytest.mark.parametrize("at", range(4))
def test_fault_at_every_call_of_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, _ = image(tmp_path, 50)  # 4 calls: start, mid, mid, final
    stages = ["KS_start", "KS_mid", "KS_mid", "KS_final"]
    _failing(monkeypatch, at, errno.ENOMEM)
    rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1
    assert f"error: call {at + 1} of 4 ({stages[at]})" in err and "ENOMEM" in err
    assert "the staged load was abandoned; nothing is loaded" in err
    be = cli.backend()
    try:
        assert be.status().loaded is False
        assert be.image("staging") is None and be.image("kexec") is None
    finally:
        be.close()


@pytest.mark.parametrize("at", range(4))
def test_fault_in_a_resume_keeps_the_kernel_loaded_before(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        at: int) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    (tmp_path / "k").write_bytes(demo_kernel())
    rc, out, err = cli(capsys, "load", "-c", str(tmp_path / "k"))
    assert rc == 0, err
    be = cli.backend()
    try:
        img = be.image("kexec")
        assert img is not None
        before = (img.id, img.entry, list(img.seg_mem))
    finally:
        be.close()
    path, _ = image(tmp_path, 50)
    _failing(monkeypatch, at, errno.ENOMEM)
    rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1 and "ENOMEM" in err
    assert "the staged load was abandoned; the kernel loaded before it is still loaded" in err
    monkeypatch.undo()
    be = cli.backend()
    try:
        assert be.status().loaded is True and be.image("staging") is None
        img = be.image("kexec")
        assert img is not None and (img.id, img.entry, list(img.seg_mem)) == before
    finally:
        be.close()
    rc, out, err = cli(capsys, "exec")
    assert rc == 0 and "executed the image" in err, err


@pytest.mark.parametrize("at", range(2))
def test_fault_at_every_call_of_a_hibernation_load(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   at: int) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    (tmp_path / "k").write_bytes(demo_kernel())
    seen = _failing(monkeypatch, at, errno.EBUSY)
    rc, out, err = cli(capsys, "load", "--staged=always", "--load-preserve-context",
                       "--mem-min", "0x1000000", "--mem-max", "0x2ffffff", str(tmp_path / "k"))
    assert rc == 1 and len(seen) == at + 1
    assert f"call {at + 1} of 2 ({['KS_start', 'KS_final'][at]})" in err and "EBUSY" in err
    be = cli.backend()
    try:
        assert be.status().loaded is False and be.image("staging") is None
    finally:
        be.close()


def test_lock_held_by_another_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kexec_py.boundary.lock import LoadLock

    cli = CLI(tmp_path)
    reset(cli, capsys)
    path, _ = image(tmp_path, 20)
    with LoadLock(cli.root):
        rc, out, err = cli(capsys, "resume", str(path))
    assert rc == 1 and "is locked" in err
    assert cli.backend().status().loaded is False


# --- the hibernation load through the CLI, and save-image ---------------------------------


def test_hibernation_cycle_through_the_cli(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    (tmp_path / "k").write_bytes(demo_kernel())
    be = cli.backend()
    marks = {0x1200000: b"in the window", 0x5000000: b"outside the window"}
    for a, text in marks.items():
        be.write_phys(a, text)
    be.close()
    args = ["load", "--staged", "--load-preserve-context", "--mem-min", "0x1000000",
            "--mem-max", "0x2ffffff", "--append", "console=ttyS0", str(tmp_path / "k")]
    rc, out, err = cli(capsys, "--json", *args, "--dry-run")
    plan = json.loads(out)
    assert rc == 0 and plan["calls"][0]["stage"] == "start"
    ph, fin = plan["calls"][0]["segments"][0], plan["calls"][-1]["segments"]
    assert len(fin) == 1 and (fin[0]["mem"], fin[0]["memsz"]) == (ph["mem"], ph["memsz"])
    rc, out, err = cli(capsys, "--json", *args)
    assert rc == 0, err
    res = json.loads(out)
    bm = res["backup_map"]
    assert bm["encoding"] == "elfcorehdr" and bm["size"] <= bm["placeholder"]
    assert f"elfcorehdr={bm['placeholder']:#x}@{bm['addr']:#x}" in res["cmdline"]
    assert "memmap=exactmap" in res["cmdline"]
    rc, out, err = cli(capsys, "exec")
    assert rc == 0, err
    rc, out, err = cli(capsys, "--json", "save-image", str(tmp_path / "hib.img"))
    assert rc == 0, err
    saved = json.loads(out)
    assert saved["from"] == "model:" and saved["jump_back_entry"]
    with open_core(tmp_path / "hib.img") as img:
        assert img.jump_back_entry == saved["jump_back_entry"]
        found = {a: bytes(s.buf[a - s.mem:a - s.mem + len(t)]) for s in img.segments()
                 for a, t in marks.items() if s.mem <= a < s.end and s.buf is not None}
        assert found == marks
    assert not (tmp_path / "hib.img.part").exists()


def test_save_image_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--from PATH reads any core (the real /proc/vmcore is one); --entry
    records the jump-back entry, zero pages are left out (or kept)."""
    cli = CLI(tmp_path)
    loads = [(0x100000, pattern(0x100000, 3 * P) + bytes(2 * P) + b"tail", 6 * P),
             (0x400000, bytes(4 * P), 4 * P)]
    src = simple_core(loads).write(tmp_path / "vmcore")
    rc, out, err = cli(capsys, "--json", "save-image", "--from", str(src), "--entry",
                       "0x2000000", str(tmp_path / "a.img"))
    assert rc == 0, err
    r = json.loads(out)
    assert r["loads"] == 2 and r["zero_pages_left_out"] == 2 + 4
    with open_core(tmp_path / "a.img") as img:
        assert img.jump_back_entry == 0x2000000
        assert [(s.mem, s.bufsz) for s in img.segments()] == [(0x100000, 3 * P),
                                                              (0x105000, 4)]
    rc, out, err = cli(capsys, "--json", "save-image", "--from", str(src), "--keep-zero-pages",
                       str(tmp_path / "b.img"))
    assert rc == 0, err
    assert "no kexec_jump_back_entry=" in err
    with open_core(tmp_path / "b.img") as img:
        assert img.jump_back_entry is None
        assert [(s.mem, s.memsz) for s in img.segments()] == [(0x100000, 6 * P),
                                                              (0x400000, 4 * P)]
        seg = img.segments()[0]
        assert bytes(seg.buf) == loads[0][1]
    rc, out, err = cli(capsys, "save-image", "--from", str(tmp_path / "nope"), "x.img")
    assert rc == 1 and "does not exist" in err


def test_save_image_outside_a_hibernating_kernel(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path)
    reset(cli, capsys)
    rc, out, err = cli(capsys, "save-image", str(tmp_path / "x.img"))
    assert rc == 1 and "no elfcorehdr=" in err


# --- the property: the backup map shows the original memory -------------------------------


def _hibernate(seed: int, collide: float, window: tuple[int, int], marks: list[int],
               tmp: Path, encoding: str = "elfcorehdr"
               ) -> tuple[ModelBackend, bytes, staging.ExecResult, hibernating.HibernateLoad]:
    cfg = ModelConfig(regions=pc_layout(64 * MIB), seed=seed, collide=collide)
    be = ModelBackend(tmp, persist=False, config=cfg)
    rnd = random.Random(seed)
    for a in marks:
        be.write_phys(a, f"marker {a:#x} ".encode() + rnd.randbytes(64))
    k = tmp / "k"
    k.write_bytes(demo_kernel())
    req = request.LoadRequest(kernel=k, cmdline="console=ttyS0", mem_min=window[0],
                             mem_max=window[1] - 1, preserve_context=True)
    hl = hibernating.plan_hibernate_load(be, req, staged="auto", encoding=encoding,
                                       rng_seed=bytes(32))
    ex = staging.execute(be, hl.staged)
    snap = be.read_phys(0, 64 * MIB)
    be.reboot_kexec()
    return be, snap, ex, hl


windows = st.tuples(st.integers(4, 40), st.integers(8, 20)).map(
    lambda t: (t[0] * MIB, (t[0] + t[1]) * MIB))


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 1 << 16), st.sampled_from([0.0, 0.25, 0.9]), windows,
       st.lists(st.integers(0x100, (64 * MIB >> PAGE_SHIFT) - 1), min_size=1, max_size=40))
def test_backup_map_shows_the_original_memory(tmp_path: Path, seed: int, collide: float,
                                              window: tuple[int, int], pages: list[int]) -> None:
    marks = sorted({p << PAGE_SHIFT for p in pages})
    be, snap, ex, hl = _hibernate(seed, collide, window, marks, tmp_path)
    try:
        assert ex.pagemap is not None
        back = dict(zip(ex.pagemap.src, ex.pagemap.dst, strict=True))
        moved = set(ex.pagemap.dst)
        view = vmcore.backend_vmcore(be)
        data = view.read(0, view.size)
        img = parse_core(data, "vmcore")
        # destination pages the kernel loaded in place were free before the
        # load and are the loaded kernel's now: in no PT_LOAD
        in_place = {pfn for r in hl.layout.ram for pfn in range(r.start >> PAGE_SHIFT,
                                                                r.end >> PAGE_SHIFT)
                    if pfn not in moved}
        seen = 0
        for seg in img.segments():
            buf = bytes(seg.buf) if seg.buf is not None else b""
            for off in range(0, seg.memsz, P):
                pfn = (seg.mem + off) >> PAGE_SHIFT
                assert pfn not in in_place, f"page {pfn << PAGE_SHIFT:#x} was loaded in place"
                want = back.get(pfn, pfn) << PAGE_SHIFT
                assert buf[off:off + P].ljust(P, b"\0") == snap[want:want + P], \
                    f"page {pfn << PAGE_SHIFT:#x}"
                seen += 1
        ram_pages = sum(r.size for r in be.ram()) >> PAGE_SHIFT
        assert seen == ram_pages - len(in_place)
        # and the hibernating kernel is confined to the window, map excluded
        cmd = be.cmdline()
        assert "memmap=exactmap" in cmd and f"@{hl.layout.region.start:#x}" in cmd
        assert vmcore.jump_back_entry(cmd) == be.last_jump.jump_back_entry  # type: ignore[union-attr]
    finally:
        be.close()


def test_hibernation_load_backs_up_low_memory(tmp_path: Path) -> None:
    """A window above 1 MiB: the low RAM is swapped out too (zero-filled
    segments), the hibernating kernel gets it, and its /proc/vmcore shows
    the original low memory."""
    be, snap, ex, hl = _hibernate(3, 0.25, (8 * MIB, 24 * MIB), [0x2000, 0x9E000, 0x900000],
                                  tmp_path)
    try:
        low = [s for c in hl.staged.plan.calls for s in c.segments if s.name == "low memory"]
        assert [(s.mem, s.end, s.bufsz) for s in low] == [(0x1000, 0x9F000, 0)]
        assert any("low memory" in n for n in hl.notes)
        cmd = be.cmdline()
        assert "memmap=632K@4K" in cmd
        assert ex.pagemap is not None and 0x2 in set(ex.pagemap.dst)
        view = vmcore.backend_vmcore(be)
        img = parse_core(view.read(0, view.size), "vmcore")
        for a in (0x2000, 0x9E000):
            seg = next(s for s in img.segments() if s.mem <= a < s.end)
            assert seg.buf is not None
            assert bytes(seg.buf[a - seg.mem:a - seg.mem + P]) == snap[a:a + P]
    finally:
        be.close()


def test_raw_backup_map_in_the_hibernating_kernel(tmp_path: Path) -> None:
    from kexec_py.hibernate import window as backupmap

    be, snap, ex, hl = _hibernate(5, 0.25, (8 * MIB, 24 * MIB), [0x900000, 0x2000000],
                                  tmp_path, encoding="raw")
    try:
        cmd = be.cmdline()
        size, addr = backupmap.parse_size_at(backupmap.find_param(cmd, "kexec_backup_map") or "")
        pm = backupmap.parse_raw(be.read_phys(addr, size))
        assert ex.pagemap is not None
        assert sorted(pm.pairs()) == sorted(ex.pagemap.pairs())
        for d, s in pm.pairs():  # after the swap: the original of d is at s
            assert be.read_phys(s << PAGE_SHIFT, P) == snap[d << PAGE_SHIFT:(d + 1) << PAGE_SHIFT]
        assert "elfcorehdr=" not in cmd
    finally:
        be.close()


def test_note_areas_from_sysfs(tmp_path: Path) -> None:
    for cpu, addr in ((0, 0x3F00000), (1, 0x3F10000)):
        d = tmp_path / f"sys/devices/system/cpu/cpu{cpu}"
        d.mkdir(parents=True)
        (d / "crash_notes").write_text(f"{addr:x}\n")
        (d / "crash_notes_size").write_text("436\n")
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/vmcoreinfo").write_text("2b1c000 1024\n")
    areas = hibernating.note_areas(tmp_path)
    assert [(a.addr, a.size, a.name) for a in areas] == [
        (0x3F00000, 436, "cpu0"), (0x3F10000, 436, "cpu1"), (0x2B1C000, 0x1024, "vmcoreinfo")]
    assert hibernating.note_areas(tmp_path / "none") == []


def test_unsupported_backend_for_model_vmcore(tmp_path: Path) -> None:
    from kexec_py.boundary.backends.linux import LinuxBackend

    with pytest.raises(UnsupportedError):
        vmcore.backend_vmcore(LinuxBackend(tmp_path))


def test_jump_back_entry_parsing() -> None:
    assert vmcore.jump_back_entry("a=1 kexec_jump_back_entry=0x1000 b") == 0x1000
    assert vmcore.jump_back_entry("kexec_jump_back_entry=0x0000000000000000") is None
    assert vmcore.jump_back_entry("quiet") is None
    assert struct.calcsize("<Q") == 8 and sys.byteorder in ("little", "big")

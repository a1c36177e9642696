"""``kexec-py demo``: the whole kexec-based hibernation cycle on the model.

1. kernel A runs, with markers written all over its memory;
2. A loads the hibernating kernel B with ``--load-preserve-context``,
   confined to a window, in stages, with the backup map injected in
   KS_final;
3. A jumps to B: every page of the window is swapped with its backup copy;
4. B reads A's memory through its /proc/vmcore (built from the backup
   map, as a stock kernel builds it) and it must equal A's, byte for byte;
5. B saves it as an image (``save-image``);
6. a fresh kernel C boots, with its own data in memory;
7. C resumes the image in stages and executes it;
8. memory must equal A's again.

Everything runs in this process on a private model (no state files); the
work directory holds the demo kernel and the image.  Rendering goes to a
rich ``Console`` passed in (``cli.py`` owns the terminal); :func:`run`
returns the checks, and the command exits 0 only when every one holds.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.formats import bzimage
from kexec_py.formats.vmcore import open_core
from kexec_py.hibernate.hibernating import plan_hibernate_load
from kexec_py.hibernate.resume import plan_resume
from kexec_py.hibernate.save import save_image
from kexec_py.hibernate.vmcore import backend_vmcore, jump_back_entry
from kexec_py.hibernate.window import moved_runs, parse_elfcorehdr
from kexec_py.load import staging
from kexec_py.load.request import LoadRequest
from kexec_py.ranges import Range

if TYPE_CHECKING:
    from rich.console import Console

    from kexec_py.boundary.backends.model import ModelBackend

MIB = 1 << 20
#: the window B runs in, and the machine
WINDOW = Range(16 * MIB, 48 * MIB)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    image: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def demo_kernel(payload_size: int = 0x10000) -> bytes:
    """A bzImage header (boot protocol 2.15, 64-bit, relocatable) around a
    recognisable payload.  The model executes no code, so this stands in
    for the hibernating kernel; a real run uses /boot/vmlinuz-*."""
    sects = 4
    data = bytearray((sects + 1) * bzimage.SECTOR + payload_size)

    def put(name: str, value: int) -> None:
        bzimage.write_field(data, bzimage.FIELDS[name], value)

    data[0x200] = 0xEB  # jmp over the header, whose end the jump's offset gives
    data[0x201] = 0x26C - 0x202
    data[0x202:0x206] = bzimage.HDRS_MAGIC
    for name, value in (("setup_sects", sects), ("syssize", payload_size // 16),
                        ("boot_flag", bzimage.BOOT_FLAG), ("version", 0x020F),
                        ("loadflags", bzimage.LOADED_HIGH), ("initrd_addr_max", 0x7FFFFFFF),
                        ("kernel_alignment", 0x200000), ("relocatable_kernel", 1),
                        ("xloadflags", bzimage.XLF_KERNEL_64 | bzimage.XLF_CAN_BE_LOADED_ABOVE_4G),
                        ("cmdline_size", 2047), ("pref_address", 0x1000000),
                        ("init_size", 0x400000)):
        put(name, value)
    text = b"kexec-py demo: the hibernating kernel B\n"
    base = (sects + 1) * bzimage.SECTOR
    data[base:] = (text * (payload_size // len(text) + 1))[:payload_size]
    return bytes(data)


def _model(seed: int, ram: int, root: Path) -> ModelBackend:
    from kexec_py.boundary.backends.model import ModelBackend
    from kexec_py.model.config import ModelConfig, pc_layout

    return ModelBackend(root, persist=False, config=ModelConfig(regions=pc_layout(ram), seed=seed))


def _pages(data: bytes) -> int:
    return len(data) >> PAGE_SHIFT


class _Progress:
    """A rich progress bar in the demo's console (shown on a terminal)."""

    def __init__(self, con: Console, what: str, total: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), DownloadColumn(),
                            TextColumn("{task.fields[stage]}"), console=con, transient=False)
        self.task = self.bar.add_task(what, total=total, stage="")

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def event(self, e: staging.Event) -> None:
        if e.kind == "call":
            self.bar.update(self.task, completed=e.bytes_done,
                            stage=f"call {e.index}/{e.total} KS_{e.stage}")

    def bytes(self, phase: str, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=max(total, 1), stage=phase)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _stage_table(con: Console, title: str, sp: staging.StagedPlan) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_lines=False)
    for col in ("call", "stage", "flags", "segments", "bytes", "what"):
        t.add_column(col, justify="right" if col in ("call", "segments", "bytes") else "left")
    calls = sp.plan.calls
    shown = list(range(len(calls))) if len(calls) <= 8 else [0, 1, 2, len(calls) - 2,
                                                              len(calls) - 1]
    prev = -1
    for i in shown:
        if i != prev + 1:
            t.add_row("...", f"{i - prev - 1} more KS_mid", "", "", "", "")
        c = calls[i]
        names = sorted({s.name for s in c.segments if s.name})
        t.add_row(str(i + 1), f"KS_{c.stage.label}", f"{c.flags:#x}", str(len(c.segments)),
                  f"{sum(s.memsz for s in c.segments):#x}", ", ".join(names)[:48])
        prev = i
    con.print(t)


def _pairs(con: Console, title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)


def run(con: Console, workdir: Path, *, seed: int = 1, ram: int = 128 * MIB) -> DemoResult:
    """Run the demo, rendering into ``con``; files go to ``workdir``."""
    from rich.rule import Rule

    t0 = time.monotonic()
    res = DemoResult()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "root"
    root.mkdir(exist_ok=True)
    rnd = random.Random(seed)

    def check(name: str, ok: bool, detail: str) -> bool:
        res.checks.append(Check(name, ok, detail))
        mark = "[green]ok[/green]" if ok else "[bold red]FAILED[/bold red]"
        con.print(f"  {mark}  {name}: {detail}")
        return ok

    # --- 1. kernel A ------------------------------------------------------------------
    con.print(Rule("1. kernel A runs, with markers in its memory"))
    be = _model(seed, ram, root)
    ram_runs = be.ram()
    markers = _write_markers(be, rnd, "A", 96)
    inside = sum(1 for a in markers if a in WINDOW)
    _pairs(con, "the model machine (kernel A)", [
        ("RAM", ", ".join(str(r) for r in ram_runs)),
        ("marker pages", f"{len(markers)} ({inside} inside the window {WINDOW}, "
                         f"{len(markers) - inside} outside)"),
        ("window for B", f"{WINDOW}: --mem-min {WINDOW.start:#x} --mem-max {WINDOW.end - 1:#x}"),
    ])

    # --- 2. the staged preserve-context load of B -------------------------------------------
    con.print(Rule("2. A loads the hibernating kernel B (staged, preserve context, backup map)"))
    kernel = workdir / "demo-kernel-B.bzImage"
    kernel.write_bytes(demo_kernel())
    req = LoadRequest(kernel=kernel, cmdline="console=ttyS0 quiet",
                      mem_min=WINDOW.start, mem_max=WINDOW.end - 1,
                      preserve_context=True)
    hl = plan_hibernate_load(be, req, staged="always", rng_seed=bytes(32))
    _stage_table(con, "the staged load", hl.staged)
    total = sum(s.memsz for c in hl.staged.plan.calls for s in c.segments)
    with _Progress(con, "loading B", total) as bar:
        ex = staging.execute(be, hl.staged, on_event=bar.event)
    assert ex.pagemap is not None and ex.parameter is not None
    pm = ex.pagemap
    runs = moved_runs(pm)
    core = parse_elfcorehdr(ex.parameter)
    img_a = be.image("kexec")
    assert img_a is not None
    a_kexec_pages = set(img_a.pages) | set(img_a.control) | set(img_a.unusable)
    _pairs(con, "the backup map (from /proc/kexec_pgmap before KS_final)", [
        ("destination pages", f"{hl.layout.dest_pages} (the window's RAM"
                              + (" and the low memory)" if hl.layout.low else ")")),
        ("page map entries", f"{len(pm)} moved to a backup page, "
                             f"{hl.layout.dest_pages - len(pm)} loaded in place"),
        ("runs of moved pages", str(len(runs.dst))),
        ("elfcorehdr", f"{len(ex.parameter):#x} bytes, {len(core.loads)} PT_LOADs, "
                       f"{len(core.notes)} PT_NOTE(s); placeholder {hl.layout.region.size:#x} "
                       f"bytes at {hl.layout.region.start:#x}"),
        ("B's command line", hl.cmdline),
    ])
    check("the placeholder held the map", len(ex.parameter) <= hl.layout.region.size,
          f"{len(ex.parameter):#x} <= {hl.layout.region.size:#x} bytes")
    check("the image is loaded and complete", bool(be.status().loaded),
          f"{len(hl.staged.plan.calls)} calls, then /sys/kernel/kexec_loaded = 1")
    snapshot = b"".join(be.read_phys(r.start, r.size) for r in ram_runs)
    offsets = _offsets(ram_runs)
    a_owner = dict(be.kernel.level.owner)

    # --- 3. the jump ---------------------------------------------------------------------
    con.print(Rule("3. A jumps to B: the window's pages are swapped with their backups"))
    be.reboot_kexec()
    rec = be.last_jump
    assert rec is not None
    cmdline = be.cmdline()
    _pairs(con, "the jump", [("what", f"{rec.what} to {rec.entry:#x}: {rec.pages} pages swapped"),
                          ("B's /proc/cmdline", cmdline)])

    # --- 4. B's view of A ------------------------------------------------------------------
    con.print(Rule("4. B reads A's memory through /proc/vmcore (the backup map)"))
    view = backend_vmcore(be)
    vm = view.read(0, view.size)
    from kexec_py.formats.vmcore import parse_core

    vimg = parse_core(vm, "B:/proc/vmcore")
    src_of = dict(zip(pm.src, pm.dst, strict=True))  # backup page -> its destination
    checked = bad = 0
    first_bad = ""
    for seg in vimg.segments():
        buf = bytes(seg.buf) if seg.buf is not None else b""
        for off in range(0, seg.memsz, PAGE_SIZE):
            pfn = (seg.mem + off) >> PAGE_SHIFT
            want_pfn = src_of.get(pfn, pfn)  # a backup copy shows its destination's original
            got = buf[off:off + PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
            checked += 1
            if got != _page(snapshot, offsets, want_pfn):
                bad += 1
                first_bad = first_bad or f"{pfn << PAGE_SHIFT:#x}"
    # pages loaded in place were free in A and are B's now: in no PT_LOAD
    in_place = hl.layout.dest_pages - len(pm)
    check("B sees A's memory byte for byte",
          bad == 0 and checked == _ram_pages(ram_runs) - in_place,
          f"{checked} pages of /proc/vmcore ({view.size:#x} bytes) compared with A's memory, "
          f"{bad} differ" + (f" (first {first_bad})" if bad else "")
          + f"; the {in_place} pages loaded in place are B's")

    # --- 5. save-image -----------------------------------------------------------------------
    con.print(Rule("5. B saves the image (save-image)"))
    out = workdir / "hibernation.img"
    with _Progress(con, "saving", view.size) as bar:
        saved = save_image(view, out, jump_back=jump_back_entry(cmdline),
                                     progress=bar.bytes)
    res.image = out
    _pairs(con, "the image", [
        ("file", f"{out} ({saved.file_size:#x} bytes, {saved.data_bytes:#x} of them data)"),
        ("PT_LOADs", f"{saved.loads} (pages that read as zero left out: "
                     f"{saved.zero_pages_left_out})"),
        ("jump-back entry (kexec-py note)", f"{saved.jump_back_entry:#x}"
         if saved.jump_back_entry is not None else "none"),
    ])
    check("the image records the jump-back entry", saved.jump_back_entry == rec.jump_back_entry,
          f"{saved.jump_back_entry or 0:#x} from kexec_jump_back_entry= on B's command line")

    # --- 6. a fresh kernel C -----------------------------------------------------------------
    con.print(Rule("6. a fresh kernel C boots"))
    be.reset()
    c_marks = _write_markers(be, random.Random(seed + 1), "C", 48, prefer=markers)
    _pairs(con, "kernel C", [("running", be.running()["text"]),
                          ("C's own pages", f"{len(c_marks)} written (some where A had data)")])

    # --- 7. resume ---------------------------------------------------------------------------
    con.print(Rule("7. C resumes the image in stages and executes it"))
    with open_core(out) as image:
        sp = plan_resume(be, image, staged="always")
        _stage_table(con, f"resume of {out.name}", sp)
        total = sum(s.memsz for c in sp.plan.calls for s in c.segments)
        with _Progress(con, "resuming", total) as bar:
            staging.execute(be, sp, on_event=bar.event)
        covered = [(s.mem, s.memsz) for s in image.segments()]
        image_bytes = {s.mem: bytes(s.buf) if s.buf is not None else b"" for s in
                       image.segments()}
    be.reboot_kexec()
    rec2 = be.last_jump
    assert rec2 is not None
    check("C jumped to A's jump-back entry", rec2.entry == rec.jump_back_entry,
          f"exec entered {rec2.entry:#x}")

    # --- 8. memory equals A's ----------------------------------------------------------------
    con.print(Rule("8. memory equals A's"))
    now = b"".join(be.read_phys(r.start, r.size) for r in ram_runs)
    img_bad = 0
    for mem, memsz in covered:
        data = image_bytes[mem].ljust(memsz, b"\0")
        for off in range(0, memsz, PAGE_SIZE):
            if _page(now, offsets, (mem + off) >> PAGE_SHIFT) != data[off:off + PAGE_SIZE]:
                img_bad += 1
    check("memory holds the image wherever it covers", img_bad == 0,
          f"{sum(m for _, m in covered) >> PAGE_SHIFT} pages, {img_bad} differ")
    own_bad = [p for p, o in a_owner.items() if o == 0
               and _page(now, offsets, p) != _page(snapshot, offsets, p)]
    check("every page of A's own memory is A's again", not own_bad,
          f"{sum(1 for o in a_owner.values() if o == 0)} pages"
          + (f", {len(own_bad)} differ (first {own_bad[0] << PAGE_SHIFT:#x})" if own_bad else ""))
    differ = [p for p in range(_ram_pages(ram_runs))
              if _page_at(now, p) != _page_at(snapshot, p)]
    differ_pfns = [_pfn_at(offsets, ram_runs, i) for i in differ]
    unexplained = [p for p in differ_pfns if p not in a_kexec_pages and p in a_owner]
    kexec_d = sum(1 for p in differ_pfns if p in a_kexec_pages)
    free_d = sum(1 for p in differ_pfns if p not in a_owner)
    check("memory equals A's", not unexplained,
          f"{len(differ_pfns)} of {_ram_pages(ram_runs)} pages differ: {kexec_d} hold A's kexec "
          f"image (backup copies, which A's jump-back swap takes home), {free_d} were free in A "
          "(zero, left out of the image)" + (f"; {len(unexplained)} unexplained"
                                             if unexplained else ""))
    res.seconds = time.monotonic() - t0
    con.print(Rule("result"))
    verdict = ("[bold green]every check holds[/bold green]" if res.ok
               else "[bold red]a check failed[/bold red]")
    con.print(f"{verdict} ({len(res.checks)} checks, {res.seconds:.1f} s)")
    be.close()
    return res


# --- helpers -----------------------------------------------------------------------------


def _write_markers(be: ModelBackend, rnd: random.Random, who: str, n: int,
                   prefer: list[int] | None = None) -> list[int]:
    """``n`` marker pages written by the running kernel: text that names the
    kernel and the address, then random bytes; half of them at addresses
    from ``prefer`` when given."""
    pages = [p for r in be.ram() for p in range((r.start + PAGE_SIZE - 1) >> PAGE_SHIFT,
                                                r.end >> PAGE_SHIFT)]
    chosen: list[int] = []
    if prefer:
        chosen = rnd.sample(prefer, min(len(prefer), n // 2))
    rest = [p << PAGE_SHIFT for p in rnd.sample(pages, n * 2)]
    for a in rest:
        if len(chosen) >= n:
            break
        if a not in chosen:
            chosen.append(a)
    for a in chosen:
        head = f"kernel {who} marker at {a:#x}\n".encode()
        be.write_phys(a, head + rnd.randbytes(PAGE_SIZE - len(head)))
    return sorted(chosen)


def _offsets(runs: list[Range]) -> list[tuple[int, int, int]]:
    """(first pfn, end pfn, offset in the concatenated snapshot)."""
    out = []
    off = 0
    for r in runs:
        out.append((r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT, off))
        off += r.size
    return out


def _page(snap: bytes, offsets: list[tuple[int, int, int]], pfn: int) -> bytes:
    for first, end, off in offsets:
        if first <= pfn < end:
            o = off + ((pfn - first) << PAGE_SHIFT)
            return snap[o:o + PAGE_SIZE]
    return bytes(PAGE_SIZE)


def _page_at(snap: bytes, i: int) -> bytes:
    return snap[i << PAGE_SHIFT:(i + 1) << PAGE_SHIFT]


def _pfn_at(offsets: list[tuple[int, int, int]], runs: list[Range], i: int) -> int:
    off = i << PAGE_SHIFT
    for first, end, base in offsets:
        if base <= off < base + ((end - first) << PAGE_SHIFT):
            return first + ((off - base) >> PAGE_SHIFT)
    raise IndexError(i)


def _ram_pages(runs: list[Range]) -> int:
    return sum(r.size for r in runs) >> PAGE_SHIFT


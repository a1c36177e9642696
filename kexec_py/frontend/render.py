"""Rich tables for plans and ``inspect`` reports.

Everything renders into a :class:`rich.console.Console` passed in, so tests
render at a fixed width into a string.  rich is imported inside the
functions: commands that print no table never pay for it.  On a terminal
the tables have boxes and colour; elsewhere (pipes, scripts, initramfs
logs) they are plain aligned columns without escape codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kexec_py.boundary import abi
from kexec_py.load.plan import Plan

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: rows of a long segment table shown in text (all of them are in --json)
MAX_ROWS = 40

_FLAG_BITS = ((abi.KEXEC_ON_CRASH, "KEXEC_ON_CRASH"),
              (abi.KEXEC_PRESERVE_CONTEXT, "KEXEC_PRESERVE_CONTEXT"))
_ARCH = {abi.KEXEC_ARCH_X86_64: "KEXEC_ARCH_X86_64", abi.KEXEC_ARCH_386: "KEXEC_ARCH_386",
         abi.KEXEC_ARCH_AARCH64: "KEXEC_ARCH_AARCH64", abi.KEXEC_ARCH_DEFAULT: ""}


def flags_text(flags: int) -> str:
    """``0x3e0002`` -> ``0x3e0002 (KEXEC_ARCH_X86_64 | KEXEC_PRESERVE_CONTEXT)``."""
    names = []
    arch = flags & abi.KEXEC_ARCH_MASK
    names.append(_ARCH.get(arch, f"arch {arch >> 16}"))
    names += [n for bit, n in _FLAG_BITS if flags & bit]
    stage = abi.flags_stage(flags)
    if stage != abi.Stage.FULL:
        names.append(f"KS_{stage.label}")
    shown = " | ".join(n for n in names if n)
    return f"{flags:#x} ({shown})" if shown else f"{flags:#x}"


def _table(console: Console, *columns: str, right: Sequence[str] = ()) -> Table:
    from rich import box
    from rich.table import Table

    fancy = console.is_terminal
    t = Table(box=box.SIMPLE_HEAD if fancy else None, show_edge=False, pad_edge=False,
              header_style="bold" if fancy else "", highlight=False)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", no_wrap=c != "meaning",
                     overflow="fold")
    return t


def emit(console: Console, table: Table) -> None:
    """Print ``table``; off a terminal, without the padding rich leaves at
    the ends of lines."""
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as cap:
        console.print(table)
    console.file.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))


def _elide(rows: Sequence[Any], limit: int = MAX_ROWS) -> tuple[Sequence[Any], int]:
    """At most ``limit`` rows: the first ones and the last five."""
    if len(rows) <= limit:
        return rows, 0
    head, tail = rows[:limit - 5], rows[-5:]
    return [*head, None, *tail], len(rows) - limit


def segment_table(console: Console, segments: Sequence[dict[str, Any]]) -> Table:
    t = _table(console, "#", "segment", "mem", "end", "memsz", "bufsz",
               right=("#", "mem", "end", "memsz", "bufsz"))
    shown, hidden = _elide(list(enumerate(segments)))
    for item in shown:
        if item is None:
            t.add_row("", f"... {hidden} more", "", "", "", "")
            continue
        i, s = item
        t.add_row(str(i), s.get("name") or "-", f"{s['mem']:#x}", f"{s['mem'] + s['memsz']:#x}",
                  f"{s['memsz']:#x}", f"{s['bufsz']:#x}")
    return t


def print_plan(console: Console, plan: Plan) -> None:
    """A plan as text: the system call, the entry, each call's segments, notes."""
    console.print(f"plan: {plan.syscall}" + (f", entry {plan.entry:#x}"
                                              if plan.syscall == "kexec_load" else ""),
                  highlight=False)
    for n, call in enumerate(plan.calls, 1):
        total = sum(s.memsz for s in call.segments)
        console.print(f"call {n}: stage {call.stage.label}, flags {flags_text(call.flags)}, "
                      f"{len(call.segments)} segment(s), {total:#x} bytes", highlight=False)
        rows = [{"name": s.name, "mem": s.mem, "memsz": s.memsz, "bufsz": s.bufsz}
                for s in call.segments]
        emit(console, segment_table(console, rows))
    if not plan.calls:
        console.print("no segments: the kernel parses and places the image", highlight=False)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)


def _value(row: dict[str, Any]) -> str:
    v = row["value"]
    if not isinstance(v, int):
        return str(v)
    size = int(row.get("size", 4))
    text = f"{v:#0{2 + 2 * size}x}" if row.get("offset") is not None else f"{v:#x}"
    if row["name"] == "header":
        text += f' "{v.to_bytes(4, "little").decode("latin-1")}"'
    return text


def print_inspect(console: Console, report: dict[str, Any]) -> None:
    """An ``inspect`` report as text."""
    console.print(f"file: {report['file']} ({report['size']:#x} bytes)", highlight=False)
    fmt = report["format"]
    if fmt == "bzImage":
        line = f"format: bzImage, boot protocol {report['protocol']}"
        if report.get("kernel_version"):
            line += f", kernel {report['kernel_version']}"
        console.print(line, highlight=False, soft_wrap=True)
    else:
        console.print(f"format: {fmt}", highlight=False)
    if report["problem"]:
        console.print(f"loadable through kexec_load: no: {report['problem']}",
                      highlight=False, soft_wrap=True)
    elif fmt != "elf-core":
        console.print("loadable through kexec_load: yes", highlight=False)
    header = report["header"]
    if header and "offset" in header[0]:
        t = _table(console, "offset", "field", "since", "value", "meaning",
                   right=("offset",))
        for r in header:
            meaning = r["meaning"]
            if r.get("flags"):
                meaning += ": " + " ".join(r["flags"])
            t.add_row(f"{r['offset']:#05x}", r["name"], r["since"], _value(r), meaning)
    else:
        t = _table(console, "field", "value")
        for r in header:
            t.add_row(r["name"], _value(r))
    emit(console, t)
    phdrs = report.get("program_headers")
    if phdrs:
        t = _table(console, "#", "type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags",
                   right=("#", "offset", "vaddr", "paddr", "filesz", "memsz"))
        shown, hidden = _elide(list(enumerate(phdrs)))
        types = {1: "LOAD", 2: "DYNAMIC", 3: "INTERP", 4: "NOTE", 6: "PHDR", 7: "TLS"}
        for item in shown:
            if item is None:
                t.add_row("", f"... {hidden} more", "", "", "", "", "", "")
                continue
            i, p = item
            fl = "".join(c if p["flags"] & b else "-" for b, c in ((4, "R"), (2, "W"), (1, "X")))
            t.add_row(str(i), types.get(p["type"], f"{p['type']:#x}"), f"{p['offset']:#x}",
                      f"{p['vaddr']:#x}", f"{p['paddr']:#x}", f"{p['filesz']:#x}",
                      f"{p['memsz']:#x}", fl)
        console.print("program headers:", highlight=False)
        emit(console, t)
    if report["segments"]:
        entry = f", entry {report['entry']:#x}" if report.get("entry") is not None else ""
        console.print(f"segments for kexec_load{entry}:", highlight=False)
        emit(console, segment_table(console, report["segments"]))
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)

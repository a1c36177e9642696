"""Readers of /proc and /sys, in three layers.

1. public readers take a root directory (``/`` normally, ``--root DIR`` in
   tests) and return parsed values or None when the file does not exist;
2. path readers read one file and wrap OSError in :class:`ProcfsError`;
3. parsers take the text and are pure.

Nothing here hard-codes ``/proc/...`` without the root in front.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from kexec_py.errors import ProcfsError
from kexec_py.memmap import Kind, MemoryMap, MemRegion
from kexec_py.ranges import Range

T = TypeVar("T")

# --- layer 2: path readers ---------------------------------------------------


def _path(root: Path | str, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def read_text(root: Path | str, rel: str) -> str | None:
    """The file's text, or None when it does not exist."""
    p = _path(root, rel)
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as e:
        raise ProcfsError(
            f"cannot read {p}: {e.strerror}",
            "run as root" if e.errno in (errno.EACCES, errno.EPERM) else "",
        ) from e


def read_bytes(root: Path | str, rel: str) -> bytes | None:
    p = _path(root, rel)
    try:
        with open(p, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise
        raise ProcfsError(f"cannot read {p}: {e.strerror}", "run as root") from e


# --- layer 3: parsers ----------------------------------------------------------


def parse_int(text: str) -> int:
    return int(text.strip(), 0)


def parse_bool01(text: str) -> bool:
    return text.strip() not in ("", "0")


def parse_lockdown(text: str) -> str:
    """``none [integrity] confidentiality`` -> ``integrity``."""
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else text.strip()


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal:  123456 kB`` of /proc/meminfo, in bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


@dataclass(frozen=True, slots=True)
class IomemEntry:
    """One line of /proc/iomem: ``range`` half-open, ``depth`` = indent / 2."""

    range: Range
    name: str
    depth: int


_IOMEM_RE = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_iomem(text: str) -> list[IomemEntry]:
    """Parse /proc/iomem; ends become exclusive.  Lines of all zeros (what
    an unprivileged reader sees) parse, and :func:`iomem_to_memmap` rejects
    them."""
    out: list[IomemEntry] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _IOMEM_RE.match(line)
        if not m:
            raise ProcfsError(f"/proc/iomem line {n} is not 'start-end : name': {line!r}")
        start, end = int(m.group(2), 16), int(m.group(3), 16)
        if end < start:
            raise ProcfsError(f"/proc/iomem line {n} ends before it starts: {line!r}")
        out.append(IomemEntry(Range(start, end + 1), m.group(4).strip(), len(m.group(1)) // 2))
    return out


def iomem_to_memmap(entries: list[IomemEntry]) -> MemoryMap:
    """Top-level regions of iomem as a memory map, plus the crash kernel
    region (a child of System RAM) as its own region: RAM that holds it is
    split around it (:meth:`MemoryMap.carve`)."""
    if entries and all(e.range.start == 0 and e.range.end == 1 for e in entries):
        raise ProcfsError("/proc/iomem shows only zero addresses",
                          "run as root (unprivileged readers see zeros)")
    top = MemoryMap(MemRegion(e.range, e.name) for e in entries if e.depth == 0)
    return top.carve([MemRegion(e.range, Kind.CRASH_KERNEL) for e in entries
                      if e.depth > 0 and e.name == Kind.CRASH_KERNEL])


def parse_memmap_entry(start: str, end: str, kind: str) -> MemRegion:
    """One /sys/firmware/memmap/N directory (end inclusive in sysfs)."""
    s, e = parse_int(start), parse_int(end)
    return MemRegion(Range(s, e + 1), kind.strip())


_CMDLINE_TOKEN = re.compile(r'(?:[^\s"]|"[^"]*")+')


def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line into parameters, keeping quoted values."""
    return _CMDLINE_TOKEN.findall(text)


def param_name(token: str) -> str:
    return token.split("=", 1)[0]


def reuse_cmdline(current: str, append: str | None, crash: bool = False) -> str:
    """The command line for ``--reuse-cmdline``: ``current`` without
    ``BOOT_IMAGE=`` (and ``crashkernel=`` for a crash kernel), and without
    any parameter that ``append`` sets again; then ``append``."""
    drop = {"BOOT_IMAGE"}
    if crash:
        drop.add("crashkernel")
    extra = split_cmdline(append or "")
    drop |= {param_name(t) for t in extra}
    kept = [t for t in split_cmdline(current) if param_name(t) not in drop]
    return " ".join(kept + extra)


@dataclass(frozen=True, slots=True)
class PageMap:
    """``/proc/kexec_pgmap``: parallel arrays of destination and source pfns
    (``array('Q')``), in the kernel's order."""

    dst: array[int]
    src: array[int]

    def __len__(self) -> int:
        return len(self.dst)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.dst, self.src, strict=True))


_PGMAP_LINE = 38  # "0x" 16 hex "\t" "0x" 16 hex "\n"
_X_TO_0 = bytes.maketrans(b"x", b"0")
_LITTLE = sys.byteorder == "little"


def parse_pgmap(data: bytes) -> PageMap:
    """Parse ``/proc/kexec_pgmap`` (``0x%016lx\\t0x%016lx\\n`` per page).

    Fast path for the kernel's fixed-width lines: one ``translate`` and one
    ``bytes.fromhex`` decode every number as big-endian bytes, and strided
    slices gather them into two arrays (a million lines in about 0.1 s).  Anything else goes
    through a line-by-line parser that names the first bad line.
    """
    dst: array[int] = array("Q")
    src: array[int] = array("Q")
    if not data:
        return PageMap(dst, src)
    n = len(data) // _PGMAP_LINE
    if len(data) == n * _PGMAP_LINE and data.startswith(b"0x") and data.endswith(b"\n") \
            and data.count(b"\t0x") == n:
        try:
            # "0x" -> "00": each line becomes 18 bytes, 00 DST(8) 00 SRC(8);
            # fromhex skips the tab and newline between bytes.
            raw = bytes.fromhex(data.translate(_X_TO_0).decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raw = b""
        if len(raw) == 18 * n and raw[0::18].count(0) == n and raw[9::18].count(0) == n:
            db, sb = bytearray(8 * n), bytearray(8 * n)
            for k in range(8):
                db[k::8] = raw[1 + k::18]
                sb[k::8] = raw[10 + k::18]
            dst.frombytes(db)
            src.frombytes(sb)
            if dst.itemsize == 8 and _LITTLE:
                dst.byteswap()
                src.byteswap()
            return PageMap(dst, src)
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        parts = line.split(b"\t")
        try:
            if len(parts) != 2:
                raise ValueError
            d, s = int(parts[0], 16), int(parts[1], 16)
        except ValueError:
            raise ProcfsError(
                f"/proc/kexec_pgmap line {lineno} is not 'dst_pfn<TAB>src_pfn': {line[:80]!r}",
                "the kernel's multi-stage load patch prints 0x%016lx\\t0x%016lx",
            ) from None
        dst.append(d)
        src.append(s)
    return PageMap(dst, src)


def format_pgmap(pairs: list[tuple[int, int]]) -> str:
    """The kernel's text for a map (the seed's ``seq_printf`` format)."""
    return "".join(f"0x{d:016x}\t0x{s:016x}\n" for d, s in pairs)


# --- layer 1: public readers ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcValue(Generic[T]):
    """A value the kernel shows in one file: called with a root directory,
    the file ``rel`` under it parsed by ``parse``, or None when the file does
    not exist (other errors: :func:`read_text`'s :class:`ProcfsError`)."""

    rel: str
    parse: Callable[[str], T]

    def __call__(self, root: Path | str = "/") -> T | None:
        t = read_text(root, self.rel)
        return None if t is None else self.parse(t)


#: whether a kexec image is loaded
kexec_loaded = ProcValue("sys/kernel/kexec_loaded", parse_bool01)
#: whether a crash kernel is loaded
kexec_crash_loaded = ProcValue("sys/kernel/kexec_crash_loaded", parse_bool01)
#: the size of the crashkernel= reservation, in bytes
kexec_crash_size = ProcValue("sys/kernel/kexec_crash_size", parse_int)
#: the running kernel's command line
cmdline = ProcValue("proc/cmdline", str.strip)
#: the lockdown mode in force (``none``, ``integrity``, ``confidentiality``)
lockdown = ProcValue("sys/kernel/security/lockdown", parse_lockdown)
#: whether kexec_load is disabled (until the next boot)
kexec_load_disabled = ProcValue("proc/sys/kernel/kexec_load_disabled", parse_bool01)
#: the RAM the kernel manages (``totalram_pages()``), from MemTotal, in bytes
mem_total = ProcValue("proc/meminfo", parse_meminfo_total)
#: every line of /proc/iomem
iomem = ProcValue("proc/iomem", parse_iomem)


def kexec_load_limits(root: Path | str = "/") -> dict[str, int]:
    """``kexec_load_limit_{reboot,panic}`` (kernels since 6.6): -1 means no
    limit, 0 means no load left."""
    out: dict[str, int] = {}
    for which in ("reboot", "panic"):
        t = read_text(root, f"proc/sys/kernel/kexec_load_limit_{which}")
        if t is not None:
            out[which] = parse_int(t)
    return out


def firmware_memmap(root: Path | str = "/") -> list[MemRegion] | None:
    base = _path(root, "sys/firmware/memmap")
    try:
        names = os.listdir(base)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise ProcfsError(f"cannot list {base}: {e.strerror}") from e
    out: list[MemRegion] = []
    for name in sorted(names, key=lambda x: int(x) if x.isdigit() else -1):
        if not name.isdigit():
            continue
        parts = [read_text(root, f"sys/firmware/memmap/{name}/{f}")
                 for f in ("start", "end", "type")]
        if any(p is None for p in parts):
            raise ProcfsError(f"{base / name} lacks start, end or type")
        start, end, kind = (p or "" for p in parts)
        try:
            out.append(parse_memmap_entry(start, end, kind))
        except ValueError as exc:
            raise ProcfsError(f"{base / name}: bad number ({exc})") from exc
    return sorted(out, key=lambda r: r.start) or None


def memory_map(root: Path | str = "/") -> MemoryMap:
    """The physical memory map: /sys/firmware/memmap when present (the
    firmware's view, what a new kernel should get as e820), else the top
    level of /proc/iomem.  The crash kernel region always comes from iomem.
    """
    fw = firmware_memmap(root)
    io = iomem(root)
    if fw is None and io is None:
        raise ProcfsError(
            f"no memory map: neither {_path(root, 'sys/firmware/memmap')} nor "
            f"{_path(root, 'proc/iomem')} exists",
            "mount /proc and /sys (or give --root a tree that has them)",
        )
    if fw is None:
        assert io is not None
        return iomem_to_memmap(io)
    crash = [e for e in (io or []) if e.name == Kind.CRASH_KERNEL]
    if not crash:
        return MemoryMap(fw)
    return iomem_to_memmap([IomemEntry(r.range, r.kind, 0) for r in fw] + crash)


def crash_region(root: Path | str = "/") -> Range | None:
    for e in iomem(root) or []:
        if e.name == Kind.CRASH_KERNEL:
            return e.range
    return None


def pgmap_supported(root: Path | str = "/") -> bool:
    """True when the kernel speaks the multi-stage load protocol, which it
    announces by having ``/proc/kexec_pgmap``."""
    return _path(root, "proc/kexec_pgmap").exists()


def read_pgmap_bytes(root: Path | str = "/") -> bytes | None:
    """Raw /proc/kexec_pgmap, or None without the file.  ENODEV (no image
    loaded) propagates as OSError for the caller to explain."""
    return read_bytes(root, "proc/kexec_pgmap")

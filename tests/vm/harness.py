"""QEMU harness of the kexec-py VM tests: build an initramfs, boot it, parse the log.

What a boot looks like:

* The first kernel (Debian's linux-image-amd64 unless a scenario gives
  another) boots under TCG with one initrd file made of concatenated
  archives: ``base`` (gzipped: busybox, Debian's /usr/bin/python3.11 with the
  stdlib modules and shared libraries kexec-py really imports, click, rich,
  pyelftools and ``_cffi_backend`` from the host's site-packages, kexec_py
  from the working tree, kexec-tools, util-linux setpriv, the guest scripts),
  ``payload`` (uncompressed: the kernel to kexec as /boot/vmlinuz and the
  second kernel's own tiny initramfs as /boot/stage2.cpio.gz) and, per run,
  ``extra`` (uncompressed: the scenario's extra_files).
* ``guest/init.sh`` is /init: it reads ``kexec_py.scenario=NAME`` from the
  command line and sources ``guest/scenarios/NAME.sh``, which reports on the
  serial console with ``@@STEP``/``@@O``/``@@E``/``@@END`` (one command: exit
  status, stdout, stderr), ``@@TIME`` (a timed command) and other ``@@``
  markers.  Other ``kexec_py.KEY=VALUE`` parameters are the scenario's.
* ``guest/stage2-init.sh`` is the /init of the kexec'd (or crash) kernel: it
  prints ``@@STAGE2 key=value`` lines, among them ``marker=`` from
  ``KEXEC_PY_MARKER=`` on its command line, and powers off.

Adding a scenario: write ``guest/scenarios/NAME.sh`` and a test that calls
``run_scenario("NAME", ...)`` and asserts on the returned :class:`SerialLog`.

Built archives are cached under ``tests/vm/.cache/`` keyed by a hash of their
inputs; serial logs go to ``tests/vm/.cache/logs/``.

Run one scenario by hand: ``python3 tests/vm/harness.py foundation -p marker=x``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"
CACHE = Path(os.environ.get("KEXEC_PY_VM_CACHE", HERE / ".cache"))

#: the guest's python: Debian's, not a pyenv shim (VM-TESTING.md)
GUEST_PYTHON = Path("/usr/bin/python3.11")
STDLIB = Path("/usr/lib/python3.11")
#: where Debian's python finds third-party packages; kexec_py goes there too
GUEST_SITE = "usr/lib/python3/dist-packages"
BUSYBOX = Path("/bin/busybox")
KEXEC_TOOLS = Path("/usr/sbin/kexec")
SETPRIV = Path("/usr/bin/setpriv")
QEMU = "qemu-system-x86_64"
#: copied whole from the host's site-packages: (import name, distribution)
THIRD_PARTY = (("click", "click"), ("rich", "rich"), ("elftools", "pyelftools"))
#: the one compiled module of cffi that the out-of-line ABI mode needs
CFFI_BACKEND = ("_cffi_backend", "cffi")
#: rich modules a command may use; imported while tracing the stdlib they need
#: (not rich.syntax, rich.markdown, rich.traceback: they need pygments)
RICH_MODULES = ("rich.console", "rich.table", "rich.text", "rich.panel", "rich.tree",
                "rich.progress", "rich.live", "rich.status", "rich.rule", "rich.markup",
                "rich.pretty", "rich.json", "rich.columns", "rich.padding", "rich.box",
                "rich.filesize", "rich.prompt", "rich.logging")
#: stdlib files the guest needs even if the trace does not show them
STDLIB_ALWAYS = ("os.py", "encodings/__init__.py", "encodings/aliases.py",
                 "encodings/utf_8.py", "encodings/ascii.py", "encodings/latin_1.py")

DEFAULT_TIMEOUT = 300


class HarnessError(RuntimeError):
    """The harness could not build or boot (not a failure of kexec-py)."""


# --- inputs --------------------------------------------------------------------------


def default_kernel() -> Path:
    """The newest /boot/vmlinuz-* (``ls -1v | tail -n1``)."""
    def key(p: Path) -> list[tuple[int, str]]:
        return [(int(t), "") if t.isdigit() else (-1, t)
                for t in re.findall(r"\d+|\D+", p.name)]

    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=key)
    if not kernels:
        raise HarnessError("no /boot/vmlinuz-*: install linux-image-amd64")
    return kernels[-1]


def missing_prerequisites() -> list[str]:
    """What this host lacks to run the VM tests, in words."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (apt-get install qemu-system-x86)")
    if shutil.which("timeout") is None:
        missing.append("timeout (coreutils)")
    if not list(Path("/boot").glob("vmlinuz-*")):
        missing.append("/boot/vmlinuz-* (apt-get install linux-image-amd64)")
    for path, pkg in ((GUEST_PYTHON, "python3-minimal"), (BUSYBOX, "busybox-static"),
                      (KEXEC_TOOLS, "kexec-tools"), (SETPRIV, "util-linux")):
        if not path.exists():
            missing.append(f"{path} (apt-get install {pkg})")
    if BUSYBOX.exists() and _ldd([BUSYBOX]):
        missing.append(f"{BUSYBOX} is not static (apt-get install busybox-static)")
    for mod, dist in (*THIRD_PARTY, CFFI_BACKEND):
        if importlib.util.find_spec(mod) is None:
            missing.append(f"python module {mod} (pip install {dist})")
    return missing


def _run(cmd: list[str], check: bool = True, env: Mapping[str, str] | None = None,
         cwd: Path | None = None) -> str:
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=dict(env) if env is not None else None, cwd=cwd)
    if check and p.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr


def _spec_path(mod: str) -> Path:
    spec = importlib.util.find_spec(mod)
    if spec is None or spec.origin is None:
        raise HarnessError(f"python module {mod} is not installed on the host")
    return Path(spec.origin)


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def _hash(parts: Iterable[str | bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def _tree_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts)


# --- newc cpio ---------------------------------------------------------------------


class Cpio:
    """A writer of the kernel's initramfs format (cpio "newc", uid/gid 0).

    Written here rather than by cpio(1) so that device nodes and modes need
    no root privileges and no staging of the big payload files.
    """

    def __init__(self, out: IO[bytes] | gzip.GzipFile) -> None:
        self.out = out
        self.ino = 0x1000
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", size: int | None = None,
               mtime: int = 0, rmajor: int = 0, rminor: int = 0) -> None:
        self.ino += 1
        nameb = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, mtime,
                  len(data) if size is None else size, 0, 0, rmajor, rminor, len(nameb), 0)
        hdr = b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + nameb
        self.out.write(hdr + b"\0" * (-len(hdr) % 4))
        if data:
            self.out.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name in ("", ".") or name in self.dirs:
            return
        self.parents(name)
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | mode)

    def parents(self, name: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)

    def file(self, name: str, src: Path | bytes, mode: int | None = None) -> None:
        name = name.strip("/")
        self.parents(name)
        if isinstance(src, bytes):
            self._entry(name, stat.S_IFREG | (0o644 if mode is None else mode), src)
            return
        st = src.stat()
        perm = stat.S_IMODE(st.st_mode) if mode is None else mode
        size = st.st_size
        self._entry(name, stat.S_IFREG | perm, size=size, mtime=int(st.st_mtime))
        with open(src, "rb") as f:
            copied = 0
            while chunk := f.read(1 << 20):
                self.out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise HarnessError(f"{src} changed while archiving it")
        self.out.write(b"\0" * (-size % 4))

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        self.parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = name.strip("/")
        self.parents(name)
        self._entry(name, stat.S_IFCHR | mode, rmajor=major, rminor=minor)

    def tree(self, root: Path, prefix: str = "") -> None:
        """Everything under ``root`` (a staging directory), as ``prefix/...``."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = os.path.normpath(os.path.join(prefix.strip("/") or ".", rel))
            self.dir(base)
            for fn in sorted(filenames) + [d for d in dirnames
                                           if os.path.islink(os.path.join(dirpath, d))]:
                src = Path(dirpath, fn)
                dst = fn if base == "." else f"{base}/{fn}"
                if src.is_symlink():
                    self.symlink(dst, os.readlink(src))
                else:
                    self.file(dst, src)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def _prune(prefix: str, keep: str, n: int = 3) -> None:
    """Delete the cache files ``PREFIX<key>.*`` of all but the ``n`` newest
    keys (never ``keep``): every change of kexec_py makes a new base."""
    groups: dict[str, list[Path]] = {}
    for p in CACHE.glob(prefix + "*"):
        groups.setdefault(p.name.split(".")[0], []).append(p)
    newest = sorted(groups, key=lambda k: max(p.stat().st_mtime for p in groups[k]),
                    reverse=True)
    for k in [k for k in newest if k != prefix + keep][n - 1:]:
        for p in groups[k]:
            p.unlink(missing_ok=True)


def _write_atomic(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file: ``fill(fileobj)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _busybox(c: Cpio) -> None:
    c.file("bin/busybox", BUSYBOX, 0o755)
    for applet in _run([str(BUSYBOX), "--list-full"]).split():
        if applet != "bin/busybox":
            c.symlink(applet, "/bin/busybox")


def _dev_nodes(c: Cpio) -> None:
    for d in ("proc", "sys", "dev", "tmp", "run", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)


# --- the second kernel's initramfs ----------------------------------------------------


def build_stage2() -> Path:
    """busybox and guest/stage2-init.sh as /init, gzipped."""
    script = GUEST / "stage2-init.sh"
    key = _hash([Path(__file__).read_bytes(), script.read_bytes(), _stat_key(BUSYBOX)])
    out = CACHE / f"stage2-{key}.cpio.gz"
    if not out.exists():
        def fill(f: BinaryIO) -> None:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                c = Cpio(gz)
                _dev_nodes(c)
                _busybox(c)
                c.file("init", script, 0o755)
                c.close()
        _write_atomic(out, fill)
        _prune("stage2-", key)
    return out


# --- the first kernel's initramfs ----------------------------------------------------

_TRACER = r"""
import os, sys
out_path, fake_root, site_dir = sys.argv[1], sys.argv[2], sys.argv[5]
# what site does at start-up in the guest, where the staged packages are the
# only site-packages (run with -S: no .pth file of the host's is processed)
import site
site.ENABLE_USER_SITE = False
site.getsitepackages = lambda prefixes=None: [site_dir]
site.main()
real_out, real_err = sys.stdout, sys.stderr
sink = open(os.devnull, "w")
errors = []

def run(args):
    sys.stdout = sys.stderr = sink
    try:
        main(args)
    except SystemExit:
        pass
    except BaseException as e:
        errors.append(f"{args}: {type(e).__name__}: {e}")
    finally:
        sys.stdout, sys.stderr = real_out, real_err

from kexec_py.frontend.main import main
import kexec_py._start
from kexec_py.frontend.cli import cli
g = ["--backend", "linux", "--root", fake_root]
run(["--version"])
run(["--help"])
for name in list(cli.commands):
    run([name, "--help"])
run(g + ["status"])
run(g + ["--json", "status"])
run(g + ["-vv", "load", "-s", "/nonexistent/vmlinuz", "--initrd", "/nonexistent/initrd"])
run(g + ["--json", "load", "-s", "/nonexistent/vmlinuz"])
run(["no-such-command"])

import importlib, pkgutil
def walk(pkgname):
    pkg = importlib.import_module(pkgname)
    for m in pkgutil.walk_packages(pkg.__path__, pkgname + "."):
        if m.name.endswith("__main__") or "._win" in m.name:  # click._winconsole
            continue
        try:
            importlib.import_module(m.name)
        except BaseException as e:
            errors.append(f"import {m.name}: {type(e).__name__}: {e}")
for p in sys.argv[3].split(","):
    walk(p)
for m in sys.argv[4].split(","):
    importlib.import_module(m)

import json
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
with open(out_path, "w") as f:
    json.dump({"files": files, "errors": errors}, f)
"""


@dataclasses.dataclass
class Built:
    """What build_base() made."""

    path: Path
    key: str
    #: guest paths of the stdlib files and shared libraries that were traced
    manifest: list[str]


def _base_key() -> str:
    parts: list[str | bytes] = [Path(__file__).read_bytes(), _TRACER]
    for p in _tree_files(GUEST, (".sh", ".py")):
        parts += [str(p.relative_to(GUEST)), p.read_bytes()]
    for p in _tree_files(REPO / "kexec_py", (".py", ".typed")):
        parts += [str(p.relative_to(REPO)), p.read_bytes()]
    for p in (GUEST_PYTHON, BUSYBOX, KEXEC_TOOLS, SETPRIV, _spec_path(CFFI_BACKEND[0])):
        parts.append(_stat_key(p))
    for mod, dist in THIRD_PARTY:
        parts += [mod, str(_spec_path(mod)), importlib.metadata.version(dist)]
    return _hash(parts)


def _ldd(paths: Iterable[Path]) -> set[Path]:
    """Every shared library (and the dynamic loader) these ELF files need."""
    libs: set[Path] = set()
    for p in paths:
        out = _run(["ldd", str(p)], check=False)
        if "not a dynamic executable" in out or "statically linked" in out:
            continue
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                libs.add(Path(m.group(1)))
            elif "not found" in line:
                raise HarnessError(f"ldd {p}: {line.strip()}")
    return libs


def _copy(src: Path, stage: Path, guest: str | Path) -> Path:
    dst = stage / str(guest).lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst, follow_symlinks=True)
    return dst


def _clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    env.update(extra)
    return env


def build_base() -> Built:
    """The gzipped base archive; rebuilt only when an input changed."""
    key = _base_key()
    out = CACHE / f"base-{key}.cpio.gz"
    manifest_path = CACHE / f"base-{key}.manifest.json"
    if out.exists() and manifest_path.exists():
        return Built(out, key, json.loads(manifest_path.read_text()))
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="stage-") as tmp:
        stage = Path(tmp) / "root"
        site = stage / GUEST_SITE
        site.mkdir(parents=True)
        # third-party packages whole (sources only), kexec_py from the tree
        for mod, _dist in THIRD_PARTY:
            shutil.copytree(_spec_path(mod).parent, site / mod,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        backend = _spec_path(CFFI_BACKEND[0])
        _copy(backend, stage, f"{GUEST_SITE}/{backend.name}")
        shutil.copytree(REPO / "kexec_py", site / "kexec_py",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

        # which stdlib files running kexec-py imports, under the guest's python
        fake_root = Path(tmp) / "fakeroot"
        fake_root.mkdir()
        trace_out = Path(tmp) / "trace.json"
        _run([str(GUEST_PYTHON), "-S", "-c", _TRACER, str(trace_out), str(fake_root),
              ",".join(["kexec_py"] + [m for m, _ in THIRD_PARTY if m != "rich"]),
              ",".join(RICH_MODULES), str(site)], env=_clean_env(), cwd=Path(tmp))
        trace = json.loads(trace_out.read_text())
        stray = [f for f in trace["files"]
                 if not f.startswith((str(STDLIB) + "/", str(stage) + "/"))]
        if stray:
            raise HarnessError("tracing kexec-py imported modules from outside the stdlib "
                               "and the staged packages (add them to THIRD_PARTY): "
                               + ", ".join(stray))
        manifest: set[str] = set()
        std = {f for f in trace["files"] if f.startswith(str(STDLIB) + "/")}
        std |= {str(STDLIB / f) for f in STDLIB_ALWAYS}
        for f in sorted(std):
            _copy(Path(f), stage, f)
            manifest.add(f)

        # binaries and every shared library they and the extension modules need
        bins = {GUEST_PYTHON: "usr/bin/python3.11", KEXEC_TOOLS: "usr/sbin/kexec",
                SETPRIV: "usr/bin/setpriv"}
        for src, dst in bins.items():
            _copy(src, stage, dst)
        (stage / "usr/bin/python3").symlink_to("python3.11")
        exts = [p for p in stage.rglob("*.so")]
        for lib in sorted(_ldd(list(bins) + exts)):
            _copy(lib, stage, lib)
            manifest.add(str(lib))
        script = stage / "usr/bin/kexec-py"
        script.write_text("#!/usr/bin/python3\nimport sys\n\nfrom kexec_py._start import main\n\n"
                          "sys.exit(main())\n")
        script.chmod(0o755)

        # byte-compile with the guest's python: no compiling at run time in the guest
        _run([str(GUEST_PYTHON), "-m", "compileall", "-q", "-j", "2",
              "--invalidation-mode", "unchecked-hash", "-s", str(stage), "-p", "/",
              str(stage / "usr/lib")], env=_clean_env())

        def fill(f: BinaryIO) -> None:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                c = Cpio(gz)
                _dev_nodes(c)
                _busybox(c)
                # /usr/bin/setpriv is util-linux's (busybox's applet is /bin/setpriv and
                # lacks --reuid; scenarios call it by path, since busybox sh prefers
                # its own applets to PATH)
                c.tree(stage)
                c.file("init", GUEST / "init.sh", 0o755)
                c.tree(GUEST / "scenarios", "scenarios")
                c.close()
        _write_atomic(out, fill)
        manifest_path.write_text(json.dumps(sorted(manifest), indent=1))
        _prune("base-", key)
        if trace["errors"]:
            (CACHE / f"base-{key}.trace-errors.txt").write_text("\n".join(trace["errors"]))
    return Built(out, key, sorted(manifest))


def build_payload(kernel: Path | None = None) -> Path:
    """Uncompressed archive: /boot/vmlinuz (the kernel to kexec) and
    /boot/stage2.cpio.gz (its initramfs)."""
    kernel = kernel or default_kernel()
    stage2 = build_stage2()
    key = _hash([Path(__file__).read_bytes(), _stat_key(kernel), stage2.name])
    out = CACHE / f"payload-{key}.cpio"
    if not out.exists():
        def fill(f: BinaryIO) -> None:
            c = Cpio(f)
            c.file("boot/vmlinuz", kernel, 0o644)
            c.file("boot/stage2.cpio.gz", stage2, 0o644)
            c.close()
        _write_atomic(out, fill)
        _prune("payload-", key)
    return out


def build_extra(files: Mapping[str, Path | bytes]) -> Path | None:
    """Uncompressed archive of a scenario's extra files: guest path -> host
    path or contents."""
    if not files:
        return None
    parts: list[str | bytes] = [Path(__file__).read_bytes()]
    for g, src in sorted(files.items()):
        parts += [g, src if isinstance(src, bytes) else _stat_key(Path(src))]
    key = _hash(parts)
    out = CACHE / f"extra-{key}.cpio"
    if not out.exists():
        def fill(f: BinaryIO) -> None:
            c = Cpio(f)
            for g, src in sorted(files.items()):
                c.file(g, src if isinstance(src, bytes) else Path(src))
            c.close()
        _write_atomic(out, fill)
        _prune("extra-", key, n=6)
    return out


def build_initrd(kernel: Path | None = None,
                 extra_files: Mapping[str, Path | bytes] | None = None) -> Path:
    """The one file given to QEMU's -initrd: base + payload (+ extra), each
    starting on a 4-byte boundary (VM-TESTING.md pitfall 1)."""
    pieces = [build_base().path, build_payload(kernel)]
    extra = build_extra(extra_files or {})
    if extra is not None:
        pieces.append(extra)
    key = _hash([p.name for p in pieces])
    out = CACHE / f"initrd-{key}.img"
    if not out.exists():
        def fill(f: BinaryIO) -> None:
            for p in pieces:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write(b"\0" * (-f.tell() % 4))
        _write_atomic(out, fill)
        _prune("initrd-", key)
    return out


# --- the serial log --------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One ``step NAME CMD...`` of a guest script."""

    name: str
    rc: int
    out_lines: list[str]
    err_lines: list[str]

    @property
    def out(self) -> str:
        return "".join(line + "\n" for line in self.out_lines)

    @property
    def err(self) -> str:
        return "".join(line + "\n" for line in self.err_lines)

    def json(self) -> object:
        return json.loads(self.out)

    def __str__(self) -> str:
        return f"step {self.name}: rc={self.rc}\nstdout:\n{self.out}stderr:\n{self.err}"


@dataclasses.dataclass
class Timing:
    """One ``timed LABEL CMD...`` of a guest script (guest wall clock)."""

    label: str
    seconds: float
    rc: int


@dataclasses.dataclass
class SerialLog:
    """The serial console of one boot, parsed."""

    scenario: str
    path: Path
    #: (host seconds since QEMU started, line without CR/LF)
    lines: list[tuple[float, str]]
    #: QEMU's exit status (124 from timeout(1) when it hung)
    status: int
    duration: float
    qemu_stderr: str
    command: list[str]
    steps: dict[str, Step] = dataclasses.field(default_factory=dict)
    timings: list[Timing] = dataclasses.field(default_factory=list)
    stage2: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        return self.status in (124, 137)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 80) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def first(self, prefix: str) -> tuple[float, str] | None:
        """The first line that starts with ``prefix``, with its time."""
        for t, line in self.lines:
            if line.startswith(prefix):
                return t, line
        return None

    def at(self, prefix: str) -> float | None:
        hit = self.first(prefix)
        return None if hit is None else hit[0]

    def fatal(self) -> list[str]:
        return [line for _, line in self.lines if line.startswith("@@FATAL")]

    def step(self, name: str) -> Step:
        try:
            return self.steps[name]
        except KeyError:
            how = "timed out" if self.timed_out else f"exited with status {self.status}"
            raise AssertionError(f"no step {name!r} in {self.path} (QEMU {how} after "
                                 f"{self.duration:.0f} s); the log ends with:\n"
                                 f"{self.tail()}") from None

    def times(self, label: str) -> list[float]:
        return [t.seconds for t in self.timings if t.label == label]

    def milestones(self) -> dict[str, float]:
        """Host seconds since QEMU start of the points a boot passes, in order:
        linux (first kernel's banner), init, exec or crash, stage2_linux (the
        second banner: the kexec'd kernel), stage2_init, done, end."""
        out: dict[str, float] = {}
        for k, prefix in (("init", "@@INIT"), ("exec", "@@EXEC"), ("crash", "@@CRASH"),
                          ("stage2_init", "@@STAGE2 uptime"), ("done", "@@DONE")):
            t = self.at(prefix)
            if t is not None:
                out[k] = round(t, 2)
        # the banner follows the console's escape codes on the first kernel's line
        banners = [t for t, line in self.lines if "] Linux version " in line]
        for k, t in zip(("linux", "stage2_linux"), banners[:2], strict=False):
            out[k] = round(t, 2)
        out["end"] = round(self.duration, 2)
        return dict(sorted(out.items(), key=lambda kv: kv[1]))

    def summary(self) -> str:
        return (f"{self.scenario}: qemu status {self.status}, {self.duration:.1f} s, "
                f"{len(self.steps)} steps, milestones {self.milestones()}")


_STEP = re.compile(r"@@STEP (\S+) rc=(\d+)")
_OUT = re.compile(r"@@([OE]) ([^|\s]+)\|(.*)")
_TIME = re.compile(r"@@TIME (\S+) t0=([\d.]+) t1=([\d.]+) rc=(\d+)")
_STAGE2 = re.compile(r"@@STAGE2 (\w+)=(.*)")


def parse(log: SerialLog) -> SerialLog:
    """Fill ``steps``, ``timings`` and ``stage2`` from ``lines``.

    Only lines with a ``@@`` prefix count, so kernel messages interleaved
    with a step's output are skipped."""
    for _, line in log.lines:
        if m := _STEP.match(line):
            log.steps[m[1]] = Step(m[1], int(m[2]), [], [])
        elif m := _OUT.match(line):
            st = log.steps.get(m[2])
            if st is not None:
                (st.out_lines if m[1] == "O" else st.err_lines).append(m[3])
        elif m := _TIME.match(line):
            log.timings.append(Timing(m[1], round(float(m[3]) - float(m[2]), 2), int(m[4])))
        elif m := _STAGE2.match(line):
            log.stage2.setdefault(m[1], m[2])
    return log


# --- running QEMU ----------------------------------------------------------------------


def accel() -> str:
    """TCG: this machine's /dev/kvm hangs guests (VM-TESTING.md); override
    with KEXEC_PY_VM_ACCEL=kvm where KVM is real."""
    return os.environ.get("KEXEC_PY_VM_ACCEL", "tcg")


def boot(name: str, kernel: Path, initrd: Path, cmdline: str, memory: int = 512,
         smp: int = 1, timeout: int = DEFAULT_TIMEOUT,
         qemu_args: Sequence[str] = ()) -> SerialLog:
    """Boot QEMU until the guest powers off, panics, or ``timeout`` seconds
    pass; the serial console goes to .cache/logs/NAME.log with host times.
    ``qemu_args`` are added to QEMU's command line (a -drive, say)."""
    cmd = ["timeout", "-k", "5", str(timeout), QEMU, "-accel", accel(), "-m", str(memory),
           "-smp", str(smp), "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
           "-kernel", str(kernel), "-initrd", str(initrd), *qemu_args, "-append", cmdline]
    logdir = CACHE / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"{name}.log"
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryFile() as errf, open(path, "w") as logf:
        logf.write(f"# {' '.join(cmd)}\n")
        t0 = time.monotonic()
        with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=errf) as proc:
            assert proc.stdout is not None
            for raw in _lines(proc.stdout):
                t = time.monotonic() - t0
                line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                lines.append((t, line))
                logf.write(f"[{t:8.3f}] {line}\n")
                logf.flush()
            status = proc.wait()
        duration = time.monotonic() - t0
        errf.seek(0)
        qerr = errf.read().decode("utf-8", "replace")
        logf.write(f"# qemu exit status {status} after {duration:.2f} s\n")
        if qerr:
            logf.write("# qemu stderr:\n" + qerr)
    return parse(SerialLog(name, path, lines, status, duration, qerr, cmd))


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    while raw := f.readline():
        yield raw


def run_scenario(name: str, *, kernel: Path | None = None, payload_kernel: Path | None = None,
                 memory: int = 512, smp: int = 1, append: str = "",
                 params: Mapping[str, str] | None = None,
                 extra_files: Mapping[str, Path | bytes] | None = None,
                 timeout: int = DEFAULT_TIMEOUT, log_name: str | None = None) -> SerialLog:
    """Boot ``kernel`` (default: the newest /boot/vmlinuz-*) and run
    guest/scenarios/NAME.sh in it.

    ``payload_kernel`` becomes /boot/vmlinuz in the guest (default: the same
    kernel); ``params`` become ``kexec_py.KEY=VALUE`` on the command line,
    ``append`` is added verbatim (e.g. ``crashkernel=256M``);
    ``extra_files`` maps guest paths to host files or contents.
    """
    if not (GUEST / "scenarios" / f"{name}.sh").exists():
        raise HarnessError(f"no scenario {name}: write {GUEST / 'scenarios' / name}.sh")
    kernel = kernel or default_kernel()
    initrd = build_initrd(payload_kernel or kernel, extra_files)
    words = ["console=ttyS0", "panic=-1", f"kexec_py.scenario={name}"]
    words += [f"kexec_py.{k}={v}" for k, v in (params or {}).items()]
    if append:
        words.append(append)
    log = boot(log_name or name, kernel, initrd, " ".join(words), memory, smp, timeout)
    if log.fatal():
        raise HarnessError(f"{name}: the guest gave up: {log.fatal()}; log {log.path}")
    return log


#: what tests measured in this process, in order (see record())
RESULTS: list[dict[str, object]] = []


def record(topic: str, line: str, **data: object) -> None:
    """Keep a measured number for the report: printed, appended to RESULTS
    (shown by conftest at the end of the run) and written to
    .cache/results.json.  Never asserted on."""
    RESULTS.append({"topic": topic, "line": line, **data})
    path = CACHE / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "results": RESULTS}, indent=1) + "\n")
    print(line)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run one kexec-py VM scenario")
    ap.add_argument("scenario")
    ap.add_argument("-m", "--memory", type=int, default=512)
    ap.add_argument("--append", default="")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT)
    ap.add_argument("--build-only", action="store_true")
    a = ap.parse_args(argv)
    if a.build_only:
        t = time.monotonic()
        print(build_initrd(), f"{time.monotonic() - t:.1f} s")
        return 0
    params = dict(p.split("=", 1) for p in a.param)
    log = run_scenario(a.scenario, memory=a.memory, append=a.append, params=params,
                       timeout=a.timeout)
    print(log.summary())
    for st in log.steps.values():
        print(f"  {st.name}: rc={st.rc}")
    for tm in log.timings:
        print(f"  TIME {tm.label} {tm.seconds:.2f}s rc={tm.rc}")
    print(f"  stage2: {log.stage2}")
    print(f"log: {log.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What planning a kernel load costs beyond interpreter start-up.

Plans a bzImage + a 30 MB initrd for kexec_load (``kexec-py load -c ...
--dry-run --json``, the linux backend on a fake /proc+/sys tree of a 512 MiB
QEMU guest) and reports the median wall time next to ``python3 -c pass``,
``kexec-py --version`` and the same command with ``-s`` (kexec_file_load:
no planning); then, in-process, the planning function alone.  The kernel
is Debian's /boot/vmlinuz-* when present, else a synthesized bzImage of
the same size; the initrd is a 30 MB sparse file (mmap'd, never read into
Python bytes).

    python bench/bench_plan.py [--runs N] [--kernel PATH]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

MEMMAP = [(0x0, 0x9FBFF, "System RAM"), (0x9FC00, 0x9FFFF, "Reserved"),
          (0xF0000, 0xFFFFF, "Reserved"), (0x100000, 0x1FFDFFFF, "System RAM"),
          (0x1FFE0000, 0x1FFFFFFF, "Reserved"), (0xFFFC0000, 0xFFFFFFFF, "Reserved")]


#: byte-compiled modules, as an installed package has them (a warm-up run
#: writes __pycache__; PYTHONDONTWRITEBYTECODE would make every run compile)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str], runs: int) -> float:
    times = []
    subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, check=False)  # warm-up
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.decode()}")
    return statistics.median(times)


def fake_root(d: Path) -> Path:
    (d / "proc").mkdir(parents=True)
    (d / "sys/kernel").mkdir(parents=True)
    (d / "proc/cmdline").write_text("console=ttyS0\n")
    (d / "proc/iomem").write_text("".join(f"{s:08x}-{e:08x} : {k}\n" for s, e, k in MEMMAP))
    (d / "sys/kernel/kexec_loaded").write_text("0\n")
    for i, (s, e, k) in enumerate(MEMMAP):
        m = d / f"sys/firmware/memmap/{i}"
        m.mkdir(parents=True)
        (m / "start").write_text(f"{s:#x}\n")
        (m / "end").write_text(f"{e:#x}\n")
        (m / "type").write_text(k + "\n")
    return d


def kernel_path(tmp: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if found:
        return Path(found[-1])
    from kernelgen import make_bzimage  # type: ignore[import-not-found]

    k = tmp / "bzImage"
    k.write_bytes(make_bzimage(init_size=0x3F98000, payload_size=0x7D8000))
    return k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--kernel")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        root = fake_root(tmp / "root")
        kernel = kernel_path(tmp, args.kernel)
        initrd = tmp / "initrd.img"
        with open(initrd, "wb") as f:
            f.truncate(30 * 1000 * 1000)
        common = [py, "-m", "kexec_py", "--backend", "linux", "--root", str(root), "--json",
                  "load"]
        files = [str(kernel), "--initrd", str(initrd), "--append", "console=ttyS0 quiet",
                 "--dry-run"]
        base = wall([py, "-c", "pass"], args.runs)
        rows = [
            ("python3 -c pass", base),
            ("kexec-py --version", wall([py, "-m", "kexec_py", "--version"], args.runs)),
            ("load -s --dry-run --json", wall([*common, "-s", *files], args.runs)),
            ("load -c --dry-run --json", wall([*common, "-c", *files], args.runs)),
        ]
        from kexec_py.boundary.backends.linux import LinuxBackend
        from kexec_py.load import execute, request

        be = LinuxBackend(root)
        req = request.LoadRequest(kernel=kernel, initrd=initrd, cmdline="console=ttyS0 quiet",
                                 syscall="load")
        execute.plan_kexec_load(be, req, bytes(32))  # warm the imports
        inproc = []
        for _ in range(max(args.runs, 50)):
            t0 = time.perf_counter()
            plan = execute.plan_kexec_load(be, req, os.urandom(32))
            inproc.append(time.perf_counter() - t0)
        segs = plan.segments
    print(f"kernel {kernel} ({kernel.stat().st_size} bytes), initrd 30,000,000 bytes (sparse), "
          f"{len(segs)} segments")
    print(f"{'command':<28} {'median ms':>10} {'x python -c pass':>17} {'beyond start-up':>16}")
    for name, t in rows:
        print(f"{name:<28} {t * 1000:>10.1f} {t / base:>17.2f} {(t - base) * 1000:>13.1f} ms")
    print(f"{'plan_kexec_load() in-process':<28} {statistics.median(inproc) * 1000:>10.2f}")


if __name__ == "__main__":
    main()

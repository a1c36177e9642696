"""Start-up cost of the commands initramfs scripts call most.

Reports the median wall time of ``kexec-py --version`` and ``kexec-py
status`` (model-free: the linux backend on a fake /proc+/sys tree) as a
ratio to ``python3 -c pass`` with the same interpreter.

    python bench/bench_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fake_root(d: Path) -> Path:
    for rel, text in {
        "sys/kernel/kexec_loaded": "0\n", "sys/kernel/kexec_crash_loaded": "0\n",
        "sys/kernel/kexec_crash_size": "0\n", "proc/cmdline": "console=ttyS0\n",
        "proc/iomem": "00001000-0009fbff : System RAM\n00100000-1ffdffff : System RAM\n",
    }.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = fake_root(Path(tmp))
        base = wall([py, "-c", "pass"], args.runs)
        rows = [
            ("python3 -c pass", base),
            ("kexec-py --version", wall([py, "-m", "kexec_py", "--version"], args.runs)),
            ("kexec-py status", wall([py, "-m", "kexec_py", "--backend", "linux", "--root",
                                      str(root), "status"], args.runs)),
            ("kexec-py status --json", wall([py, "-m", "kexec_py", "--backend", "linux",
                                             "--root", str(root), "--json", "status"],
                                            args.runs)),
        ]
    print(f"{'command':<26} {'median ms':>10} {'x python -c pass':>17}")
    for name, t in rows:
        print(f"{name:<26} {t * 1000:>10.1f} {t / base:>17.2f}")


if __name__ == "__main__":
    main()

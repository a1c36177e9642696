"""Parsing /proc/kexec_pgmap, and what a staged load does with it.

Generates the kernel's text for 1,048,576 pages (4 GiB of destinations,
sources shuffled as a real allocator leaves them), then reports the median
wall time of:

- ``procfs.parse_pgmap`` (goal: <= 0.5 s),
- ``backupmap.validate_pgmap`` against the segments it describes,
- ``backupmap.build_raw`` and the elfcorehdr run grouping (``moved_runs``).

    python bench/bench_pgmap.py [--lines N] [--runs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kexec_py.boundary.procfs import PageMap, parse_pgmap  # noqa: E402
from kexec_py.hibernate import window as backupmap  # noqa: E402
from kexec_py.segments import Segment  # noqa: E402

GOAL_PARSE = 0.5


def pgmap_text(n: int, seed: int = 1) -> tuple[bytes, list[Segment]]:
    """The text for ``n`` destination pages from 1 MiB on, each moved to a
    source page above them, in a shuffled (hash-table) order."""
    base = 0x100
    dst = list(range(base, base + n))
    src = list(range(base + n + 0x1000, base + 2 * n + 0x1000))
    rnd = random.Random(seed)
    rnd.shuffle(src)
    order = list(range(n))
    rnd.shuffle(order)
    text = "".join(f"0x{dst[i]:016x}\t0x{src[i]:016x}\n" for i in order).encode()
    return text, [Segment(base << 12, n << 12, 0, None, "all")]


def median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1 << 20)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    text, segs = pgmap_text(args.lines)
    pm: PageMap = parse_pgmap(text)
    assert len(pm) == args.lines and isinstance(pm.dst, array)
    t_parse = median_time(lambda: parse_pgmap(text), args.runs)
    t_valid = median_time(lambda: backupmap.validate_pgmap(pm, segs), max(1, args.runs // 2))
    t_raw = median_time(lambda: backupmap.build_raw(pm), max(1, args.runs // 2))
    t_runs = median_time(lambda: backupmap.moved_runs(pm), max(1, args.runs // 2))
    print(f"pgmap: {args.lines} lines, {len(text) / 1e6:.1f} MB of text")
    print(f"parse_pgmap:    {t_parse:.3f} s  (goal <= {GOAL_PARSE} s: "
          f"{'met' if t_parse <= GOAL_PARSE else 'MISSED'})")
    print(f"validate_pgmap: {t_valid:.3f} s")
    print(f"build_raw:      {t_raw:.3f} s")
    print(f"moved_runs:     {t_runs:.3f} s")


if __name__ == "__main__":
    main()

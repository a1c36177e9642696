"""Resume of a large hibernation image on the model, content copying off.

Writes a sparse 4 GiB image with 100,000 PT_LOADs (40 KiB of memory each,
a gap page between them so that none coalesce; data only in the first
bytes of each, the rest holes), then, in a fresh process, measures
``kexec-py resume``'s work on the model backend with ``copy_contents``
off: parsing the image, planning the stages, and running every
kexec_load call against the model.  Reports wall times and the peak RSS
of that process (goal: <= 2 s and <= 200 MB).

    python bench/bench_resume.py [--loads N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kexec_py.memmap import MemoryMap

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL_SECONDS = 2.0
GOAL_RSS_MB = 200
LOAD_MEM = 44 << 10
STRIDE = LOAD_MEM + 4096
BASE = 0x100000
ENTRY = 0x1000000


def write_image(path: Path, n: int) -> int:
    """The image; returns its file size."""
    from kexec_py.formats.corewriter import CoreLoad, write_core
    from kexec_py.formats.vmcore import KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK

    def chunks(i: int) -> Callable[[], Iterator[tuple[int, bytes]]]:
        def gen() -> Iterator[tuple[int, bytes]]:
            yield 0, f"load {i}".encode()
        return gen

    loads = [CoreLoad(BASE + i * STRIDE, LOAD_MEM, chunks(i)) for i in range(n)]
    notes = [(KEXEC_PY_NOTE, NT_KEXEC_PY_JUMP_BACK, ENTRY.to_bytes(8, "little"))]
    return write_core(path, loads, notes).file_size


class NullKernel:
    """A backend that takes every call and keeps nothing: what is left is
    kexec-py's own cost (parse, plan, the executor)."""

    name = "null"
    root = Path("/")

    def __init__(self, regions: MemoryMap) -> None:
        self.regions = regions
        self.calls = 0
        self.loaded = False

    def kexec_load(self, entry: int, segments: list[object], flags: int) -> None:
        assert len(segments) <= 16
        self.calls += 1
        self.loaded = bool(segments)

    def memory_map(self) -> MemoryMap:
        return self.regions

    def total_ram(self) -> int | None:
        return None

    def staged_supported(self) -> bool:
        return True

    def status(self) -> object:
        return type("S", (), {"loaded": self.loaded})()

    def close(self) -> None:
        pass


def measure(image: Path, kind: str) -> dict[str, float | int]:
    """Runs in the child: resume ``image`` on a model without content (or
    on the null kernel)."""
    from kexec_py.boundary.backends.model import ModelBackend
    from kexec_py.formats.vmcore import open_core
    from kexec_py.hibernate import resume
    from kexec_py.load import staging
    from kexec_py.model.config import ModelConfig, pc_layout

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        be: Any
        if kind == "null":
            be = NullKernel(pc_layout(8 << 30))
        else:
            be = ModelBackend(Path(root), persist=False, copy_contents=False,
                              config=ModelConfig(regions=pc_layout(8 << 30), collide=0.0))
            be.memory_map()  # the model boots before the clock matters
        t1 = time.perf_counter()
        with open_core(image) as img:
            t2 = time.perf_counter()
            sp = resume.plan_resume(be, img, staged="auto")
            t3 = time.perf_counter()
            res = staging.execute(be, sp)
            t4 = time.perf_counter()
            loaded = bool(be.status().loaded)
            calls, loads = res.calls, len(img.loads)
            del sp, res
        be.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"boot_model": t1 - t0, "parse": t2 - t1, "plan": t3 - t2, "load": t4 - t3,
            "resume": t4 - t1, "calls": calls, "loads": loads, "loaded": int(loaded),
            "peak_rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loads", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, help="write the image here and keep it")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.kind)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = (args.keep or Path(tmp)) / "bench-resume.img"
        t0 = time.perf_counter()
        size = write_image(path, args.loads)
        t_write = time.perf_counter() - t0
        used = os.stat(path).st_blocks * 512
        results = {}
        for kind in ("null", "model"):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--kind",
                                  kind], check=True, capture_output=True, text=True)
            results[kind] = json.loads(out.stdout)
    n, r = results["null"], results["model"]
    print(f"image: {args.loads} PT_LOADs, {size / 2**30:.2f} GiB file ({used / 2**20:.1f} MiB "
          f"on disk), {args.loads * LOAD_MEM / 2**30:.2f} GiB of memory; written in "
          f"{t_write:.2f} s")
    print(f"kexec-py alone (a kernel that takes every call and keeps nothing): "
          f"{n['resume']:.2f} s (parse {n['parse']:.2f}, plan {n['plan']:.2f}, "
          f"{n['calls']} calls {n['load']:.2f}); peak RSS {n['peak_rss_mb']:.0f} MB")
    print(f"resume on the model (copy_contents off): {r['resume']:.2f} s "
          f"(parse {r['parse']:.2f}, plan {r['plan']:.2f}, {r['calls']} kexec_load calls "
          f"{r['load']:.2f}); loaded: {bool(r['loaded'])}")
    print(f"peak RSS on the model: {r['peak_rss_mb']:.0f} MB")
    for what, x in (("kexec-py alone", n), ("on the model", r)):
        ok_t = x["resume"] <= GOAL_SECONDS
        ok_m = x["peak_rss_mb"] <= GOAL_RSS_MB
        print(f"goals, {what}: <= {GOAL_SECONDS} s {'met' if ok_t else 'MISSED'}, "
              f"<= {GOAL_RSS_MB} MB {'met' if ok_m else 'MISSED'}")


if __name__ == "__main__":
    main()

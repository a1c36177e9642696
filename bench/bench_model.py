"""The model backend under a hibernation-sized load.

A staged load of ``--pages`` pages (default 262,144 = 1 GiB) into a 4 GiB
model machine: 256 segments scattered over all of RAM, 16 per call
(KS_start, 15 KS_mid), with the allocator offering destination pages
first a quarter of the time (collisions: pages in place, swaps,
re-homing), and a KS_final that overwrites a page of KS_start (the same
source page, as a parameter segment does).  Then execution.  Prints wall
time per phase, peak RSS, and what the allocator did.

    python bench/bench_model.py                 # pages and maps only (copy_contents=False)
    python bench/bench_model.py --contents      # bytes too, from an mmap'd image file
    python bench/bench_model.py --scale         # 64Ki, 128Ki, 256Ki pages: RSS per page
    python bench/bench_model.py --preserve      # kexec jump: swap instead of copy

Goal (issue 4): the 1 GiB load plus execution within 10 s, memory
proportional to the pages touched.  Peak RSS is ru_maxrss; with
--contents the model's memory is a file in /dev/shm (page cache, not
RSS) and the image file's pages that were read count in RSS.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kexec_py.boundary.abi import KEXEC_PRESERVE_CONTEXT, PAGE_SIZE, Stage, stage_flags  # noqa: E402
from kexec_py.boundary.backends.model import ModelBackend  # noqa: E402
from kexec_py.model.config import ModelConfig, pc_layout  # noqa: E402
from kexec_py.segments import Segment  # noqa: E402

RAM = 4 << 30
NSEG = 256


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(pages: int, contents: bool, preserve: bool) -> dict[str, float | int | str]:
    per = pages // NSEG
    stride = (RAM - (32 << 20)) // NSEG // PAGE_SIZE * PAGE_SIZE
    mems = [(16 << 20) + i * stride for i in range(NSEG)]
    base_rss = rss_mib()
    image = None
    view: memoryview | None = None
    if contents:
        # the image file, as a hibernation image would be: every page tagged
        image = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        chunk = bytearray(per * PAGE_SIZE)
        for i in range(NSEG):
            for k in range(per):
                chunk[k * PAGE_SIZE:k * PAGE_SIZE + 8] = (i * per + k).to_bytes(8, "little")
            image.write(chunk)
        image.flush()
        mm = mmap.mmap(image.fileno(), per * PAGE_SIZE * NSEG, access=mmap.ACCESS_READ)
        view = memoryview(mm)
    segs = []
    for i, m in enumerate(mems):
        buf = view[i * per * PAGE_SIZE:(i + 1) * per * PAGE_SIZE] if view is not None else None
        segs.append(Segment(m, per * PAGE_SIZE, per * PAGE_SIZE if buf is not None else 0, buf))
    cfg = ModelConfig(regions=pc_layout(RAM), seed=1, collide=0.25)
    b = ModelBackend(Path("/nonexistent"), persist=False, copy_contents=contents, config=cfg)
    flags = KEXEC_PRESERVE_CONTEXT if preserve else 0
    # KS_final rewrites the first page of the first segment (a parameter)
    calls = [segs[i:i + 16] for i in range(0, NSEG, 16)]
    calls.append([Segment(mems[0], PAGE_SIZE, 8, b"PARAM!!!")])
    t0 = time.perf_counter()
    for j, call in enumerate(calls):
        stage = Stage.START if j == 0 else Stage.FINAL if j == len(calls) - 1 else Stage.MID
        b.kexec_load(mems[0], call, flags | stage_flags(stage))
    t1 = time.perf_counter()
    img = b.image("kexec")
    assert img is not None
    summary = img.summary()
    b.reboot_kexec()
    t2 = time.perf_counter()
    if contents:
        assert b.read_phys(mems[0], 8) == b"PARAM!!!"
        assert int.from_bytes(b.read_phys(mems[-1] + PAGE_SIZE, 8), "little") == \
            (NSEG - 1) * per + 1
    out: dict[str, float | int | str] = {
        "pages": pages, "contents": int(contents), "preserve": int(preserve),
        "load_s": round(t1 - t0, 3), "exec_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3), "peak_rss_mib": round(rss_mib(), 1),
        "rss_growth_mib": round(rss_mib() - base_rss, 1),
        "in_place": summary["in_place"], "mapped": summary["mapped"],
        "indirection_pages": summary["indirection_pages"],
        "relocated": b.last_jump.pages if b.last_jump else 0,
    }
    b.close()
    if view is not None:
        view.release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=262144)
    ap.add_argument("--contents", action="store_true")
    ap.add_argument("--preserve", action="store_true")
    ap.add_argument("--scale", action="store_true",
                    help="run 65536, 131072 and 262144 pages, each in a fresh process")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.scale:
        rows = []
        for n in (65536, 131072, 262144):
            cmd = [sys.executable, __file__, "--pages", str(n), "--json"]
            cmd += ["--contents"] if args.contents else []
            cmd += ["--preserve"] if args.preserve else []
            rows.append(json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                                  check=True).stdout))
        for r in rows:
            per_page = float(r["rss_growth_mib"]) * (1 << 20) / int(r["pages"])
            print(f"{r['pages']:>7} pages: load {r['load_s']:6.2f} s  exec {r['exec_s']:5.2f} s"
                  f"  peak RSS {r['peak_rss_mib']:7.1f} MiB  growth {r['rss_growth_mib']:7.1f}"
                  f" MiB = {per_page:5.0f} bytes/page")
        return
    r = run(args.pages, args.contents, args.preserve)
    if args.json:
        print(json.dumps(r))
        return
    goal = "within" if float(r["total_s"]) <= 10 else "OVER"
    print(f"staged load of {r['pages']} pages ({int(r['pages']) * PAGE_SIZE >> 20} MiB), "
          f"{'bytes copied' if args.contents else 'pages and maps only'}, "
          f"{'preserve context (swap)' if args.preserve else 'copy'}:")
    print(f"  load {r['load_s']} s, exec {r['exec_s']} s, total {r['total_s']} s "
          f"({goal} the 10 s goal)")
    print(f"  peak RSS {r['peak_rss_mib']} MiB (grew {r['rss_growth_mib']} MiB during the run)")
    print(f"  {r['in_place']} pages in place, {r['mapped']} through source pages, "
          f"{r['indirection_pages']} indirection pages, {r['relocated']} pages relocated")


if __name__ == "__main__":
    main()

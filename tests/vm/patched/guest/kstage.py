"""Kernel-side checks of the multi-stage kexec_load (kernel/patches/), run in
the QEMU guest as root.

The calls are raw: ``syscall(246, ...)`` through the cffi declarations of
kexec_py/boundary/_kexec_ffi.py, with the stage in bits 2-3 of the flags; nothing of
kexec-py's staged loader is used.  What the kernel did is read back from
/proc/kexec_pgmap, /sys/kernel/kexec_loaded and, through /dev/mem, from the
source pages themselves.

Commands (one per guest step):

  synthetic        staged loads of synthetic segments: the map between
                   stages, overlap across stages, re-homing of earlier
                   source pages, failures that drop the load, the state
                   machine, more than half of RAM in stages
  stock            on a kernel without the patches: stage bits refused
  jump classic     one preserve-context segment (a ``ret``) on a page of
                   this process, jump there and back: the code ran, and the
                   page it borrowed is ours again
  jump staged      the same loaded in stages, the code above this kernel's
                   RAM in KS_start only (boot with mem=): the identity map
                   must cover the destinations of every stage
  pgmap            the map of whatever is loaded parses
  load MARKER      staged load of /boot/vmlinuz + /boot/stage2.cpio.gz in
                   KS_start, two KS_mid, KS_final (segments from kexec-py's
                   kexec_load planner, split and reordered here)
  exec             reboot(LINUX_REBOOT_CMD_KEXEC)
  mkjump OUT ADDR  a one-page ELF of that code at ADDR, for kexec-py
  jump-check PFN N after kexec-py loaded /patched/jump.elf and jumped N times:
                   the code at PFN ran N times
  kpy-failed-mid BEFORE
                   kexec-py's executor with a KS_mid the kernel refuses;
                   BEFORE (0 or 1) is /sys/kernel/kexec_loaded before and after
  kpy-interrupted BEFORE
                   kexec-py's executor interrupted by SIGINT after KS_start
                   and by SIGTERM after KS_mid; loaded as before, the same
  kpy-stages CORE ENTRY
                   kexec-py's resume of CORE, ``kexec-py pgmap`` between
                   stages
  mkcore OUT MARKER N
                   the same kernel as an ELF core of N PT_LOADs, for
                   ``kexec-py resume`` (a load of many segments); prints
                   the entry

Output: ``check NAME: ok`` or ``check NAME: FAIL detail`` per check,
``time LABEL SECONDS`` per timed call, ``info ...`` lines; the exit status
is 1 when a check failed.
"""

import errno
import mmap
import os
import re
import struct
import sys
import time
from pathlib import Path

from kexec_py.boundary._kexec_ffi import ffi

lib = ffi.dlopen(None)

PAGE = 4096
ZERO = bytes(PAGE)
NR_KEXEC_LOAD = 246
NR_REBOOT = 169
ARCH_X86_64 = 62 << 16
ON_CRASH = 0x1
PRESERVE_CONTEXT = 0x2
FULL, START, MID, FINAL = 0, 1, 2, 3
STAGE_NAMES = {FULL: "full", START: "start", MID: "mid", FINAL: "final"}
PGMAP = "/proc/kexec_pgmap"
LINE = re.compile(rb"0x([0-9a-f]{16})\t0x([0-9a-f]{16})\n")

failures = []


def check(name, ok, detail=""):
    if ok:
        print(f"check {name}: ok", flush=True)
    else:
        print(f"check {name}: FAIL {detail}", flush=True)
        failures.append(name)
    return ok


def info(text):
    print(f"info {text}", flush=True)


# --- the system calls ------------------------------------------------------------------


class Seg:
    """A segment: ``data`` (bytes-like, or None for zeros) at ``mem``;
    ``bad_buf`` passes an unmapped user pointer instead of the data."""

    def __init__(self, mem, memsz, data=None, bad_buf=False):
        self.mem, self.memsz, self.data, self.bad_buf = mem, memsz, data, bad_buf

    @property
    def bufsz(self):
        if self.bad_buf:
            return PAGE
        return 0 if self.data is None else len(self.data)

    def pages(self):
        """{pfn: the page's bytes once loaded}: the data, then zeros."""
        out = {}
        data = bytes(self.data) if self.data is not None else b""
        for i in range(self.memsz // PAGE):
            chunk = data[i * PAGE:(i + 1) * PAGE]
            out[self.mem // PAGE + i] = chunk + bytes(PAGE - len(chunk)) if chunk else ZERO
        return out


def kexec_load(entry, segs, flags, stage=FULL, label=None):
    """Returns 0 or the errno; prints the time of the call under ``label``."""
    arr = ffi.new("struct kexec_segment[]", max(len(segs), 1))
    keep = []
    for i, s in enumerate(segs):
        if s.bad_buf:
            arr[i].buf = ffi.cast("void *", 0x10)
        elif s.data is not None and len(s.data):
            c = ffi.from_buffer(s.data)
            keep.append(c)
            arr[i].buf = c
        else:
            arr[i].buf = ffi.NULL
        arr[i].bufsz = s.bufsz
        arr[i].mem = s.mem
        arr[i].memsz = s.memsz
    ffi.errno = 0
    t0 = time.monotonic()
    rc = lib.syscall(ffi.cast("long", NR_KEXEC_LOAD), ffi.cast("unsigned long", entry),
                     ffi.cast("unsigned long", len(segs)), arr if segs else ffi.NULL,
                     ffi.cast("unsigned long", flags | ARCH_X86_64 | stage << 2))
    dt = time.monotonic() - t0
    err = 0 if rc == 0 else ffi.errno
    if label:
        print(f"time {label} {dt:.3f}", flush=True)
    del keep
    return err


def unload():
    return kexec_load(0, [], 0)


def reboot_kexec():
    ffi.errno = 0
    rc = lib.syscall(ffi.cast("long", NR_REBOOT), ffi.cast("unsigned int", 0xFEE1DEAD),
                     ffi.cast("unsigned int", 672274793), ffi.cast("unsigned int", 0x45584543),
                     ffi.NULL)
    return 0 if rc == 0 else ffi.errno


def ename(err):
    return errno.errorcode.get(err, str(err)) if err else "0"


def expect(name, err, want):
    return check(name, err == want, f"got {ename(err)}, expected {ename(want)}")


# --- what the kernel shows -------------------------------------------------------------


def loaded():
    return Path("/sys/kernel/kexec_loaded").read_text().strip()


def read_pgmap(label=None):
    """The bytes of /proc/kexec_pgmap, or the errno of open/read."""
    t0 = time.monotonic()
    try:
        with open(PGMAP, "rb") as f:
            data = f.read()
    except OSError as e:
        return e.errno
    if label:
        print(f"time {label} {time.monotonic() - t0:.3f}", flush=True)
    return data


def parse_pgmap(name, data):
    """{dst_pfn: src_pfn}; checks that every line has the seed's format."""
    out = {}
    pos = 0
    bad = None
    while pos < len(data):
        m = LINE.match(data, pos)
        if m is None:
            bad = data[pos:pos + 80]
            break
        out[int(m[1], 16)] = int(m[2], 16)
        pos = m.end()
    check(f"{name}/format", bad is None, f"unparsable line at byte {pos}: {bad!r}")
    dsts = [int(m[1], 16) for m in LINE.finditer(data)]
    check(f"{name}/sorted", dsts == sorted(set(dsts)), "destinations not strictly increasing")
    return out


def read_phys(pfn, dev):
    dev.seek(pfn * PAGE)
    return dev.read(PAGE)


def verify(name, model, sample=None):
    """Check /proc/kexec_pgmap against ``model`` ({dst pfn: bytes}, all pages
    loaded so far): every dst is a loaded page, no src is a destination, the
    srcs are distinct, and every page's contents (at its src, or at its dst
    when loaded in place) are what was loaded last.  ``sample`` limits the
    contents check to that many pages spread over the model."""
    data = read_pgmap(f"{name}/pgmap-read")
    if isinstance(data, int):
        check(f"{name}/pgmap-open", False, f"open/read failed: {ename(data)}")
        return {}
    pm = parse_pgmap(name, data)
    info(f"{name}: {len(pm)} pgmap lines, {len(model)} destination pages, "
         f"{len(model) - len(pm)} in place")
    stray = [d for d in pm if d not in model]
    check(f"{name}/dst-in-segments", not stray,
          f"{len(stray)} dst outside the loaded segments, first {stray[:3]}")
    in_dest = [s for s in pm.values() if s in model]
    check(f"{name}/src-not-destination", not in_dest,
          f"{len(in_dest)} src inside a destination, first {in_dest[:3]}")
    check(f"{name}/src-distinct", len(set(pm.values())) == len(pm), "a src page is shared")
    pages = sorted(model)
    if sample is not None and len(pages) > sample:
        step = len(pages) / sample
        pages = sorted({pages[int(i * step)] for i in range(sample)} | {pages[-1]})
    wrong = []
    with open("/dev/mem", "rb", buffering=0) as dev:
        for pfn in pages:
            if read_phys(pm.get(pfn, pfn), dev) != model[pfn]:
                wrong.append(pfn)
    check(f"{name}/contents", not wrong,
          f"{len(wrong)} of {len(pages)} pages differ, first dst pfns "
          f"{[hex(p) for p in wrong[:4]]}")
    return pm


def pattern(tag, size):
    """Page-distinct bytes: every 16-byte row names the tag and its offset."""
    rows = (f"{tag}:{off:010x}\n".encode()[:16].ljust(16, b".") for off in range(0, size, 16))
    return b"".join(rows)[:size]


def meminfo_total():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal")


# --- synthetic staged loads ---------------------------------------------------------------


class Staged:
    """A staged load and the model of what it loaded."""

    def __init__(self, name, entry, flags=0):
        self.name, self.entry, self.flags = name, entry, flags
        self.model = {}
        self.calls = 0

    def call(self, stage, segs, want=0):
        self.calls += 1
        tag = f"{self.name}/{self.calls}-{STAGE_NAMES[stage]}"
        err = kexec_load(self.entry, segs, self.flags, stage, tag)
        ok = expect(tag, err, want)
        if err == 0:
            for s in segs:
                self.model.update(s.pages())
        return ok


MB = 1 << 20


def synthetic():
    base = 0x08000000  # 128 MiB: RAM in the 512 MiB guest
    check("initially-unloaded", loaded() == "0", f"kexec_loaded={loaded()}")
    check("pgmap-enodev-without-image", read_pgmap() == errno.ENODEV,
          f"got {read_pgmap()!r:.40}")

    # 1. KS_start, KS_mid (overlap + re-homing), KS_mid (overlap), KS_final
    a = Staged("a", base)
    a.call(START, [Seg(base, 4 * PAGE, pattern("A", 4 * PAGE)),
                   Seg(base + 0x10000, 2 * PAGE, pattern("B", 0x1800))])
    check("a/start-not-loaded", loaded() == "0", "half-loaded image visible in kexec_loaded")
    pm = verify("a/after-start", a.model)
    # a later segment on a source page of KS_start: the kernel must move it
    rehome_src = next((s for s in sorted(pm.values())
                       if not base <= s * PAGE < base + 0x20000), None)
    mid1 = [Seg(base + 2 * PAGE, PAGE, pattern("C", PAGE)),        # inside A
            Seg(base + 0x100000, 8 * PAGE, pattern("D", 5 * PAGE))]
    if check("a/has-source-to-rehome", rehome_src is not None, f"pgmap {pm}"):
        mid1.append(Seg(rehome_src * PAGE, PAGE, pattern("R", PAGE)))
        info(f"re-homing test: KS_mid loads over source pfn {rehome_src:#x} "
             f"(dst {[hex(d) for d, s in pm.items() if s == rehome_src]})")
    a.call(MID, mid1)
    pm = verify("a/after-mid1", a.model)
    if rehome_src is not None:
        check("a/rehomed", rehome_src not in pm.values() and pm.get(rehome_src) in
              (None, rehome_src), f"pfn {rehome_src:#x} still a source")
    a.call(MID, [Seg(base + 0x10000, 3 * PAGE, pattern("E", 3 * PAGE))])  # over B, larger
    verify("a/after-mid2", a.model)
    check("a/mid-not-loaded", loaded() == "0", "half-loaded image visible")
    a.call(FINAL, [Seg(base + 0x200000, PAGE, pattern("F", 100)),
                   Seg(base + 3 * PAGE, PAGE, pattern("G", PAGE))])  # over A again
    check("a/final-loaded", loaded() == "1", f"kexec_loaded={loaded()}")
    verify("a/after-final", a.model)

    # 2. the state machine around an installed image
    expect("mid-after-final", kexec_load(base, [Seg(base, PAGE)], 0, MID), errno.EINVAL)
    check("mid-after-final/keeps-loaded", loaded() == "1", "the installed image was dropped")
    verify("a/still-installed", a.model)
    expect("final-after-final", kexec_load(base, [], 0, FINAL), errno.EINVAL)
    expect("crash-start", kexec_load(base, [Seg(base, PAGE)], ON_CRASH, START), errno.EINVAL)
    b = Staged("b", base + 0x1000000)
    b.call(START, [Seg(base + 0x1000000, 2 * PAGE, pattern("H", 2 * PAGE))])
    check("b/start-keeps-old-loaded", loaded() == "1", "the installed image was dropped")
    verify("b/pgmap-shows-staged", b.model)
    b.call(MID, [Seg(base + 0x1100000, PAGE, pattern("I", PAGE))])
    expect("b/preserve-context-mismatch",
           kexec_load(b.entry, [Seg(base + 0x1200000, PAGE)], PRESERVE_CONTEXT, MID),
           errno.EINVAL)
    expect("b/mid-after-drop", kexec_load(b.entry, [Seg(base + 0x1200000, PAGE)], 0, MID),
           errno.EINVAL)
    check("b/drop-keeps-old-loaded", loaded() == "1", "the installed image was dropped")
    verify("a/pgmap-back-to-installed", a.model)
    expect("unload", unload(), 0)
    check("unload/unloaded", loaded() == "0", f"kexec_loaded={loaded()}")
    check("unload/pgmap-enodev", read_pgmap() == errno.ENODEV, "pgmap still readable")

    # 3. a failed KS_mid drops the whole load: overlap inside one call
    c = Staged("c", base)
    c.call(START, [Seg(base, 2 * PAGE, pattern("J", 2 * PAGE))])
    verify("c/after-start", c.model)
    # nothing is installed: reboot(KEXEC) must not run the half-loaded image
    expect("c/exec-half-loaded", reboot_kexec(), errno.EINVAL)
    c.call(MID, [Seg(base + 0x40000, 4 * PAGE, pattern("K", PAGE)),
                 Seg(base + 0x42000, 4 * PAGE, pattern("L", PAGE))], want=errno.EINVAL)
    check("c/failed-mid/unloaded", loaded() == "0", f"kexec_loaded={loaded()}")
    check("c/failed-mid/pgmap-enodev", read_pgmap() == errno.ENODEV, "the map survived")
    expect("c/mid-after-failure", kexec_load(base, [Seg(base + 0x80000, PAGE)], 0, MID),
           errno.EINVAL)
    expect("c/final-after-failure", kexec_load(base, [], 0, FINAL), errno.EINVAL)
    check("c/still-unloaded", loaded() == "0", f"kexec_loaded={loaded()}")

    # failures before the load proper drop it too: too many segments, bad buffer
    for what, segs, want in (
            ("17-segments", [Seg(base + 0x100000 + i * PAGE, PAGE) for i in range(17)],
             errno.EINVAL),
            ("bad-buffer", [Seg(base + 0x100000, PAGE, bad_buf=True)], errno.EFAULT),
            ("unaligned", [Seg(base + 0x100800, PAGE)], errno.EADDRNOTAVAIL)):
        d = Staged(f"d-{what}", base)
        d.call(START, [Seg(base, PAGE, pattern("M", PAGE))])
        d.call(MID, segs, want=want)
        check(f"d-{what}/pgmap-enodev", read_pgmap() == errno.ENODEV, "the load survived")
        expect(f"d-{what}/final-after-failure", kexec_load(base, [], 0, FINAL), errno.EINVAL)

    # 4. more than half of RAM, in stages: one call may not, three may
    ram = meminfo_total()
    chunk = (ram * 18 // 100) // (2 * MB) * (2 * MB)
    big = [Seg(0x04000000 + i * chunk, chunk) for i in range(3)]
    info(f"RAM {ram >> 20} MiB, 3 segments of {chunk >> 20} MiB = "
         f"{3 * chunk * 100 // ram}% of RAM")
    expect("half-ram/full-refused", kexec_load(big[0].mem, big, 0, FULL), errno.EINVAL)
    e = Staged("half-ram", big[0].mem)
    e.call(START, [big[0]])
    e.call(MID, [big[1]])
    e.call(FINAL, [big[2]])
    check("half-ram/loaded", loaded() == "1", f"kexec_loaded={loaded()}")
    verify("half-ram/after-final", e.model, sample=64)
    expect("half-ram/unload", unload(), 0)


def stock():
    check("stock/no-pgmap", not Path(PGMAP).exists(), f"{PGMAP} exists")
    expect("stock/start-refused", kexec_load(0x08000000, [Seg(0x08000000, PAGE)], 0, START),
           errno.EINVAL)
    check("stock/unloaded", loaded() == "0", f"kexec_loaded={loaded()}")


# --- a kexec jump to a one-instruction image ------------------------------------------------

# incq counter(%rip); ret; counter at offset 0x10
JUMP_CODE = bytes.fromhex("48ff0509000000c3") + bytes(8)
COUNTER0 = 0x6b657865636a6d70


def jump_code_far(counter_addr):
    """movabs $counter_addr, %rax; incq (%rax); ret"""
    return bytes.fromhex("48b8") + struct.pack("<Q", counter_addr) + bytes.fromhex("48ff00c3")


def virt_to_pfn(addr):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        (entry,) = struct.unpack("<Q", f.read(8))
    if not entry >> 63 & 1:
        raise RuntimeError(f"page at {addr:#x} not present: {entry:#x}")
    return entry & ((1 << 55) - 1)


def ram_ends():
    """(end of System RAM in the firmware's map, end of this kernel's RAM)."""
    fw = 0
    for d in Path("/sys/firmware/memmap").iterdir():
        if (d / "type").read_text().strip() == "System RAM":
            fw = max(fw, int((d / "end").read_text(), 16) + 1)
    ours = 0
    for line in Path("/proc/iomem").read_text().splitlines():
        if not line.startswith(" ") and line.endswith(": System RAM"):
            ours = max(ours, int(line.split("-")[1].split()[0], 16) + 1)
    return fw, ours


def jump(variant):
    """Load JUMP_CODE with KEXEC_PRESERVE_CONTEXT, jump to it and back.

    classic: one KS_full segment on a page of this process, which the image
    borrows during the jump; the code counts in its own page.  staged:
    KS_start loads the counter above this kernel's RAM (boot with mem=), so
    that only the map of the earlier stages has it; KS_mid loads a zero
    placeholder on a page of this process and KS_final the code over it."""
    name = f"jump-{variant}"
    buf = mmap.mmap(-1, PAGE)
    marker = os.urandom(PAGE)
    buf[:] = marker
    addr = int(ffi.cast("unsigned long", ffi.from_buffer(buf)))
    pfn = virt_to_pfn(addr)
    image = JUMP_CODE + struct.pack("<Q", COUNTER0)
    if variant == "classic":
        code_pfn = pfn
        info(f"{name}: our page at {addr:#x} is pfn {pfn:#x}: the image goes there")
        err = kexec_load(pfn * PAGE, [Seg(pfn * PAGE, PAGE, image)], PRESERVE_CONTEXT, FULL,
                         f"{name}/load")
        if not expect(f"{name}/load", err, 0):
            return
        model = {pfn: image + bytes(PAGE - len(image))}
    else:
        fw_end, ram_end = ram_ends()
        info(f"{name}: firmware RAM ends at {fw_end:#x}, this kernel's at {ram_end:#x}")
        if not check(f"{name}/ram-above-kernel", fw_end >= ram_end + 4 * PAGE,
                     "boot the guest with mem= below its RAM size"):
            return
        # halfway: clear of the ACPI tables at the top, which are mapped too
        code_pfn = (ram_end + fw_end) // 2 // PAGE
        info(f"{name}: the counter goes to pfn {code_pfn:#x}, our page pfn {pfn:#x} "
             "gets a placeholder, then the code")
        code = jump_code_far(code_pfn * PAGE + 0x10)
        st = Staged(name, pfn * PAGE, PRESERVE_CONTEXT)
        st.call(START, [Seg(code_pfn * PAGE, PAGE, image)])
        st.call(MID, [Seg(pfn * PAGE, PAGE)])
        st.call(FINAL, [Seg(pfn * PAGE, PAGE, code)])
        if not check(f"{name}/loaded", loaded() == "1", f"kexec_loaded={loaded()}"):
            return
        model = st.model
    pm = verify(f"{name}/before", model)
    if not check(f"{name}/not-in-place", pfn in pm, f"pgmap {pm}"):
        return
    t0 = time.monotonic()
    err = reboot_kexec()
    print(f"time {name}/there-and-back {time.monotonic() - t0:.3f}", flush=True)
    if not expect(f"{name}/returned", err, 0):
        return
    check(f"{name}/our-page-restored", buf[:] == marker,
          "the destination page lost its contents")
    check(f"{name}/same-pfn", virt_to_pfn(addr) == pfn, "our page moved")
    with open("/dev/mem", "rb", buffering=0) as dev:
        code = read_phys(pm.get(code_pfn, code_pfn), dev)
        ours = read_phys(pm[pfn], dev)
    (counter,) = struct.unpack_from("<Q", code, 0x10)
    check(f"{name}/code-ran", counter == COUNTER0 + 1,
          f"counter {counter:#x}, expected {COUNTER0 + 1:#x}")
    if code_pfn != pfn:
        check(f"{name}/image-page-swapped-back", ours == model[pfn],
              "the source of our page does not hold what the image had there")
    check(f"{name}/still-loaded", loaded() == "1", f"kexec_loaded={loaded()}")
    expect(f"{name}/unload", unload(), 0)


def pgmap_format():
    """Whatever image is loaded: the map parses, no src is a dst."""
    data = read_pgmap("pgmap/read")
    if not check("pgmap/open", isinstance(data, bytes), f"errno {data}"):
        return
    pm = parse_pgmap("pgmap", data)
    info(f"pgmap: {len(pm)} lines")
    check("pgmap/src-not-dst", not set(pm.values()) & set(pm), "a src is also a dst")


# --- a real kernel, loaded in stages ------------------------------------------------------


def plan_kernel(marker, kernel="/boot/vmlinuz", initrd="/boot/stage2.cpio.gz"):
    """kexec-py's one-call kexec_load plan of KERNEL + INITRD (its placement,
    boot_params and entry stub): (entry, {segment name: Segment})."""
    from kexec_py.boundary.backends.linux import LinuxBackend
    from kexec_py.load import execute, request

    req = request.LoadRequest(kernel=Path(kernel), initrd=Path(initrd),
                              cmdline=f"console=ttyS0 panic=-1 KEXEC_PY_MARKER={marker}",
                              syscall="load")
    plan = execute.plan_kexec_load(LinuxBackend(Path("/")), req)
    segs = {s.name: s for s in plan.calls[0].segments}
    info("plan: " + ", ".join(f"{s.name} {s.mem:#x}+{s.memsz:#x}" for s in segs.values()))
    return plan.entry, segs


def load(marker):
    entry, segs = plan_kernel(marker)

    def seg(s, lo=0, hi=None):
        hi = s.memsz if hi is None else hi
        data = bytes(s.buf[lo:min(hi, s.bufsz)]) if s.buf is not None and lo < s.bufsz else None
        return Seg(s.mem + lo, hi - lo, data)

    initrd, kernel, params = segs["initrd"], segs["kernel"], segs["boot_params"]
    half = initrd.memsz // 2 // PAGE * PAGE
    rest = [s for n, s in segs.items() if n not in ("initrd", "kernel", "boot_params")]
    k = Staged("boot", entry)
    # boot_params: a zero placeholder first, the real page in KS_final
    k.call(START, [Seg(params.mem, params.memsz), seg(initrd, 0, half)])
    verify("boot/after-start", k.model)
    k.call(MID, [seg(initrd, half)])
    verify("boot/after-mid1", k.model)
    k.call(MID, [seg(kernel)])
    verify("boot/after-mid2", k.model)
    check("boot/not-loaded-before-final", loaded() == "0", f"kexec_loaded={loaded()}")
    k.call(FINAL, [seg(params)] + [seg(s) for s in rest])
    check("boot/loaded", loaded() == "1", f"kexec_loaded={loaded()}")
    verify("boot/after-final", k.model)


def mkcore(out, marker, count):
    """Write the kernel of ``plan_kernel`` as an ELF core of ``count``
    PT_LOADs (pieces of its segments, none of which kexec-py coalesces:
    each has file data as long as its memory, with a gap in the file after
    it), for ``kexec-py resume --entry``; the entry goes to OUT.entry."""
    entry, segs = plan_kernel(marker)
    pieces = [(s.mem, s.memsz, s) for s in segs.values()]
    while len(pieces) < count:
        pieces.sort(key=lambda p: p[1])
        mem, size, s = pieces.pop()
        if size < 2 * PAGE:
            raise RuntimeError(f"cannot cut {count} pieces")
        half = size // 2 // PAGE * PAGE
        pieces += [(mem, half, s), (mem + half, size - half, s)]
    pieces.sort()
    phoff, n = 64, len(pieces)
    pos = (phoff + 56 * n + PAGE - 1) // PAGE * PAGE
    with open(out, "wb") as f:
        phdrs = []
        for mem, size, s in pieces:
            lo = mem - s.mem
            data = bytes(s.buf[lo:min(lo + size, s.bufsz)]) if s.buf is not None else b""
            f.seek(pos)
            f.write(data)  # the rest of the piece stays a hole: zeros
            phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, pos, 0, mem, size, size, 0))
            pos += size + PAGE
        f.truncate(pos)
        f.seek(0)
        f.write(b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
                + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, n, 0, 0, 0))
        f.write(b"".join(phdrs))
    Path(f"{out}.entry").write_text(f"{entry:#x}\n")
    print(f"entry {entry:#x}")


# --- kexec-py driving the patched kernel -------------------------------------------------------


def run(argv):
    """(exit status, stdout) of a command; its stderr is ours.  (The
    guest's python has no subprocess module.)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.close(r)
        os.execv(argv[0], argv)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def mkjump(out, addr):
    """JUMP_CODE as an ELF executable with one PT_LOAD at physical ``addr``,
    for ``kexec-py load -t elf-x86_64 --entry ADDR --load-preserve-context``
    (the idea of tools/testing/selftests/kexec/test_kexec_jump.c)."""
    code = JUMP_CODE + struct.pack("<Q", COUNTER0)
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
            + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, addr, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    phdr = struct.pack("<IIQQQQQQ", 1, 7, PAGE, addr, addr, len(code), PAGE, PAGE)
    head = ehdr + phdr
    Path(out).write_bytes(head + bytes(PAGE - len(head)) + code)


def jump_check(dst_pfn, jumps):
    """After ``kexec-py exec`` of /patched/jump.elf (JUMP_CODE at pfn
    ``dst_pfn``) returned ``jumps`` times: the code ran that often."""
    data = read_pgmap()
    if not check("jump-check/pgmap", isinstance(data, bytes), f"errno {data}"):
        return
    pm = parse_pgmap("jump-check/pgmap", data)
    where = pm.get(dst_pfn, dst_pfn)
    info(f"jump-check: pfn {dst_pfn:#x} is held by pfn {where:#x}")
    with open("/dev/mem", "rb", buffering=0) as dev:
        page = read_phys(where, dev)
    check("jump-check/code", page[:8] == JUMP_CODE[:8], f"page starts {page[:16].hex()}")
    (counter,) = struct.unpack_from("<Q", page, 0x10)
    check("jump-check/code-ran", counter == COUNTER0 + jumps,
          f"counter {counter:#x}, expected {COUNTER0 + jumps:#x}")


def kpy_staged_plan(bad_mid):
    """KS_start, KS_mid, KS_final of kexec-py's executor; with ``bad_mid``
    the KS_mid has two overlapping segments, which the kernel refuses."""
    from kexec_py.boundary.abi import Stage, stage_flags
    from kexec_py.load.plan import Call, Plan
    from kexec_py.load.staging import StagedPlan
    from kexec_py.segments import Segment

    base = 0x08000000
    mid = [Segment(base + 0x10000, 4 * PAGE, 0)]
    if bad_mid:
        mid.append(Segment(base + 0x12000, 4 * PAGE, 0))
    plan = Plan("kexec_load", base, [
        Call(Stage.START, stage_flags(Stage.START),
             [Segment(base, PAGE, PAGE, pattern("S", PAGE))]),
        Call(Stage.MID, stage_flags(Stage.MID), mid),
        Call(Stage.FINAL, stage_flags(Stage.FINAL), [Segment(base + 0x20000, PAGE, 0)])])
    return StagedPlan(plan, None, ["test"])


def kpy_failed_mid(before):
    """kexec-py's executor runs KS_start, a KS_mid the kernel refuses (two
    overlapping segments in one call), KS_final: the error names the call,
    and what was loaded before (``before``: "0" nothing, "1" an image)
    is what is loaded after."""
    from kexec_py.boundary.backends.linux import LinuxBackend
    from kexec_py.errors import SyscallError
    from kexec_py.load.staging import execute

    tag = "kpy-failed-mid"
    check(f"{tag}/before", loaded() == before, f"kexec_loaded={loaded()}, expected {before}")
    events = []
    try:
        execute(LinuxBackend(Path("/")), kpy_staged_plan(True),
                on_event=lambda e: events.append(e.to_json()))
        check(f"{tag}/refused", False, "the overlapping KS_mid was accepted")
    except SyscallError as e:
        info(f"{tag}: error: {e.message}; hint: {e.hint}")
        check(f"{tag}/refused", e.errno == errno.EINVAL, f"errno {e.errno}")
        check(f"{tag}/names-the-call", "call 2 of 3 (KS_mid)" in e.message, e.message)
        now = "the kernel loaded before it is still loaded" if before == "1" else \
            "nothing is loaded"
        check(f"{tag}/says-abandoned", "the staged load was abandoned" in e.hint
              and now in e.hint, e.hint)
    info(f"{tag}: events {events}")
    check(f"{tag}/start-ran", any(ev.get("event") == "call" for ev in events),
          "KS_start did not run")
    check(f"{tag}/abandoned", any(ev.get("event") == "abandon" for ev in events),
          "no abandon event")
    check(f"{tag}/loaded-as-before", loaded() == before, f"kexec_loaded={loaded()}")
    if before == "0":
        check(f"{tag}/pgmap-enodev", read_pgmap() == errno.ENODEV, "a map survived")


def kpy_interrupted(before):
    """SIGINT after KS_start and SIGTERM after KS_mid of kexec-py's executor:
    Interrupted (exit 130, 143), and what was loaded before is loaded after."""
    import signal

    from kexec_py.boundary.backends.linux import LinuxBackend
    from kexec_py.load.staging import Interrupted, execute

    for sig, after in ((signal.SIGINT, 1), (signal.SIGTERM, 2)):
        tag = f"kpy-interrupted/{signal.Signals(sig).name}"

        def on_event(e, sig=sig, after=after):
            if e.kind == "call" and e.index == after:
                os.kill(os.getpid(), sig)

        try:
            execute(LinuxBackend(Path("/")), kpy_staged_plan(False), on_event=on_event)
            check(f"{tag}/interrupted", False, "the load finished")
        except Interrupted as e:
            info(f"{tag}: error: {e.message}; hint: {e.hint}")
            check(f"{tag}/interrupted", e.exit_code == 128 + sig, f"exit {e.exit_code}")
            check(f"{tag}/says-abandoned", "the staged load was abandoned" in e.hint, e.hint)
        check(f"{tag}/loaded-as-before", loaded() == before, f"kexec_loaded={loaded()}")


def kpy_stages(core, entry):
    """kexec-py's resume of CORE (kexec-py's planner and executor), with
    ``kexec-py pgmap --raw`` and ``kexec-py --json pgmap`` run between the
    stages and after KS_final: the map parses and matches what was loaded."""
    import json

    from kexec_py.boundary.backends.linux import LinuxBackend
    from kexec_py.formats.vmcore import open_core
    from kexec_py.hibernate import resume
    from kexec_py.load.staging import execute

    be = LinuxBackend(Path("/"))
    img = open_core(core)
    sp = resume.plan_resume(be, img, entry=entry, staged="always")
    stages = [c.stage.label for c in sp.plan.calls]
    info(f"kpy-stages: {len(img.loads)} PT_LOADs in {len(stages)} calls: {' '.join(stages)}")
    check("kpy-stages/four-calls-or-more", len(stages) >= 4 and stages.count("mid") >= 2,
          f"calls {stages}")
    model = {}

    def on_event(e):
        if e.kind != "call":
            return
        n = e.index
        for seg in sp.plan.calls[n - 1].segments:
            model.update(Seg(seg.mem, seg.memsz, seg.buf).pages())
        tag = f"kpy-stages/{n}-{e.stage}"
        rc, out = run(["/usr/bin/kexec-py", "pgmap", "--raw"])
        check(f"{tag}/kexec-py-pgmap-raw", rc == 0, f"exit status {rc}")
        pm = parse_pgmap(f"{tag}/raw", out)
        rc, out = run(["/usr/bin/kexec-py", "--json", "pgmap"])
        pages = json.loads(out)["pages"] if rc == 0 else None
        check(f"{tag}/kexec-py-pgmap-json", pages == len(pm),
              f"exit status {rc}, pages {pages}, raw lines {len(pm)}")
        check(f"{tag}/loaded-only-after-final", loaded() == ("1" if e.stage == "final" else "0"),
              f"kexec_loaded={loaded()} after KS_{e.stage}")
        verify(tag, model, sample=256)

    t0 = time.monotonic()
    res = execute(be, sp, on_event=on_event)
    info(f"kpy-stages: {res.calls} calls in {time.monotonic() - t0:.2f}s (with the checks)")
    check("kpy-stages/all-calls", res.calls == len(stages), f"{res.calls} calls ran")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "synthetic":
        synthetic()
    elif cmd == "stock":
        stock()
    elif cmd == "jump" and len(argv) == 3 and argv[2] in ("classic", "staged"):
        jump(argv[2])
    elif cmd == "pgmap":
        pgmap_format()
    elif cmd == "load" and len(argv) == 3:
        load(argv[2])
    elif cmd == "mkjump" and len(argv) == 4:
        mkjump(argv[2], int(argv[3], 0))
        return 0
    elif cmd == "jump-check" and len(argv) == 4:
        jump_check(int(argv[2], 0), int(argv[3]))
    elif cmd == "kpy-failed-mid" and len(argv) == 3:
        kpy_failed_mid(argv[2])
    elif cmd == "kpy-interrupted" and len(argv) == 3:
        kpy_interrupted(argv[2])
    elif cmd == "kpy-stages" and len(argv) == 4:
        kpy_stages(argv[2], int(argv[3], 0))
    elif cmd == "mkcore" and len(argv) == 5:
        mkcore(argv[2], argv[3], int(argv[4]))
        return 0
    elif cmd == "exec":
        sys.stdout.flush()
        err = reboot_kexec()
        print(f"reboot(KEXEC) returned: {ename(err)}")
        return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"summary {len(failures)} failed: {' '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

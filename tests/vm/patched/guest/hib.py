"""Issue 6 scenarios 3 and 4 in the QEMU guest: kexec-based hibernation
with kexec-py, one kernel after the other in one VM (see hib-a.sh,
hib-b.sh, hib-c.sh and tests/vm/patched/test_hibernate.py).

Kernel A writes random markers at physical addresses through /dev/mem, into
pages a process of its own holds (so that nothing else reuses them), some
inside the window [W0, W1) that the hibernating kernel B will occupy and
some outside; B finds every marker at its physical address in /proc/vmcore
(built by the kernel from the backup map kexec-py injected as
elfcorehdr=); after the resume A finds them again, at the same physical
addresses and in the holder's own mapping.

Commands (one per guest step):

  window START SIZE       "W0 W1": SIZE MiB from START MiB, inside System RAM
  hold SEED W0 W1 N OUT   (A, in the background) take anonymous memory until
                          enough pages lie inside the window and outside,
                          keep N of each (spread out) and 2N more that stay
                          zero, give the rest back; write a marker page into
                          each of the N + N through /dev/mem; write "in
                          PFN,..." / "out PFN,..." / "zero PFN,..." to OUT;
                          then wait for VERIFY_REQ, check, write the checks
                          to VERIFY_OUT and exit
  verify                  (A) ask the holder to check, print its checks
  vmcore SEED IN OUT W0 W1
                          (B) the markers in /proc/vmcore, read through its
                          ELF program headers; its notes; the window's
                          markers are not in B's own memory
  mkinitrd BASE IMAGE OUT (B) OUT = BASE + a newc cpio with IMAGE as
                          /image.bin; IMAGE is truncated as it is copied
                          (from its end), so the two never both take memory
  census IMAGE W0 W1      (B) where the image's data lies (MiB per 32 MiB)
  confine                 (B) the memmap= words of /proc/cmdline (kernel C
                          gets the window kexec-py confined B to)
  counter FILE            (A) the counter loop's "N UPTIME" line, checked

Output: ``check NAME: ok|FAIL detail``, ``info ...``; exit status 1 when a
check failed.
"""

import mmap
import os
import random
import struct
import sys
import time
from pathlib import Path

PAGE = 4096
VERIFY_REQ = "/tmp/hib-verify-req"
VERIFY_OUT = "/tmp/hib-verify.out"

failures = []


def check(name, ok, detail=""):
    print(f"check {name}: {'ok' if ok else 'FAIL ' + detail}", flush=True)
    if not ok:
        failures.append(name)
    return ok


def info(text):
    print(f"info {text}", flush=True)


def marker(seed, pfn):
    """The marker page of ``pfn``: random bytes from (seed, pfn), with the
    pfn readable at its start."""
    head = b"KXPYMARK" + struct.pack("<Q", pfn)
    return head + random.Random((seed << 64) | pfn).randbytes(PAGE - len(head))


def cmdline():
    return Path("/proc/cmdline").read_text().split()


def ram_ranges():
    """System RAM of the firmware's map, as sorted (start, end)."""
    out = []
    for d in Path("/sys/firmware/memmap").iterdir():
        if (d / "type").read_text().strip() == "System RAM":
            out.append((int((d / "start").read_text(), 16), int((d / "end").read_text(), 16) + 1))
    return sorted(out)


def window(start_mib, size_mib):
    """[W0, W1) of START_MIB MiB and SIZE_MIB MiB, checked to lie in RAM."""
    w0, w1 = start_mib << 20, (start_mib + size_mib) << 20
    if not any(s <= w0 and w1 <= e for s, e in ram_ranges()):
        raise SystemExit(f"the window {w0:#x}-{w1:#x} is not inside one System RAM range: "
                         f"{[(hex(s), hex(e)) for s, e in ram_ranges()]}")
    print(f"{w0:#x} {w1:#x}")


# --- kernel A: the holder ------------------------------------------------------------------


def vaddr(buf):
    from kexec_py.boundary._kexec_ffi import ffi

    return int(ffi.cast("unsigned long", ffi.from_buffer(buf)))


def pfns_of(addr, npages):
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // PAGE * 8)
        raw = f.read(8 * npages)
    out = []
    for (e,) in struct.iter_unpack("<Q", raw):
        out.append(e & ((1 << 55) - 1) if e >> 63 & 1 else None)
    return out


STEP = 16 << 20
LIMIT = 384 << 20


def spread(pages, n):
    """``n`` of ``pages`` spread evenly over them."""
    if len(pages) <= n:
        return list(pages)
    return [pages[i * len(pages) // n] for i in range(n)]


def hold(seed, w0, w1, n, out):
    """Take anonymous pages until 4N lie inside the window and 4N outside,
    keep N of each (spread out) plus 2N that stay zero, give the rest back;
    mark the N + N through /dev/mem, and keep them until asked to check."""
    m = mmap.mmap(-1, LIMIT, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = vaddr(m)
    inside, outside = [], []  # (page index, pfn)
    size = 0
    while size < LIMIT and (len(inside) < 4 * n or len(outside) < 4 * n):
        for off in range(size, size + STEP, PAGE):
            m[off] = 0  # a write fault: a page of our own, zero-filled
        for i, pfn in enumerate(pfns_of(base + size, STEP // PAGE), size // PAGE):
            if pfn is not None:
                (inside if w0 <= pfn * PAGE < w1 else outside).append((i, pfn))
        size += STEP
    if len(inside) < 4 * n or len(outside) < 4 * n:
        raise SystemExit(f"{size >> 20} MiB gave only {len(inside)} pages inside and "
                         f"{len(outside)} outside the window")
    inside.sort(key=lambda x: x[1])
    outside.sort(key=lambda x: x[1])
    mark_in, mark_out = spread(inside, n), spread(outside, n)
    taken = {i for i, _ in mark_in + mark_out}
    zero = spread([x for x in inside + outside if x[0] not in taken and x[0] % 7 == 3], 2 * n)
    keep = sorted(taken | {i for i, _ in zero})
    # the rest goes back to the kernel (init_on_free=1 zeroes it)
    prev = 0
    for i in keep + [size // PAGE]:
        if i > prev:
            m.madvise(mmap.MADV_DONTNEED, prev * PAGE, (i - prev) * PAGE)
        prev = i + 1
    info(f"hold: {size >> 20} MiB touched, {len(inside)} pages inside the window, "
         f"{len(outside)} outside; kept {len(keep)}")
    with open("/dev/mem", "r+b", buffering=0) as dev:
        for _, pfn in mark_in + mark_out:
            dev.seek(pfn * PAGE)
            dev.write(marker(seed, pfn))
    for i, pfn in mark_in + mark_out:
        if m[i * PAGE:(i + 1) * PAGE] != marker(seed, pfn):
            raise SystemExit(f"pfn {pfn:#x}: the marker written through /dev/mem is not in our "
                             "mapping")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        for name, group in (("in", mark_in), ("out", mark_out), ("zero", zero)):
            f.write(f"{name} {','.join(f'{p:x}' for _, p in group)}\n")
    os.rename(tmp, out)
    sys.stdout.flush()
    while not os.path.exists(VERIFY_REQ):
        time.sleep(0.1)
    # the checks after the resume, written to a file the scenario prints
    sys.stdout = open(VERIFY_OUT + ".tmp", "w")
    with open("/dev/mem", "rb", buffering=0) as dev:
        for name, group in (("in", mark_in), ("out", mark_out), ("zero", zero)):
            moved, lost_map, lost_mem = [], [], []
            for i, pfn in group:
                want = bytes(PAGE) if name == "zero" else marker(seed, pfn)
                if pfns_of(base + i * PAGE, 1)[0] != pfn:
                    moved.append(pfn)
                if m[i * PAGE:(i + 1) * PAGE] != want:
                    lost_map.append(pfn)
                dev.seek(pfn * PAGE)
                if dev.read(PAGE) != want:
                    lost_mem.append(pfn)
            what = "zero pages" if name == "zero" else f"markers {name}side the window"
            check(f"resumed/{name}/same-pfn", not moved,
                  f"{len(moved)} of {len(group)} {what} moved: {[hex(p) for p in moved[:4]]}")
            check(f"resumed/{name}/mapping", not lost_map,
                  f"{len(lost_map)} of {len(group)} {what} differ in the holder's mapping: "
                  f"{[hex(p) for p in lost_map[:4]]}")
            check(f"resumed/{name}/dev-mem", not lost_mem,
                  f"{len(lost_mem)} of {len(group)} {what} differ through /dev/mem: "
                  f"{[hex(p) for p in lost_mem[:4]]}")
            info(f"resumed: {len(group)} {what} checked")
    sys.stdout.close()
    os.rename(VERIFY_OUT + ".tmp", VERIFY_OUT)


def verify():
    Path(VERIFY_REQ).touch()
    for _ in range(600):
        if os.path.exists(VERIFY_OUT):
            text = Path(VERIFY_OUT).read_text()
            sys.stdout.write(text)
            failures.extend(line for line in text.splitlines() if ": FAIL" in line)
            return
        time.sleep(0.1)
    check("resumed/holder-answered", False, "the holder wrote no checks in 60 s")


def counter(path):
    n, up = Path(path).read_text().split()[:2]
    print(f"counter {n} {up}")


# --- kernel B: /proc/vmcore ----------------------------------------------------------------


def vmcore(seed, inside, outside, w0, w1):
    with open("/proc/vmcore", "rb", buffering=0) as f:
        ehdr = f.read(64)
        check("vmcore/elf64-core", ehdr[:5] == b"\x7fELF\x02" and
              struct.unpack_from("<H", ehdr, 16)[0] == 4, f"header {ehdr[:20].hex()}")
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
        loads = []
        notes = []
        for k in range(phnum):
            p_type, _, off, _, paddr, filesz, memsz, _ = struct.unpack_from(
                "<IIQQQQQQ", raw, k * phentsize)
            if p_type == 1:
                loads.append((paddr, off, filesz))
            elif p_type == 4:
                f.seek(off)
                notes.append(f.read(memsz))
        names = []
        for data in notes:
            pos = 0
            while pos + 12 <= len(data):
                namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                if not namesz:
                    break
                names.append(f"{data[pos + 12:pos + 11 + namesz].decode('ascii', 'replace')}"
                             f"/{ntype}")
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
        info(f"vmcore notes: {' '.join(names)}")
        # the CPU's crash note (NT_PRSTATUS, saved before the jump), VMCOREINFO,
        # and kexec-py's note about the backup map
        check("vmcore/notes", {"CORE/1", "VMCOREINFO/0", "KEXEC_PY/2"} <= set(names),
              f"notes {names}")
        size = os.fstat(f.fileno()).st_size
        info(f"vmcore: {size} bytes, {len(loads)} PT_LOADs, {len(notes)} PT_NOTE(s)")
        in_window = [x for x in loads if x[0] < w1 and x[0] + x[2] > w0]
        info(f"vmcore: {len(in_window)} PT_LOADs meet the window {w0:#x}-{w1:#x}")
        for name, pfns in (("in", inside), ("out", outside)):
            missing, wrong = [], []
            for pfn in pfns:
                addr = pfn * PAGE
                hit = [x for x in loads if x[0] <= addr and addr + PAGE <= x[0] + x[2]]
                if not hit:
                    missing.append(pfn)
                    continue
                paddr, off, _ = hit[0]
                f.seek(off + addr - paddr)
                if f.read(PAGE) != marker(seed, pfn):
                    wrong.append(pfn)
            what = f"markers {name}side the window"
            check(f"vmcore/{name}/covered", not missing,
                  f"{len(missing)} of {len(pfns)} {what} in no PT_LOAD: "
                  f"{[hex(p) for p in missing[:4]]}")
            check(f"vmcore/{name}/markers", not wrong,
                  f"{len(wrong)} of {len(pfns)} {what} differ: {[hex(p) for p in wrong[:4]]}")
            info(f"vmcore: {len(pfns) - len(missing) - len(wrong)} of {len(pfns)} {what} found")
    # B runs in the window: its own memory there is not A's
    with open("/dev/mem", "rb", buffering=0) as dev:
        ours = []
        for pfn in inside:
            dev.seek(pfn * PAGE)
            if dev.read(PAGE) == marker(seed, pfn):
                ours.append(pfn)
    check("vmcore/in/not-in-place", not ours,
          f"{len(ours)} window markers are still in B's own memory: B is not in the window")


# --- kernel B: C's initramfs ----------------------------------------------------------------


def cpio_header(name, mode, size, ino):
    nameb = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(nameb), 0)
    hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + nameb
    return hdr + bytes(-len(hdr) % 4)


def mkinitrd(base, image, out):
    size = os.path.getsize(image)
    t0 = time.monotonic()
    with open(out, "wb") as o, open(base, "rb") as b:
        while chunk := b.read(1 << 20):
            o.write(chunk)
        o.write(bytes(-o.tell() % 4))  # VM-TESTING.md pitfall 1
        o.write(cpio_header("image.bin", 0o100644, size, 0x7e57))
        data_at = o.tell()
        o.truncate(data_at + size)
        o.seek(data_at + size)
        o.write(bytes(-size % 4))
        o.write(cpio_header("TRAILER!!!", 0, 0, 0x7e58))
        total = o.tell()
        with open(image, "r+b") as i:
            end = size
            while end > 0:
                start = max(0, end - (4 << 20))
                i.seek(start)
                chunk = i.read(end - start)
                o.seek(data_at + start)
                o.write(chunk)
                i.truncate(start)  # the copied tail leaves the source
                end = start
    os.unlink(image)
    info(f"mkinitrd: {out} {total} bytes, image {size} bytes at offset {data_at}, "
         f"{time.monotonic() - t0:.2f}s")
    print(f"time mkinitrd {time.monotonic() - t0:.3f}")


def census(image, w0, w1):
    """Where the image's data lies: MiB per 32 MiB of physical memory."""
    with open(image, "rb") as f:
        ehdr = f.read(64)
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
    buckets = {}
    inside = 0
    for k in range(phnum):
        p_type, _, _, _, paddr, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", raw, k * phentsize)
        if p_type != 1:
            continue
        for a in range(paddr, paddr + filesz, PAGE):
            buckets[a >> 25] = buckets.get(a >> 25, 0) + PAGE
            inside += PAGE if w0 <= a < w1 else 0
    info("image data per 32 MiB: " + ", ".join(f"{b * 32}M:{v / 1048576:.1f}"
                                                 for b, v in sorted(buckets.items())))
    info(f"image data inside the window: {inside / 1048576:.1f} MiB")


def confine():
    print(" ".join(w for w in cmdline() if w.startswith("memmap=")))


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    a = argv[2:]
    if cmd == "window" and len(a) == 2:
        window(int(a[0]), int(a[1]))
        return 0
    if cmd == "hold" and len(a) == 5:
        hold(int(a[0], 16), int(a[1], 0), int(a[2], 0), int(a[3]), a[4])
        return 0
    if cmd == "verify" and not a:
        verify()
    elif cmd == "vmcore" and len(a) == 5:
        vmcore(int(a[0], 16), [int(x, 16) for x in a[1].split(",")],
               [int(x, 16) for x in a[2].split(",")], int(a[3], 0), int(a[4], 0))
    elif cmd == "mkinitrd" and len(a) == 3:
        mkinitrd(*a)
    elif cmd == "census" and len(a) == 3:
        census(a[0], int(a[1], 0), int(a[2], 0))
        return 0
    elif cmd == "confine" and not a:
        confine()
        return 0
    elif cmd == "counter" and len(a) == 1:
        counter(a[0])
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"summary {len(failures)} failed: {' '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

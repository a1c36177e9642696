"""Issue 7, initramfs-tools: an initramfs built by Debian's mkinitramfs
with contrib/initramfs-tools (hook + local-premount script) boots Debian's
kernel under QEMU with a virtio disk whose ext4 file system holds a
hibernation image, and resumes it with ``kexec_resume=/dev/vda:/hibernate.img``.

The image is a small ELF core made here: one PT_LOAD at 32 MiB holding
64-bit code that prints ``@@RESUMED-IMAGE-RUNNING`` on the serial port and
then triple-faults (QEMU runs with -no-reboot, so that ends the run), and
kexec-py's note with the jump-back entry (the code's address).  Debian's
stock kernel has no staged protocol: the image fits one KS_full kexec_load
call, so ``kexec-py resume`` loads it there and ``kexec-py exec`` jumps to
it; the marker proves both ran (what a real hibernated kernel would do at
that entry needs the patched kernel, see the staged tests).

The resume writes nothing to the disk: its file system is made clean but
with an orphan inode waiting (what ext4 deletes at every mount, read-only
and noload ones included, unless the device is read-only), and the disk
file is the same, byte for byte, after the boot that resumed.

With a corrupt (truncated) image the script says why on the console and
the normal boot goes on: Debian's init mounts the disk as root and runs its
/sbin/init, which prints ``@@ROOTFS-INIT`` and whether the disk is still
read-only (it must not be: the script gives it back writable).

Measured and recorded (not asserted): the initramfs size the hook adds
(compressed and unpacked, against the same build without it) and
``kexec-py --version`` in the booted initramfs (a test-only local-premount
script times it after kexec-py's script fell back).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from coregen import simple_core

from kexec_py.formats.vmcore import jump_back_note
from vm import harness
from vm.harness import CACHE, REPO, SerialLog, record

pytestmark = pytest.mark.vm

CONTRIB = REPO / "contrib" / "initramfs-tools"
MKINITRAMFS = Path("/usr/sbin/mkinitramfs")
CONFDIR = Path("/etc/initramfs-tools")
GUEST_PYTHON = Path("/usr/bin/python3.11")

#: where the payload runs (physical), and its code.  Assembled from:
#:   lea msg(%rip),%rsi
#: next: movb (%rsi),%al; testb %al,%al; jz done
#: wait: movw $0x3fd,%dx; inb %dx,%al; testb $0x20,%al; jz wait   (THR empty)
#:       movb (%rsi),%al; movw $0x3f8,%dx; outb %al,%dx; incq %rsi; jmp next
#: done: lidt idtr(%rip); int3; 1: hlt; jmp 1b                    (triple fault)
#: idtr: .word 0; .quad 0
#: msg:  .ascii "@@RESUMED-IMAGE-RUNNING\r\n\0"
PAYLOAD_AT = 0x2000000
MARKER = "@@RESUMED-IMAGE-RUNNING"
PAYLOAD = bytes.fromhex(
    "488d35300000008a0684c0741566bafd03eca82074f78a0666baf803ee48ffc6ebe5"
    "0f011d04000000ccf4ebfd" + "00" * 10) + MARKER.encode() + b"\r\n\0"

#: a local-premount script for this test only: times kexec-py in the
#: initramfs (runs after kexec-py's own script, when that one fell back)
TIMING = r"""#!/bin/sh
PREREQ="kexec-py"
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac
grep -q kexec_py_timing /proc/cmdline || exit 0
now() { read -r up _ < /proc/uptime; echo "$up"; }
i=0
while [ $i -lt 5 ]; do
    t0=$(now); kexec-py --version >/dev/null 2>&1; rc=$?; t1=$(now)
    echo "@@TIME kexec-py-version t0=$t0 t1=$t1 rc=$rc"
    t0=$(now); kexec-py --backend linux --json status >/dev/null 2>&1; rc=$?; t1=$(now)
    echo "@@TIME kexec-py-status t0=$t0 t1=$t1 rc=$rc"
    t0=$(now); /usr/bin/python3.11 -S -c pass; rc=$?; t1=$(now)
    echo "@@TIME python-start t0=$t0 t1=$t1 rc=$rc"
    i=$((i + 1))
done
"""

ROOTFS_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "@@ROOTFS-INIT uptime=$(/bin/busybox cut -d' ' -f1 /proc/uptime) \
vda_ro=$(/bin/busybox cat /sys/block/vda/ro)"
/bin/busybox poweroff -f
"""


def _kernel_version(kernel: Path) -> str:
    return kernel.name.removeprefix("vmlinuz-")


def _site_dirs() -> list[str]:
    """Where the host's click, rich, pyelftools and _cffi_backend live (the
    guest runs Debian's python3.11 with them, as the harness does)."""
    dirs: list[str] = []
    for mod in ("click", "rich", "elftools", "_cffi_backend"):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin is not None, mod
        origin = Path(spec.origin)
        d = str(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
        if d not in dirs:
            dirs.append(d)
    return dirs


def _inputs_key(kernel: Path, hooked: bool) -> str:
    h = hashlib.sha256()
    h.update(f"{kernel}:{kernel.stat().st_mtime_ns}:{hooked}".encode())
    for p in sorted(CONFDIR.rglob("*")):
        if p.is_file():
            h.update(str(p).encode() + p.read_bytes())
    if hooked:
        h.update(TIMING.encode() + ":".join(_site_dirs()).encode())
        for p in sorted([*CONTRIB.rglob("*"), *(REPO / "kexec_py").rglob("*.py")]):
            if p.is_file():
                h.update(str(p.relative_to(REPO)).encode() + p.read_bytes())
    return h.hexdigest()[:16]


def build_initramfs(kernel: Path, hooked: bool) -> tuple[Path, dict[str, int]]:
    """mkinitramfs with a copy of /etc/initramfs-tools (plus the hook, the
    premount script and the timing script when ``hooked``); cached.
    Returns the image and its sizes (file, unpacked)."""
    key = _inputs_key(kernel, hooked)
    out = CACHE / f"mkinitramfs-{'hooked' if hooked else 'plain'}-{key}.img"
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists():
        return out, json.loads(meta.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="mkinitramfs-") as tmp:
        conf = Path(tmp) / "conf"
        shutil.copytree(CONFDIR, conf, symlinks=True)
        if hooked:
            (conf / "hooks").mkdir(exist_ok=True)
            shutil.copy2(CONTRIB / "hooks" / "kexec-py", conf / "hooks" / "kexec-py")
            premount = conf / "scripts" / "local-premount"
            premount.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CONTRIB / "scripts" / "local-premount" / "kexec-py",
                         premount / "kexec-py")
            (premount / "zz-kexec-py-timing").write_text(TIMING)
            (premount / "zz-kexec-py-timing").chmod(0o755)
            (conf / "conf.d").mkdir(exist_ok=True)
            (conf / "conf.d" / "kexec-py").write_text(
                f"KEXEC_PY_PYTHON={GUEST_PYTHON}\n"
                f"KEXEC_PY_PATH={':'.join([str(REPO), *_site_dirs()])}\n")
        img = Path(tmp) / "initrd.img"
        t0 = time.monotonic()
        # -k keeps the unpacked tree for measuring; TMPDIR puts it (and the
        # other work files) in this temporary directory
        p = subprocess.run([str(MKINITRAMFS), "-k", "-d", str(conf), "-o", str(img),
                            _kernel_version(kernel)], capture_output=True, text=True,
                           check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                             "TMPDIR": tmp})
        took = time.monotonic() - t0
        if p.returncode != 0:
            raise harness.HarnessError(f"mkinitramfs failed:\n{p.stdout}{p.stderr}")
        if hooked and "kexec-py" in p.stdout + p.stderr:  # a warning, or "ignored: bad syntax"
            raise harness.HarnessError(f"the kexec-py hook warned:\n{p.stderr}")
        m = re.search(r"Working files in (\S+),", p.stdout + p.stderr)
        if m is None or not Path(m[1]).is_dir():
            raise harness.HarnessError(f"mkinitramfs -k kept no tree:\n{p.stdout}{p.stderr}")
        unpacked = sum(f.lstat().st_size for f in Path(m[1]).rglob("*")
                       if f.is_file() and not f.is_symlink())
        sizes = {"file": img.stat().st_size, "unpacked": unpacked,
                 "mkinitramfs_ms": int(took * 1000)}
        shutil.move(img, out)
    meta.write_text(json.dumps(sizes))
    return out, sizes


def make_image(path: Path, corrupt: bool = False) -> Path:
    core = simple_core([(PAYLOAD_AT, PAYLOAD, 0x1000)], notes=jump_back_note(PAYLOAD_AT))
    data = core.render()
    if corrupt:  # the PT_LOAD's data is cut off: a bad image
        data = data[:len(data) - len(PAYLOAD) // 2]
    path.write_bytes(data)
    return path


def make_disk(path: Path, image: Path, orphan: bool = False) -> Path:
    """A 64 MiB ext4 file system (mkfs.ext4 -d, no mount): /hibernate.img,
    and a root file system made of busybox and an /sbin/init that prints
    @@ROOTFS-INIT and powers off.  With ``orphan``, an inode on the orphan
    list (s_last_orphan), unlinked: the file system is clean, but any
    mount that may write deletes it."""
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="disk-") as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp"):
            (root / d).mkdir()
        shutil.copy2(harness.BUSYBOX, root / "bin" / "busybox")
        (root / "sbin" / "init").write_text(ROOTFS_INIT)
        (root / "sbin" / "init").chmod(0o755)
        shutil.copy2(image, root / "hibernate.img")
        path.unlink(missing_ok=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "kexecpy", "-d", str(root), str(path),
                        "64M"], check=True, capture_output=True)
        if orphan:
            victim = root / "victim"
            victim.write_bytes(bytes(range(256)) * 256)
            _debugfs(path, f"write {victim} orphan")
            m = re.search(r"Inode: (\d+)", _debugfs(path, "stat /orphan"))
            assert m is not None
            _debugfs(path, "unlink /orphan", f"sif <{m[1]}> links_count 0",
                     f"ssv last_orphan {m[1]}")
            header = subprocess.run(["dumpe2fs", "-h", str(path)], check=True,
                                    capture_output=True, text=True).stdout
            assert f"First orphan inode:       {m[1]}" in header, header
            assert re.search(r"Filesystem state:\s+clean\n", header), header
    return path


def _debugfs(fs: Path, *commands: str) -> str:
    p = subprocess.run(["debugfs", "-w", "-f", "-", str(fs)], input="\n".join(commands) + "\n",
                       check=True, capture_output=True, text=True)
    return p.stdout


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def boot_with_disk(name: str, kernel: Path, initrd: Path, disk: Path, cmdline: str,
                   memory: int = 1024, timeout: int = 420) -> SerialLog:
    """harness.boot with the virtio disk that holds the image."""
    return harness.boot(name, kernel, initrd, cmdline, memory=memory, timeout=timeout,
                        qemu_args=["-drive", f"file={disk},format=raw,if=virtio"])


@pytest.fixture(scope="module")
def initrds(vm_ready: None) -> tuple[Path, Path, dict[str, int], dict[str, int]]:
    for tool in (MKINITRAMFS, Path("/usr/sbin/mkfs.ext4"), GUEST_PYTHON):
        if not tool.exists():
            pytest.fail(f"KEXEC_PY_VM_TESTS=1 but {tool} is missing (apt-get install "
                        "initramfs-tools e2fsprogs python3-minimal)", pytrace=False)
    kernel = harness.default_kernel()
    plain, plain_sizes = build_initramfs(kernel, hooked=False)
    hooked, hooked_sizes = build_initramfs(kernel, hooked=True)
    added = hooked_sizes["file"] - plain_sizes["file"]
    added_unpacked = hooked_sizes["unpacked"] - plain_sizes["unpacked"]
    record("initramfs", f"INITRAMFS mkinitramfs: {plain_sizes['file'] / 2**20:.1f} MiB without "
           f"the hook, {hooked_sizes['file'] / 2**20:.1f} MiB with it: the hook adds "
           f"{added / 2**20:.1f} MiB compressed, {added_unpacked / 2**20:.1f} MiB unpacked "
           f"(Debian python3.11, COMPRESS from {CONFDIR}/initramfs.conf)",
           plain=plain_sizes, hooked=hooked_sizes, added=added, added_unpacked=added_unpacked)
    return plain, hooked, plain_sizes, hooked_sizes


def _boot(initrds: tuple[Path, Path, dict[str, int], dict[str, int]], name: str,
          corrupt: bool, extra: str = "", orphan: bool = False) -> tuple[SerialLog, bool]:
    """The boot, and whether the disk is the same after it."""
    kernel = harness.default_kernel()
    image = make_image(CACHE / f"{name}.img", corrupt=corrupt)
    disk = make_disk(CACHE / f"{name}.disk", image, orphan=orphan)
    before = _digest(disk)
    cmdline = ("console=ttyS0 panic=-1 root=/dev/vda ro rootfstype=ext4 "
               f"kexec_resume=/dev/vda:/hibernate.img {extra}").strip()
    try:
        log = boot_with_disk(name, kernel, initrds[1], disk, cmdline)
        return log, _digest(disk) == before
    finally:
        disk.unlink(missing_ok=True)
        image.unlink(missing_ok=True)


def test_the_resume_path_loads_and_enters_the_image(
        initrds: tuple[Path, Path, dict[str, int], dict[str, int]]) -> None:
    log, unchanged = _boot(initrds, "initramfs-resume", corrupt=False, orphan=True)
    text = log.text
    assert "kexec-py resume: resuming from /hibernate.img on /dev/vda" in text, log.tail()
    assert "kexec-py resume: image loaded, jumping to it" in text, log.tail()
    assert log.first(MARKER) is not None or MARKER in text, \
        f"the image's code did not run:\n{log.tail()}"
    assert "@@ROOTFS-INIT" not in text, log.tail()
    assert "continuing with a normal boot" not in text, log.tail()
    assert unchanged, f"the resume wrote to the disk:\n{log.tail()}"
    jump = log.at("kexec-py resume: image loaded")
    ran = next((t for t, line in log.lines if MARKER in line), None)
    record("initramfs", f"INITRAMFS resume: premount message at {log.at('kexec-py resume:'):.1f}"
           f" s, image code running at {ran:.1f} s (host time since QEMU start, TCG)"
           if jump is not None and ran is not None else "INITRAMFS resume: ran")


def test_a_corrupt_image_falls_back_to_a_normal_boot(
        initrds: tuple[Path, Path, dict[str, int], dict[str, int]]) -> None:
    log, _ = _boot(initrds, "initramfs-corrupt", corrupt=True, extra="kexec_py_timing")
    text = log.text
    assert "kexec-py resume: resuming from /hibernate.img on /dev/vda" in text, log.tail()
    m = re.search(r"kexec-py resume: kexec-py resume failed \(exit 1\): (.*)", text)
    assert m is not None, log.tail()
    assert "/run/kexec-py/mnt/hibernate.img" in m[1], m[1]
    assert "kexec-py resume: continuing with a normal boot" in text
    assert MARKER not in text
    assert log.first("@@ROOTFS-INIT") is not None, f"the normal boot did not go on:\n{log.tail()}"
    assert "@@ROOTFS-INIT" in text and "vda_ro=0" in text, log.tail()
    bad = [t for t in log.timings if t.rc != 0]
    assert not bad, bad
    med = {k: statistics.median(log.times(k))
           for k in ("kexec-py-version", "kexec-py-status", "python-start")}
    assert all(len(log.times(k)) == 5 for k in med), log.timings
    record("initramfs", "INITRAMFS guest (mkinitramfs initramfs, TCG): " + " ".join(
        f"{k}={v:.2f}s" for k, v in med.items()) + " (median of 5)",
           **{k: log.times(k) for k in med})
    record("initramfs", f"INITRAMFS fallback: error shown: {m[1]}")


def test_payload_matches_its_assembly(tmp_path: Path) -> None:
    """The payload bytes are what the assembly in the comment above gives
    (skipped without binutils)."""
    if shutil.which("as") is None or shutil.which("objcopy") is None:
        pytest.skip("needs binutils (as, objcopy)")
    src = tmp_path / "p.s"
    src.write_text(".code64\nlea msg(%rip),%rsi\nnext: movb (%rsi),%al\ntestb %al,%al\n"
                   "jz done\nwait: movw $0x3fd,%dx\ninb %dx,%al\ntestb $0x20,%al\njz wait\n"
                   "movb (%rsi),%al\nmovw $0x3f8,%dx\noutb %al,%dx\nincq %rsi\njmp next\n"
                   "done: lidt idtr(%rip)\nint3\n1: hlt\njmp 1b\nidtr: .word 0\n.quad 0\n"
                   f'msg: .ascii "{MARKER}\\r\\n\\0"\n')
    subprocess.run(["as", "--64", "-o", str(tmp_path / "p.o"), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "p.o"),
                    str(tmp_path / "p.bin")], check=True)
    assert (tmp_path / "p.bin").read_bytes() == PAYLOAD
    assert os.path.getsize(tmp_path / "p.bin") < 0x1000

"""contrib/initramfs-tools: the local-premount script (run with sh against
fake initramfs functions, a fake kexec-py and a fake mount) and the hook
(run into a temporary DESTDIR with initramfs-tools' hook-functions, then
the tree it made run by chroot).  The boot with mkinitramfs is
tests/vm/test_vm_initramfs.py."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fakeroot import QEMU_MEMMAP, make_root

REPO = Path(__file__).resolve().parent.parent
CONTRIB = REPO / "contrib" / "initramfs-tools"
SCRIPT = CONTRIB / "scripts" / "local-premount" / "kexec-py"
HOOK = CONTRIB / "hooks" / "kexec-py"
HOOK_FUNCTIONS = Path("/usr/share/initramfs-tools/hook-functions")

FUNCTIONS = """\
resolve_device() { DEV="$1"; [ -e "$DEV" ] && echo "$DEV"; }
log_warning_msg() { echo "Warning: $*"; }
"""

FAKE_KEXEC_PY = """\
#!/bin/sh
echo "$*" >> "$LOG"
case "$*" in
*" resume "*) [ -n "$RESUME_ERR" ] && printf '%b' "$RESUME_ERR" >&2; exit "${RESUME_RC:-0}" ;;
*" exec") printf 'error: reboot(LINUX_REBOOT_CMD_KEXEC) = -1 EINVAL (Invalid argument)\\n' >&2
          exit 1 ;;
esac
exit 0
"""

FAKE_MOUNT = """\
#!/bin/sh
echo "mount $*" >> "$LOG"
[ "$1" = -o ] && [ "$2" = ro ] || { echo "mount: bad options $*" >&2; exit 1; }
[ -n "$MOUNT_FAIL" ] && { echo "mount: $MOUNT_FAIL" >&2; exit 32; }
cp -R "$FS"/. "$4"/
"""

FAKE_UMOUNT = """\
#!/bin/sh
echo "umount $*" >> "$LOG"
"""


class Premount:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, text in (("kexec-py", FAKE_KEXEC_PY), ("mount", FAKE_MOUNT),
                           ("umount", FAKE_UMOUNT)):
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)
        (tmp / "functions").write_text(FUNCTIONS)
        self.log = tmp / "log"
        self.fs = tmp / "fs"
        self.fs.mkdir()

    def run(self, cmdline: str, **env: str) -> tuple[int, str, list[str]]:
        (self.tmp / "cmdline").write_text(cmdline + "\n")
        self.log.write_text("")
        e = {"PATH": f"{self.bin}:/usr/bin:/bin", "LOG": str(self.log), "FS": str(self.fs),
             "KEXEC_PY_FUNCTIONS": str(self.tmp / "functions"),
             "KEXEC_PY_CMDLINE": str(self.tmp / "cmdline"),
             "KEXEC_PY_RUNDIR": str(self.tmp / "run"), **env}
        r = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=e,
                           check=False, timeout=60)
        return r.returncode, r.stdout + r.stderr, self.log.read_text().splitlines()


@pytest.fixture
def pm(tmp_path: Path) -> Premount:
    return Premount(tmp_path)


@pytest.mark.parametrize("script", [SCRIPT, HOOK], ids=["premount", "hook"])
def test_syntax(script: Path) -> None:
    """mkinitramfs skips a hook or script that ``sh -n`` refuses ("ignored:
    bad syntax"), quietly but for one line: refuse it here."""
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")
    assert os.access(script, os.X_OK), f"{script} must be executable"


def test_prereqs(pm: Premount) -> None:
    r = subprocess.run(["sh", str(SCRIPT), "prereqs"], capture_output=True, text=True,
                       check=False)
    assert (r.returncode, r.stdout.strip()) == (0, "")


def test_without_kexec_resume_nothing_happens(pm: Premount) -> None:
    assert pm.run("root=/dev/vda quiet resume=/dev/vdb") == (0, "", [])


def test_a_file_resumes_then_execs_and_falls_back_when_exec_returns(pm: Premount) -> None:
    img = pm.tmp / "hibernate.img"
    img.write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"root=/dev/vda kexec_resume={img}")
    assert rc == 0
    assert calls == [f"--backend linux resume {img}", "--backend linux exec",
                     "--backend linux unload"]
    assert f"kexec-py resume: resuming from {img}" in out
    assert ("kexec-py resume: kexec-py exec returned (exit 1): reboot(LINUX_REBOOT_CMD_KEXEC) "
            "= -1 EINVAL (Invalid argument)") in out
    assert out.rstrip().endswith("kexec-py resume: continuing with a normal boot")


def test_a_bad_image_falls_back_with_kexec_pys_error(pm: Premount) -> None:
    img = pm.tmp / "hibernate.img"
    img.write_bytes(b"garbage" * 10)
    rc, out, calls = pm.run(
        f"kexec_resume={img}", RESUME_RC="1",
        RESUME_ERR="error: image x is not an ELF file\\nhint: give an image from save-image\\n")
    assert rc == 0
    assert calls == [f"--backend linux resume {img}"]
    assert "hint: give an image from save-image" in out
    assert ("kexec-py resume: kexec-py resume failed (exit 1): image x is not an ELF file"
            in out)
    assert "continuing with a normal boot" in out


@pytest.mark.parametrize(("cmdline", "words"), [
    ("kexec_resume=/nonexistent/hibernate.img", "no hibernation image: /nonexistent/"
                                                "hibernate.img does not exist"),
    ("kexec_resume=foo:/x", "DEVICE must be /dev/..., UUID="),
    ("kexec_resume=/dev/nonexistent-disk:/hibernate.img kexec_resume_wait=0",
     "device /dev/nonexistent-disk did not appear within 0s"),
])
def test_missing_things_fall_back(pm: Premount, cmdline: str, words: str) -> None:
    rc, out, calls = pm.run(cmdline)
    assert rc == 0 and calls == []
    assert words in out and "continuing with a normal boot" in out


def test_an_empty_image_and_a_missing_program(pm: Premount) -> None:
    img = pm.tmp / "empty.img"
    img.write_bytes(b"")
    rc, out, calls = pm.run(f"kexec_resume={img}")
    assert rc == 0 and calls == [] and "not a hibernation image" in out
    img.write_bytes(b"x")
    rc, out, calls = pm.run(f"kexec_resume={img}", KEXEC_PY_BIN="no-such-kexec-py")
    assert rc == 0 and "no-such-kexec-py is not in this initramfs" in out


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a block device needs root")


@needs_root
def test_device_and_path_mounts_read_only(pm: Premount) -> None:
    dev = pm.tmp / "vdb"
    os.mknod(dev, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img")
    mnt = pm.tmp / "run" / "mnt"
    assert rc == 0
    assert calls[:3] == [f"mount -o ro {dev} {mnt}",
                         f"--backend linux resume {mnt}/hibernate.img", f"umount {mnt}"]
    assert calls[3] == "--backend linux exec"
    assert f"resuming from /hibernate.img on {dev}" in out
    # a path that is not there: unmounted again
    rc, out, calls = pm.run(f"kexec_resume={dev}:/other.img")
    assert f"no hibernation image: /other.img on {dev} does not exist" in out
    assert calls == [f"mount -o ro {dev} {mnt}", f"umount {mnt}"]
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", MOUNT_FAIL="wrong fs type")
    assert f"cannot mount {dev} ({dev}) read-only: mount: wrong fs type" in out
    rc, out, calls = pm.run(f"kexec_resume={dev}")
    assert "is a block device: give the image as DEVICE:PATH" in out and calls == []


# --- the hook --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HOOK_FUNCTIONS.exists():
        pytest.skip("needs initramfs-tools (apt-get install initramfs-tools)")
    dest = tmp_path_factory.mktemp("initramfs")
    # what mkinitramfs makes on a usr-merged system before the hooks run
    for d in ("bin", "lib", "lib64", "sbin"):
        (dest / "usr" / d).mkdir(parents=True)
        (dest / d).symlink_to(f"usr/{d}")
    env = {**os.environ, "DESTDIR": str(dest), "verbose": "n",
           "KEXEC_PY_PYTHON": os.path.realpath(sys.executable), "KEXEC_PY_PATH": str(REPO),
           "KEXEC_PY_KEXEC": "y"}
    r = subprocess.run(["sh", str(HOOK)], capture_output=True, text=True, env=env, check=False,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "W: kexec-py hook" not in r.stderr, r.stderr
    return dest


def _size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_hook_copies_only_what_is_imported(hooked: Path) -> None:
    lib = hooked / "usr/lib/kexec-py"
    assert (lib / "kexec_py" / "compat.pyc").exists()
    assert (lib / "kexec_py" / "cli.pyc").exists()
    assert not list(lib.rglob("*.py")), "sources are dropped after byte-compiling"
    assert not (lib / "kexec_py" / "model").exists(), "the model backend is not needed at boot"
    assert (lib / "click").is_dir() and (lib / "elftools").is_dir()
    assert list(lib.glob("_cffi_backend*.so"))
    names = {p.name for p in hooked.rglob("*.pyc")}
    assert "tkinter" not in names and "unittest" not in {p.name for p in hooked.rglob("*")}
    launcher = (hooked / "usr/bin/kexec-py").read_text()
    assert launcher.startswith("#!/") and " -SE\n" in launcher.splitlines()[0] + "\n"
    assert os.readlink(hooked / "usr/sbin/kexec") == "../bin/kexec-py"
    print(f"\nINITRAMFS hook added {_size(hooked) / 2**20:.1f} MiB uncompressed "
          f"(interpreter {os.path.realpath(sys.executable)})")


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_the_tree_runs_kexec_py_by_itself(hooked: Path, tmp_path: Path) -> None:
    from kexec_py import __version__

    fake = make_root(hooked / "fake", memmap=QEMU_MEMMAP, loaded=1)

    def chroot(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["chroot", str(hooked), *args], capture_output=True, text=True,
                              env={"PATH": "/usr/sbin:/usr/bin", **env}, check=False, timeout=60)

    r = chroot("/usr/bin/kexec-py", "--version")
    assert (r.returncode, r.stdout) == (0, f"kexec-py {__version__}\n"), r.stderr
    r = chroot("/usr/bin/kexec-py", "--backend", "linux", "--root", "/fake", "--json", "status")
    assert r.returncode == 0, r.stderr
    assert '"loaded": true' in r.stdout
    r = chroot("/usr/bin/kexec-py", "--backend", "linux", "--root", "/fake", "inspect",
               "/usr/bin/kexec-py")
    assert r.returncode == 1 and r.stderr.startswith("error: "), r.stderr
    r = chroot("/usr/sbin/kexec", "-S", "-l", KEXEC_PY_BACKEND="linux", KEXEC_PY_ROOT="/fake")
    assert (r.returncode, r.stderr) == (1, "")
    r = chroot("/usr/sbin/kexec", "-e", "--append=x")
    assert r.returncode == 1 and r.stderr.startswith("kexec: --append: only for loading")
    shutil.rmtree(fake)

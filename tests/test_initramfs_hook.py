"""contrib/initramfs-tools: the local-premount script (run with sh against
fake initramfs functions, a fake kexec-py, mount, blockdev and modprobe, and
dd reading ext2/3/4 images made by mke2fs) and the hook (run for the
kexec-py of this test run's interpreter, a venv's as the README installs it,
into a temporary DESTDIR with initramfs-tools' hook-functions, then the tree
it made run by chroot).  The boot with mkinitramfs is
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
get_fstype() { echo "${FAKE_FSTYPE:-unknown}"; }
log_warning_msg() { echo "Warning: $*"; }
"""

#: kexec-py, run by the script with a clean environment: what it needs is
#: written into it (the log, the answers), and it records the environment it
#: was started with (/proc/PID/environ, not what its shell adds)
FAKE_KEXEC_PY = """\
#!/bin/sh
ctl={ctl}
echo "$*" >> "$ctl/log"
{{ echo "== $*"; tr '\\0' '\\n' < /proc/$$/environ; }} >> "$ctl/env"
case "$*" in
*" resume "*) [ -s "$ctl/resume.err" ] && printf '%b' "$(cat "$ctl/resume.err")" >&2
              exit "$(cat "$ctl/resume.rc" 2>/dev/null || echo 0)" ;;
*" exec") printf 'error: reboot(LINUX_REBOOT_CMD_KEXEC) = -1 EINVAL (Invalid argument)\\n' >&2
          exit 1 ;;
esac
exit 0
"""

#: mount [-t TYPE] -o OPTIONS DEVICE DIR: refuses options without "ro" and a
#: device that blockdev has not made read-only first
FAKE_MOUNT = """\
#!/bin/sh
echo "mount $*" >> "$LOG"
[ -n "$MOUNT_FAIL" ] && { echo "mount: $MOUNT_FAIL" >&2; exit 32; }
while [ $# -gt 2 ]; do
    case "$1" in
    -t) shift 2 ;;
    -o) case ",$2," in *,ro,*) ;; *) echo "mount: not read-only: $2" >&2; exit 1 ;; esac
        shift 2 ;;
    *) echo "mount: bad argument $1" >&2; exit 1 ;;
    esac
done
[ "$(cat "$RO_STATE" 2>/dev/null)" = 1 ] || { echo "mount: $1 is writable" >&2; exit 1; }
cp -R "$FS"/. "$2"/
"""

FAKE_UMOUNT = """\
#!/bin/sh
echo "umount $*" >> "$LOG"
"""

#: blockdev --getro/--setro/--setrw DEVICE, the read-only flag kept in a file
FAKE_BLOCKDEV = """\
#!/bin/sh
echo "blockdev $*" >> "$LOG"
case "$1" in
--getro) cat "$RO_STATE" 2>/dev/null || echo 0 ;;
--setro) [ -n "$SETRO_FAIL" ] && { echo "blockdev: $SETRO_FAIL" >&2; exit 1; }
         echo 1 > "$RO_STATE" ;;
--setrw) echo 0 > "$RO_STATE" ;;
*) exit 1 ;;
esac
"""

#: the real dd, reading the file system image $IMG where the script names
#: the (fake) block device $DEV
FAKE_DD = """\
#!/bin/sh
n=$#
for a; do
    [ -n "$IMG" ] && [ "$a" = "if=$DEV" ] && a="if=$IMG"
    set -- "$@" "$a"
done
shift "$n"
exec /bin/dd "$@"
"""

FAKE_MODPROBE = """\
#!/bin/sh
echo "modprobe $*" >> "$LOG"
"""

#: the PATH the script gives kexec-py (and nothing else)
CLEAN_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def script_with_paths(**paths: object) -> str:
    """The premount script with its fixed paths (``name=value`` lines at its
    top) changed: it reads nothing from the environment, where the words of
    the kernel command line are at boot."""
    text = SCRIPT.read_text()
    for name, value in paths.items():
        line = next(x for x in text.splitlines() if x.startswith(f"{name}="))
        text = text.replace(line, f"{name}={value}", 1)
    return text


def test_the_premount_script_reads_no_variable_of_ours() -> None:
    assert "KEXEC_PY_" not in SCRIPT.read_text().replace("KEXEC_PY_ROOT=...", "")


class Premount:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.ctl = tmp / "ctl"
        self.ctl.mkdir()
        self.log = self.ctl / "log"
        for name, text in (("kexec-py", FAKE_KEXEC_PY.format(ctl=self.ctl)),
                           ("mount", FAKE_MOUNT), ("umount", FAKE_UMOUNT),
                           ("blockdev", FAKE_BLOCKDEV), ("dd", FAKE_DD),
                           ("modprobe", FAKE_MODPROBE)):
            p = self.bin / name
            p.write_text(text)
            p.chmod(0o755)
        (tmp / "functions").write_text(FUNCTIONS)
        self.ro_state = tmp / "ro-state"
        self.fs = tmp / "fs"
        self.fs.mkdir()

    def run(self, cmdline: str, **env: str) -> tuple[int, str, list[str]]:
        (self.tmp / "cmdline").write_text(cmdline + "\n")
        self.log.write_text("")
        (self.ctl / "env").write_text("")
        for name in ("resume.err", "resume.rc"):
            (self.ctl / name).unlink(missing_ok=True)
        if "RESUME_ERR" in env:
            (self.ctl / "resume.err").write_text(env.pop("RESUME_ERR"))
        if "RESUME_RC" in env:
            (self.ctl / "resume.rc").write_text(env.pop("RESUME_RC"))
        program = env.pop("PROGRAM", "kexec-py")
        e = {"PATH": f"{self.bin}:/usr/bin:/bin", "LOG": str(self.log), "FS": str(self.fs),
             "RO_STATE": str(self.ro_state), **env}
        script = self.tmp / "premount"
        script.write_text(script_with_paths(cmdline_file=self.tmp / "cmdline",
                                            functions=self.tmp / "functions",
                                            rundir=self.tmp / "run", kexec_py_name=program))
        r = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=e,
                           check=False, timeout=60)
        return r.returncode, r.stdout + r.stderr, self.log.read_text().splitlines()

    def environments(self) -> dict[str, list[str]]:
        """The environment of each kexec-py call, by its arguments."""
        envs: dict[str, list[str]] = {}
        for line in (self.ctl / "env").read_text().splitlines():
            if line.startswith("== "):
                cur = envs.setdefault(line[3:], [])
            elif line:
                cur.append(line)
        return envs


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
    rc, out, calls = pm.run(f"kexec_resume={img}", PROGRAM="no-such-kexec-py")
    assert rc == 0 and "no-such-kexec-py is not in this initramfs" in out


def test_kexec_py_runs_with_a_clean_environment(pm: Premount) -> None:
    """Words of the kernel command line become init's environment: none of
    them (KEXEC_PY_ROOT=, KEXEC_PY_BACKEND=, ...) reaches kexec-py, nor
    anything else of the script's environment but a fixed PATH."""
    img = pm.tmp / "hibernate.img"
    img.write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"root=/dev/vda kexec_resume={img}", KEXEC_PY_ROOT="/evil",
                            KEXEC_PY_BACKEND="model", KEXEC_PY_JSON="1", PYTHONPATH="/evil",
                            LANG="C.UTF-8", HOME="/", TERM="linux", init="/sbin/init",
                            BOOT_IMAGE="/vmlinuz")
    assert rc == 0 and len(calls) == 3, out
    envs = pm.environments()
    assert list(envs) == [f"--backend linux resume {img}", "--backend linux exec",
                          "--backend linux unload"]
    assert all(env == [CLEAN_PATH] for env in envs.values()), envs


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a block device needs root")


def _block_device(pm: Premount) -> Path:
    dev = pm.tmp / "vdb"
    os.mknod(dev, stat.S_IFBLK | 0o600, os.makedev(7, 250))
    return dev


@needs_root
def test_device_and_path_mounts_read_only(pm: Premount) -> None:
    """The device is made read-only (BLKROSET) before the mount and made
    writable again after the unmount: nothing the kernel does for a mount
    (journal or log replay, orphan clean-up) can write to it."""
    dev = _block_device(pm)
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img")
    mnt = pm.tmp / "run" / "mnt"
    assert rc == 0
    assert calls == [f"blockdev --getro {dev}", f"blockdev --setro {dev}",
                     f"mount -o ro {dev} {mnt}", f"--backend linux resume {mnt}/hibernate.img",
                     f"umount {mnt}", f"blockdev --setrw {dev}",
                     "--backend linux exec", "--backend linux unload"], out
    assert f"resuming from /hibernate.img on {dev}" in out
    # a path that is not there: unmounted and writable again
    rc, out, calls = pm.run(f"kexec_resume={dev}:/other.img")
    assert f"no hibernation image: /other.img on {dev} does not exist" in out
    assert calls == [f"blockdev --getro {dev}", f"blockdev --setro {dev}",
                     f"mount -o ro {dev} {mnt}", f"umount {mnt}", f"blockdev --setrw {dev}"]
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", MOUNT_FAIL="wrong fs type")
    assert f"cannot mount {dev} ({dev}) read-only: mount: wrong fs type" in out
    assert calls[-2:] == [f"mount -o ro {dev} {mnt}", f"blockdev --setrw {dev}"]
    rc, out, calls = pm.run(f"kexec_resume={dev}")
    assert "is a block device: give the image as DEVICE:PATH" in out and calls == []


@needs_root
def test_a_read_only_device_stays_read_only(pm: Premount) -> None:
    dev = _block_device(pm)
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    pm.ro_state.write_text("1\n")
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img")
    mnt = pm.tmp / "run" / "mnt"
    assert calls[:4] == [f"blockdev --getro {dev}", f"mount -o ro {dev} {mnt}",
                         f"--backend linux resume {mnt}/hibernate.img", f"umount {mnt}"], out
    assert not [c for c in calls if c.startswith(("blockdev --setro", "blockdev --setrw"))]


@needs_root
def test_a_device_that_cannot_be_made_read_only_is_not_mounted(pm: Premount) -> None:
    dev = _block_device(pm)
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img",
                            SETRO_FAIL="ioctl error on BLKROSET: Permission denied")
    assert rc == 0 and calls == [f"blockdev --getro {dev}", f"blockdev --setro {dev}"]
    assert (f"kexec-py resume: cannot make {dev} ({dev}) read-only: blockdev: ioctl error on "
            "BLKROSET: Permission denied") in out
    assert "continuing with a normal boot" in out


def _ext_image(path: Path, fstype: str, *features: str) -> Path:
    """A small ext2/3/4 file system in a file, made by mke2fs, with
    ``features`` set by debugfs (``needs_recovery``: as a crash leaves it)."""
    mke2fs = shutil.which("mke2fs") or "/sbin/mke2fs"
    subprocess.run([mke2fs, "-q", "-F", "-t", fstype, str(path), "4M"], check=True,
                   capture_output=True)
    for feature in features:
        debugfs = shutil.which("debugfs") or "/sbin/debugfs"
        subprocess.run([debugfs, "-w", "-R", f"feature {feature}", str(path)], check=True,
                       capture_output=True)
    return path


def _incompat(img: Path) -> int:
    """s_feature_incompat of an ext2/3/4 superblock (at 1024 + 0x60)."""
    with open(img, "rb") as f:
        f.seek(1024 + 0x60)
        return int.from_bytes(f.read(4), "little")


@needs_root
@pytest.mark.parametrize(("fstype", "options"), [
    ("ext4", "ro,noload"), ("ext3", "ro,noload"), ("ext2", "ro"),
    ("xfs", "ro"), ("btrfs", "ro"), ("vfat", "ro"), ("unknown", "ro"),
])
def test_mount_options_by_file_system(pm: Premount, fstype: str, options: str) -> None:
    """ext3/ext4: noload (the journal is not replayed); the others plain ro
    on the read-only device (XFS and btrfs then refuse a dirty log instead
    of replaying it; see the README)."""
    dev = _block_device(pm)
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    env = {"FAKE_FSTYPE": fstype}
    if fstype.startswith("ext"):
        env.update(IMG=str(_ext_image(pm.tmp / "fs.img", fstype)), DEV=str(dev))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", **env)
    mnt = pm.tmp / "run" / "mnt"
    typed = "" if fstype == "unknown" else f"-t {fstype} "
    expect = [*([f"modprobe -q {fstype}"] if typed else []),
              f"blockdev --getro {dev}", f"blockdev --setro {dev}",
              f"mount {typed}-o {options} {dev} {mnt}",
              f"--backend linux resume {mnt}/hibernate.img", f"umount {mnt}",
              f"blockdev --setrw {dev}", "--backend linux exec"]
    assert calls[:len(expect)] == expect, out
    assert "image loaded, jumping to it" in out


@needs_root
@pytest.mark.parametrize("fstype", ["ext4", "ext3"])
def test_a_file_system_that_needs_journal_recovery_is_refused(pm: Premount,
                                                               fstype: str) -> None:
    """needs_recovery (0x4 in s_feature_incompat): mounted without the
    journal it would show a state older than the one the image was saved
    in; replaying the journal would write to the disk.  Neither: the normal
    boot goes on, and nothing touched the device."""
    dev = _block_device(pm)
    img = _ext_image(pm.tmp / "fs.img", fstype, "needs_recovery")
    assert _incompat(img) & 0x4
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", FAKE_FSTYPE=fstype,
                            IMG=str(img), DEV=str(dev))
    assert rc == 0
    assert calls == [f"modprobe -q {fstype}"], out
    assert (f"kexec-py resume: the {fstype} file system on {dev} needs journal recovery "
            "(it was not unmounted cleanly): not resuming from it") in out
    assert out.rstrip().endswith("kexec-py resume: continuing with a normal boot")
    # the same file system, clean again: resumed from
    subprocess.run([shutil.which("debugfs") or "/sbin/debugfs", "-w", "-R",
                    "feature -needs_recovery", str(img)], check=True, capture_output=True)
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", FAKE_FSTYPE=fstype,
                            IMG=str(img), DEV=str(dev))
    assert f"mount -t {fstype} -o ro,noload {dev} {pm.tmp / 'run' / 'mnt'}" in calls, out


@needs_root
def test_an_ext4_superblock_that_cannot_be_read_is_refused(pm: Premount) -> None:
    dev = _block_device(pm)
    junk = pm.tmp / "junk.img"
    junk.write_bytes(bytes(8192))
    (pm.fs / "hibernate.img").write_bytes(b"\x7fELF" + bytes(100))
    rc, out, calls = pm.run(f"kexec_resume={dev}:/hibernate.img", FAKE_FSTYPE="ext4",
                            IMG=str(junk), DEV=str(dev))
    assert calls == ["modprobe -q ext4"], out
    assert f"no ext2/3/4 superblock on {dev}" in out and "continuing with a normal boot" in out


# --- the hook --------------------------------------------------------------------------


#: a console script as pip writes it (the README's ``pip install -e .`` in a
#: venv): the venv's interpreter on the #! line
CONSOLE_SCRIPT = """\
#!{python}
import sys
from kexec_py._start import main
if __name__ == "__main__":
    sys.exit(main())
"""

#: the interpreter a venv's bin/python leads to (a symlink to it, or with
#: --copies a copy of it): what the initramfs gets
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)


def _run_hook(dest: Path, cwd: Path, path: str | None = None,
              **settings: str) -> subprocess.CompletedProcess[str]:
    """The hook into ``dest`` from ``cwd``, with none of this process's
    PYTHON* and KEXEC_PY_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KEXEC_PY_"))}
    env.update(DESTDIR=str(dest), verbose="n", **settings)
    if path is not None:
        env["PATH"] = f"{path}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(["sh", str(HOOK)], capture_output=True, text=True, env=env,
                          cwd=cwd, check=False, timeout=300)


def _initramfs_dir(dest: Path) -> Path:
    # what mkinitramfs makes on a usr-merged system before the hooks run
    for d in ("bin", "lib", "lib64", "sbin"):
        (dest / "usr" / d).mkdir(parents=True)
        (dest / d).symlink_to(f"usr/{d}")
    return dest


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hook as it runs in production: kexec-py found on PATH, a console
    script whose #! line is the interpreter of this test run (the venv's
    bin/python, with kexec-py installed in it, editable), no KEXEC_PY_PYTHON
    or KEXEC_PY_PATH; run from a directory with a decoy ``click`` package
    (the current directory is not a place to import from)."""
    if not HOOK_FUNCTIONS.exists():
        pytest.skip("needs initramfs-tools (apt-get install initramfs-tools)")
    dest = _initramfs_dir(tmp_path_factory.mktemp("initramfs"))
    work = tmp_path_factory.mktemp("hook-cwd")
    program = work / "kexec-py"
    program.write_text(CONSOLE_SCRIPT.format(python=sys.executable))
    program.chmod(0o755)
    (work / "click").mkdir()
    (work / "click" / "__init__.py").write_text("raise ImportError('a decoy in the cwd')\n")
    r = _run_hook(dest, work, path=str(work), KEXEC_PY_KEXEC="y")
    assert r.returncode == 0, r.stderr
    assert "W: kexec-py hook" not in r.stderr, r.stderr
    return dest


def _size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_hook_copies_only_what_is_imported(hooked: Path) -> None:
    lib = hooked / "usr/lib/kexec-py"
    assert (lib / "kexec_py" / "frontend" / "compat.pyc").exists()
    assert (lib / "kexec_py" / "frontend" / "cli.pyc").exists()
    assert not list(lib.rglob("*.py")), "sources are dropped after byte-compiling"
    assert not (lib / "kexec_py" / "model").exists(), "the model backend is not needed at boot"
    for pkg in ("click", "elftools", "rich"):
        assert (lib / pkg / "__init__.pyc").exists(), f"{pkg} (site-packages) was not copied"
    assert list(lib.glob("_cffi_backend*.so"))
    # the start-up of site is not needed: the launcher runs the interpreter with -S
    assert not [p for p in lib.iterdir() if p.name.startswith(("__editable__", "_distutils"))]
    names = {p.name for p in hooked.rglob("*.pyc")}
    assert "tkinter" not in names and "unittest" not in {p.name for p in hooked.rglob("*")}
    assert os.readlink(hooked / "usr/sbin/kexec") == "../bin/kexec-py"
    print(f"\nINITRAMFS hook added {_size(hooked) / 2**20:.1f} MiB uncompressed "
          f"(interpreter {BASE_PYTHON})")


def test_hook_takes_the_interpreter_behind_the_venv(hooked: Path) -> None:
    """The #! line names the venv's bin/python; the initramfs gets the
    interpreter it leads to, at its own path (where it finds its standard
    library), and nothing of the venv but the packages."""
    launcher = (hooked / "usr/bin/kexec-py").read_text().splitlines()
    assert launcher[0] == f"#!{BASE_PYTHON} -SE"
    assert (hooked / BASE_PYTHON.lstrip("/")).is_file()
    assert not (hooked / BASE_PYTHON.lstrip("/")).is_symlink()
    if sys.prefix != sys.base_prefix:  # run from a venv, as the README sets it up
        assert not (hooked / sys.prefix.lstrip("/")).exists(), "a venv path was copied"


def test_hook_adds_the_tools_the_script_uses(hooked: Path) -> None:
    """blockdev (util-linux), dd, od and env (coreutils), whatever busybox
    of the initramfs has or lacks."""
    for tool in ("blockdev", "dd", "od", "env"):
        assert [d for d in ("usr/sbin", "usr/bin") if (hooked / d / tool).is_file()], tool


FAKE_PYTHON = """\
#!/bin/sh
echo "$0" > {ran}
exit 3
"""

#: the first lines of a console script, as pip writes them: with a /bin/sh
#: prologue when the interpreter's path is longer than 127 bytes or has a space
SHEBANGS = {
    "plain": "#!{python}",
    "args": "#!{python} -E",
    "env": "#!/usr/bin/env python3",
    "pip-long": "#!/bin/sh\n'''exec' {python} \"$0\" \"$@\"\n' '''",
    "pip-space": "#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''",
}


@pytest.mark.parametrize("form", sorted(SHEBANGS))
def test_hook_reads_the_interpreter_from_the_programs_first_lines(tmp_path: Path,
                                                                  form: str) -> None:
    """The interpreter here is a fake that fails: the hook says which one it
    ran, and adds nothing."""
    if not HOOK_FUNCTIONS.exists():
        pytest.skip("needs initramfs-tools (apt-get install initramfs-tools)")
    bindir = tmp_path / ("my venv" if form == "pip-space" else "v" * 120) / "bin"
    bindir.mkdir(parents=True)
    python = bindir / "python3"
    python.write_text(FAKE_PYTHON.format(ran=tmp_path / "ran"))
    python.chmod(0o755)
    program = tmp_path / "kexec-py"
    program.write_text(SHEBANGS[form].format(python=python) +
                       "\nimport sys\nfrom kexec_py._start import main\nsys.exit(main())\n")
    program.chmod(0o755)
    dest = _initramfs_dir(tmp_path / "dest")
    r = _run_hook(dest, tmp_path, path=str(bindir) if form == "env" else None,
                  KEXEC_PY_PROGRAM=str(program))
    assert r.returncode == 0, r.stderr
    assert f"W: kexec-py hook: tracing kexec-py with {python} failed" in r.stderr, r.stderr
    assert (tmp_path / "ran").read_text().strip() == str(python)
    assert not (dest / "usr/bin/kexec-py").exists()


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

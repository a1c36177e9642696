"""kexec-tools compatibility mode (kexec_py/frontend/compat.py): the parser, the
state machine of kexec-tools' main(), the exit statuses and first error
lines, run against a recording backend; ``kexec`` through main() and
through a symlink; the -d/-vv system-call trace; status's explanations;
NO_COLOR and the progress bar."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fakeroot import QEMU_MEMMAP, make_root
from kernelgen import ElfSpec, Load, iomem_for, make_bzimage, make_elf, vmlinux_spec, write

from kexec_py.boundary import abi, procfs, syscall
from kexec_py.boundary.backends import Status
from kexec_py.boundary.lock import lock_path
from kexec_py.errors import SyscallError
from kexec_py.frontend import compat
from kexec_py.frontend.compat import Usage, decide, parse
from kexec_py.segments import Segment

REPO = Path(__file__).resolve().parent.parent
CRASH_IOMEM = iomem_for(QEMU_MEMMAP) + "  10000000-17ffffff : Crash kernel\n"


class Recorder:
    """A backend that records every call; ``fail`` maps a call name to the
    errno it fails with."""

    name = "recorder"
    touches_host = False

    def host_refusal(self) -> str | None:
        return None

    def lock_path(self) -> Path:
        return lock_path(self.root)

    def __init__(self, root: Path, loaded: bool = False, crash_loaded: bool = False,
                 fail: dict[str, int] | None = None) -> None:
        self.root = root
        self.loaded = loaded
        self.crash_loaded = crash_loaded
        self.fail = fail or {}
        self.calls: list[tuple[Any, ...]] = []

    def _maybe_fail(self, name: str, text: str) -> None:
        if name in self.fail:
            raise SyscallError(text, self.fail[name], syscall.hint_for(self.fail[name]))

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        self.calls.append(("kexec_load", entry, list(segments), flags))
        self._maybe_fail("kexec_load", f"kexec_load(entry={entry:#x}, flags={flags:#x})")
        if segments:
            if flags & abi.KEXEC_ON_CRASH:
                self.crash_loaded = True
            else:
                self.loaded = True
        elif flags & abi.KEXEC_ON_CRASH:
            self.crash_loaded = False
        else:
            self.loaded = False

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                        flags: int) -> None:
        kpath = os.readlink(f"/proc/self/fd/{kernel_fd}") if kernel_fd >= 0 else None
        ipath = os.readlink(f"/proc/self/fd/{initrd_fd}") if initrd_fd >= 0 else None
        self.calls.append(("kexec_file_load", kpath, ipath, cmdline, flags))
        self._maybe_fail("kexec_file_load", f"kexec_file_load(flags={flags:#x})")
        crash = bool(flags & abi.KEXEC_FILE_ON_CRASH)
        value = not flags & abi.KEXEC_FILE_UNLOAD
        if crash:
            self.crash_loaded = value
        else:
            self.loaded = value

    def reboot_kexec(self) -> None:
        self.calls.append(("reboot",))
        self._maybe_fail("reboot", "reboot(LINUX_REBOOT_CMD_KEXEC)")

    def sync(self) -> None:
        self.calls.append(("sync",))

    def status(self) -> Status:
        return Status(backend=self.name, loaded=self.loaded, crash_loaded=self.crash_loaded)

    def image_loaded(self, crash: bool) -> bool | None:
        return self.crash_loaded if crash else self.loaded

    def memory_map(self) -> Any:
        return procfs.memory_map(self.root)

    def cmdline(self) -> str:
        c = procfs.cmdline(self.root)
        assert c is not None
        return c

    def staged_supported(self) -> bool:
        return False

    def pgmap(self) -> Any:
        raise AssertionError("not used")

    def close(self) -> None:
        pass

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class Run:
    """One compat run: exit status, stdout, stderr, and what it did."""

    def __init__(self, be: Recorder, argv: list[str], execv_ok: bool = True) -> None:
        self.be = be
        self.execs: list[tuple[str, list[str]]] = []
        self.ifdowns = 0
        out, err = io.StringIO(), io.StringIO()

        def execv(path: str, args: list[str]) -> None:
            self.execs.append((path, args))
            if not execv_ok:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)

        def ifdown(trace: Any) -> None:
            self.ifdowns += 1

        # the load lock is tests/test_lock.py's subject: none here
        env = compat.Env(lambda: be, be.root, out, err, execv, ifdown, lock=lambda: None)
        self.rc = compat.run(argv, env)
        self.out = out.getvalue()
        self.err = err.getvalue()

    @property
    def first(self) -> str:
        return self.err.splitlines()[0] if self.err else ""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "root", memmap=QEMU_MEMMAP, iomem=iomem_for(QEMU_MEMMAP))


@pytest.fixture
def crash_root(tmp_path: Path) -> Path:
    return make_root(tmp_path / "croot", memmap=QEMU_MEMMAP, iomem=CRASH_IOMEM,
                     crash_size=0x8000000)


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    return str(write(tmp_path / "bzImage", make_bzimage()))


@pytest.fixture
def initrd(tmp_path: Path) -> str:
    return str(write(tmp_path / "initrd.img", b"\x1f\x8b" + bytes(5000)))


# --- the parser ----------------------------------------------------------------------


def _opts(argv: list[str]) -> list[tuple[str, str | None]]:
    return [(o.key, v) for o, v in parse(argv).options]


def test_parse_clusters_values_and_permutation() -> None:
    p = parse(["-lsd", "K", "-tbzImage64", "--append", "a b", "--initrd=I", "-t", "elf-x86_64"])
    assert [(o.key, v) for o, v in p.options] == [
        ("load", None), ("file", None), ("debug", None), ("type", "bzImage64"),
        ("append", "a b"), ("initrd", "I"), ("type", "elf-x86_64")]
    assert p.operands == ["K"]


def test_parse_prefixes_aliases_and_double_dash() -> None:
    assert _opts(["--comm=x", "--ramdisk", "r", "--load-pa"]) == [
        ("append", "x"), ("initrd", "r"), ("panic", None)]
    assert parse(["-l", "--", "-weird-name"]).operands == ["-weird-name"]
    assert _opts(["--mem-max=0x1000"]) == [("mem-max", "0x1000")]


@pytest.mark.parametrize(("argv", "message"), [
    (["--bogus"], "kexec: unrecognized option '--bogus'"),
    (["-z"], "kexec: invalid option -- 'z'"),
    (["-t"], "kexec: option requires an argument -- 't'"),
    (["--append"], "kexec: option '--append' requires an argument"),
    (["--load=1"], "kexec: option '--load' doesn't allow an argument"),
    (["--reu"], "kexec: option '--reu' is ambiguous; possibilities: '--reuse-cmdline' "
                "'--reuse-video-type' '--reuseinitrd'"),
    (["--mem-min=zz"], "Bad option value in --mem-min=zz"),
    (["--entry=0x10g"], "Bad option value in --entry=0x10g"),
])
def test_usage_errors_as_getopt_words_them(argv: list[str], message: str, root: Path) -> None:
    r = Run(Recorder(root), argv)
    assert r.rc == 1
    assert r.first == message
    assert r.out.startswith("Usage: kexec [OPTION]... [kernel]")
    assert r.be.calls == []


@pytest.mark.parametrize("option", [
    "--reuseinitrd", "--load-jump-back-helper", "--hotplug", "--console-serial", "--noefi",
    "--serial=ttyS0", "--args-elf", "--dtb=x.dtb", "--real-mode", "--elf64-core-headers"])
def test_unimplemented_options_are_refused_by_name(option: str, root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-l", option, kernel])
    name = option.split("=")[0]
    assert r.rc == 1
    assert r.first == f"kexec: option '{name}' is not implemented by kexec-py"
    assert r.err.splitlines()[1].startswith("hint: ")
    assert r.be.calls == []


def test_numbers_are_strtoul_base_0() -> None:
    p = decide(parse(["--mem-min=0x100000", "--mem-max=0777", "--entry=4096", "-l", "K"]))
    assert (p.mem_min, p.mem_max, p.entry) == (0x100000, 0o777, 4096)


# --- the state machine of kexec-tools' main() ------------------------------------------


@pytest.mark.parametrize(("argv", "expect"), [
    (["K"], dict(do_load=True, do_shutdown=True, do_exec=False, do_sync=True, do_ifdown=False)),
    (["-l", "K"], dict(do_load=True, do_shutdown=False, do_exec=False)),
    (["-e"], dict(do_load=False, do_exec=True, do_sync=True, do_ifdown=True)),
    (["-e", "-x", "-y"], dict(do_exec=True, do_sync=False, do_ifdown=False)),
    (["-f", "K"], dict(do_load=True, do_exec=True, do_shutdown=False, do_ifdown=True)),
    (["-u"], dict(do_load=False, do_unload=True, do_sync=False, crash=False)),
    (["-p", "-u"], dict(do_load=False, do_unload=True, crash=True)),
    (["-u", "-p", "K"], dict(do_load=True, do_unload=True, crash=True)),
    (["-S"], dict(do_status=True, crash=True, do_load=False)),
    (["-S", "-l"], dict(do_status=True, crash=False)),
    (["-S", "-p"], dict(do_status=True, crash=True)),
    (["-p", "--load-preserve-context", "K"], dict(crash=False, preserve_context=True)),
    (["-l", "-e"], dict(do_load=False, do_exec=True)),
    (["-e", "-l", "K"], dict(do_load=True, do_exec=False)),
    (["-c", "-a", "-s", "-l", "K"], dict(syscall="file")),
    (["-i", "-l", "K"], dict(do_load=True)),
])
def test_state_machine(argv: list[str], expect: dict[str, object]) -> None:
    p = decide(parse(argv))
    for k, v in expect.items():
        assert getattr(p, k) == v, (argv, k)


@pytest.mark.parametrize("argv", [["-e", "--append=x"], ["-u", "--initrd", "I"],
                                  ["-S", "--reuse-cmdline"]])
def test_loader_options_without_a_load_are_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(Usage) as e:
        decide(parse(argv))
    assert e.value.message == f"kexec: {argv[1].split('=')[0]}: only for loading a kernel"


def test_stray_operands_are_refused() -> None:
    with pytest.raises(Usage, match="unexpected argument 'extra'"):
        decide(parse(["-l", "K", "extra"]))
    with pytest.raises(Usage, match="unexpected argument 'K'"):
        decide(parse(["-e", "K"]))


# --- running: loads ---------------------------------------------------------------------


def test_load_uses_kexec_file_load_first(root: Path, kernel: str, initrd: str) -> None:
    r = Run(Recorder(root), ["-l", kernel, f"--initrd={initrd}", "--append=console=ttyS0 x=1"])
    assert (r.rc, r.err, r.out) == (0, "", "")
    # kexec-tools syncs after -l too: -l leaves do_sync as it was
    assert r.be.calls == [("kexec_file_load", kernel, initrd, b"console=ttyS0 x=1", 0), ("sync",)]
    assert r.be.loaded


def test_load_without_initrd_and_command_line(root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["--load", kernel])
    assert r.rc == 0
    assert r.be.calls == [("kexec_file_load", kernel, None, None, abi.KEXEC_FILE_NO_INITRAMFS),
                          ("sync",)]
    r = Run(Recorder(root), ["-l", "-y", kernel])
    assert r.be.names() == ["kexec_file_load"]


def test_load_c_uses_kexec_load_with_the_arch_flags(root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-c", "-l", kernel, "--command-line=quiet"])
    assert r.rc == 0, r.err
    (name, entry, segs, flags), _sync = r.be.calls
    assert name == "kexec_load" and flags == 0x3E0000 and entry and segs


def test_auto_falls_back_to_kexec_load(root: Path, kernel: str) -> None:
    be = Recorder(root, fail={"kexec_file_load": errno.ENOSYS})
    r = Run(be, ["-l", kernel])
    assert r.rc == 0, r.err
    assert be.names() == ["kexec_file_load", "kexec_load", "sync"]


def test_reuse_cmdline_concatenates_like_kexec_tools(tmp_path: Path, kernel: str) -> None:
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, iomem=CRASH_IOMEM,
                     cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda crashkernel=128M quiet")
    r = Run(Recorder(root), ["-l", "--reuse-cmdline", "--append=quiet x=2", kernel])
    assert r.be.calls[0][3] == b"root=/dev/vda crashkernel=128M quiet quiet x=2"
    r = Run(Recorder(root), ["-p", "--reuse-cmdline", kernel])
    assert r.be.calls[0][3] == b"root=/dev/vda quiet"
    assert r.be.calls[0][4] == abi.KEXEC_FILE_ON_CRASH | abi.KEXEC_FILE_NO_INITRAMFS


@pytest.mark.parametrize(("fail", "argv", "first", "rc"), [
    ({"kexec_file_load": errno.EPERM}, ["-l"], "kexec_file_load failed: Operation not permitted",
     255),
    ({"kexec_file_load": errno.ENOSYS}, ["-s", "-l"], "syscall kexec_file_load not available.",
     253),
    ({"kexec_load": errno.EBUSY}, ["-c", "-l"], "kexec_load failed: Device or resource busy",
     255),
    ({"kexec_file_load": errno.EKEYREJECTED}, ["-a", "-l"],
     "kexec_file_load failed: Key was rejected by service", 255),
])
def test_failed_loads(root: Path, kernel: str, fail: dict[str, int], argv: list[str],
                      first: str, rc: int) -> None:
    r = Run(Recorder(root, fail=fail), [*argv, kernel])
    assert r.rc == rc
    lines = r.err.splitlines()
    assert lines[0] == first
    assert lines[1].startswith("kexec-py: kexec_")
    assert lines[2].startswith("hint: ")
    assert not r.be.loaded


def test_missing_and_unknown_files(root: Path, tmp_path: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-l", str(tmp_path / "nope")])
    assert (r.rc, r.first) == (1, f"Cannot open `{tmp_path / 'nope'}': No such file or directory")
    r = Run(Recorder(root), ["-l", kernel, f"--initrd={tmp_path / 'no-initrd'}"])
    assert r.rc == 1 and r.first.startswith(f"Cannot open `{tmp_path / 'no-initrd'}'")
    junk = write(tmp_path / "junk", b"this is not a kernel" * 100)
    r = Run(Recorder(root), ["-l", str(junk)])
    assert (r.rc, r.first) == (255, f"Cannot determine the file type of {junk}")
    r = Run(Recorder(root), ["-l"])
    assert (r.rc, r.first) == (255, "No kernel specified")
    assert r.be.calls == []


def test_type_option(root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-l", "-t", "elf-x86_64", kernel])
    assert (r.rc, r.first) == (255, "Wrong file type elf-x86_64, file matches type bzImage64")
    r = Run(Recorder(root), ["-l", "--type=multiboot-x86", kernel])
    assert (r.rc, r.first) == (255, "Unsupported kernel type multiboot-x86")
    assert "not implemented by kexec-py" in r.err
    r = Run(Recorder(root), ["-l", "--type=zImage", kernel])
    assert (r.rc, r.first) == (255, "Unsupported kernel type zImage")
    r = Run(Recorder(root), ["-l", "-tbzImage64", kernel])
    assert r.rc == 0


def test_crash_kernel_needs_a_reservation(root: Path, crash_root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-p", kernel])
    assert (r.rc, r.first) == (1, "Memory for crashkernel is not reserved")
    assert r.be.calls == []
    r = Run(Recorder(crash_root), ["-p", kernel, "--append=irqpoll"])
    assert r.rc == 0
    assert r.be.crash_loaded and not r.be.loaded


def test_preserve_context(root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["--load-preserve-context", kernel])
    assert (r.rc, r.first) == (1, "Please specify memory range used by kexeced kernel")
    r = Run(Recorder(root), ["-s", "--load-preserve-context", "--mem-max=0x7fffffff", kernel])
    assert (r.rc, r.first) == (1, "--load-preserve-context not supported with kexec_file_load")
    r = Run(Recorder(root), ["--load-preserve-context", "--mem-min=0x1000000",
                             "--mem-max=0x8ffffff", kernel])
    assert r.rc == 0, r.err
    (name, _entry, _segs, flags), _sync = r.be.calls
    assert name == "kexec_load" and flags == 0x3E0000 | abi.KEXEC_PRESERVE_CONTEXT


def test_args_none_jumps_to_the_elf_entry(root: Path, tmp_path: Path, kernel: str) -> None:
    spec = vmlinux_spec()
    elf = write(tmp_path / "vmlinux", make_elf(spec))
    r = Run(Recorder(root), ["-l", "--args-none", str(elf)])
    assert r.rc == 0, r.err
    (name, entry, segs, flags), _sync = r.be.calls
    assert name == "kexec_load" and entry == spec.entry and flags == 0x3E0000
    assert [s.mem for s in segs] == sorted(ld.paddr for ld in spec.loads)  # no stub, no params
    r = Run(Recorder(root), ["-l", "--args-none", kernel])
    assert r.rc == 1 and "--args-none applies to ELF images" in r.first
    # --args-linux is kexec-py's way for ELF kernels: entry stub + boot_params
    r = Run(Recorder(root), ["-l", "--args-linux", str(elf)])
    assert r.rc == 0 and r.be.calls[0][1] != spec.entry
    small = write(tmp_path / "tiny.elf", make_elf(ElfSpec(loads=[Load(0x2000000, 0x100, 0x100)],
                                                          entry=0x2000000)))
    r = Run(Recorder(root), ["-l", "--args-none", "--entry=0x2000010", str(small)])
    assert r.rc == 0 and r.be.calls[0][1] == 0x2000010


# --- running: exec, unload, status, shutdown --------------------------------------------


def test_exec_with_nothing_loaded(root: Path) -> None:
    r = Run(Recorder(root), ["-e"])
    assert (r.rc, r.first) == (1, "Nothing has been loaded!")
    assert r.be.calls == [] and r.ifdowns == 0


class RunningKernel(Recorder):
    """A recorder that says it is the running kernel, at root /."""

    name = "linux"
    touches_host = True

    def __init__(self, **kw: Any) -> None:
        super().__init__(Path("/"), **kw)


def test_exec_syncs_brings_interfaces_down_and_reboots(root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procfs, "kexec_loaded", lambda root: True)
    r = Run(RunningKernel(loaded=True), ["-e"])
    assert r.rc == 0 and r.be.names() == ["sync", "reboot"] and r.ifdowns == 1
    r = Run(RunningKernel(loaded=True), ["-exy"])
    assert r.rc == 0 and r.be.names() == ["reboot"] and r.ifdowns == 0
    # never for a model backend or another --root: only the running kernel's exec
    r = Run(Recorder(root, loaded=True), ["-e"])
    assert r.rc == 0 and r.be.names() == ["sync", "reboot"] and r.ifdowns == 0


def test_netdown_clears_iff_up_of_the_interfaces_that_are_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import _socket
    import fcntl

    from kexec_py.frontend import netdown

    flags = {"lo": 0x49, "eth0": 0x1043, "wg0": 0x90}
    calls: list[tuple[str, int]] = []

    def ioctl(fd: int, req: int, arg: bytes) -> bytes:
        name, value = netdown.IFREQ.unpack(arg)
        name = name.rstrip(b"\0").decode()
        if name == "wg0":
            raise OSError(errno.ENODEV, "No such device")
        if req == netdown.SIOCGIFFLAGS:
            return netdown.IFREQ.pack(name.encode(), flags[name])
        calls.append((name, value))
        return arg

    monkeypatch.setattr(_socket, "if_nameindex",
                        lambda: [(1, "lo"), (2, "eth0"), (3, "wg0"), (4, "dummy0")])
    flags["dummy0"] = 0x82  # down already
    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    lines: list[str] = []
    assert netdown.ifdown(lines.append) == 2
    assert calls == [("lo", 0x48), ("eth0", 0x1042)]
    assert "ifdown wg0: No such device" in lines


def test_exec_refused(root: Path) -> None:
    r = Run(Recorder(root, loaded=True, fail={"reboot": errno.EINVAL}), ["-e", "-y"])
    assert (r.rc, r.first) == (255, "kexec failed: Invalid argument")


def test_force_loads_and_execs_without_shutdown(root: Path, kernel: str) -> None:
    r = Run(Recorder(root), ["-f", kernel, "--append=x"])
    assert r.rc == 0
    assert r.be.names() == ["kexec_file_load", "sync", "reboot"]
    assert r.execs == [] and r.ifdowns == 0  # not the running kernel: interfaces stay up


def test_no_l_or_e_loads_then_runs_shutdown(root: Path, kernel: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # the running kernel at root /: this machine's shutdown -r now (execv recorded)
    monkeypatch.setattr(procfs, "kexec_loaded", lambda root: True)
    r = Run(RunningKernel(), [kernel, "--append=x"])
    assert r.rc == 0
    assert r.be.names() == ["kexec_file_load"]
    assert r.execs == [("/sbin/shutdown", ["shutdown", "-r", "now"])]
    r = Run(RunningKernel(), [kernel, "--append=x"], execv_ok=False)
    assert (r.rc, r.first) == (255, "shutdown: No such file or directory")
    assert [p for p, _ in r.execs] == ["/sbin/shutdown", "/etc/shutdown", "/bin/shutdown"]
    r = Run(RunningKernel(fail={"kexec_file_load": errno.EPERM}), [kernel, "--append=x"])
    assert r.rc == 255 and r.execs == []
    # any other backend (the model): no shutdown; the reboot's exec, in the backend
    r = Run(Recorder(root), [kernel, "--append=x"])
    assert r.rc == 0 and r.execs == [] and r.ifdowns == 0
    assert r.be.names() == ["kexec_file_load", "sync", "reboot"]
    assert "not running this machine's 'shutdown -r now'" in r.err


@pytest.mark.parametrize(("argv", "call"), [
    (["-u"], ("kexec_load", 0, [], 0)),
    (["-p", "-u"], ("kexec_load", 0, [], abi.KEXEC_ON_CRASH)),
    (["-c", "-u"], ("kexec_load", 0, [], 0)),
    (["-s", "-u"], ("kexec_file_load", None, None, None, abi.KEXEC_FILE_UNLOAD)),
    (["-s", "-p", "-u"], ("kexec_file_load", None, None, None,
                          abi.KEXEC_FILE_UNLOAD | abi.KEXEC_FILE_ON_CRASH)),
])
def test_unload(root: Path, argv: list[str], call: tuple[Any, ...]) -> None:
    be = Recorder(root, loaded=True, crash_loaded=True)
    r = Run(be, argv)
    assert r.rc == 0 and be.calls == [call]


def test_unload_failures(root: Path) -> None:
    r = Run(Recorder(root, fail={"kexec_load": errno.EPERM, "kexec_file_load": errno.EPERM}),
            ["-u"])
    assert (r.rc, r.first) == (255, "kexec unload failed: Operation not permitted")
    r = Run(Recorder(root, fail={"kexec_file_load": errno.EPERM}), ["-s", "-u"])
    assert (r.rc, r.first) == (255, "kexec_file_load(unload) failed: Operation not permitted")


@pytest.mark.parametrize(("argv", "loaded", "crash_loaded", "rc"), [
    (["-S"], True, False, 0), (["-S"], False, True, 1),
    (["-S", "-l"], True, False, 1), (["-l", "-S"], False, True, 0),
    (["--status", "-p"], False, True, 1),
])
def test_status_exit_codes(root: Path, argv: list[str], loaded: bool, crash_loaded: bool,
                           rc: int) -> None:
    r = Run(Recorder(root, loaded=loaded, crash_loaded=crash_loaded), argv)
    assert (r.rc, r.out, r.err) == (rc, "", "")


def test_status_of_the_linux_backend_reads_sysfs(tmp_path: Path) -> None:
    from kexec_py.boundary.backends.linux import LinuxBackend

    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, loaded=1)
    be = LinuxBackend(root)
    env = compat.Env(lambda: be, root, io.StringIO(), io.StringIO())
    assert compat.run(["-S", "-l"], env) == 1
    assert compat.run(["-S"], env) == 0
    (root / "sys/kernel/kexec_crash_loaded").unlink()
    assert compat.run(["-S"], env) == 255


def test_print_ckr_size_help_and_version(crash_root: Path, root: Path) -> None:
    r = Run(Recorder(crash_root), ["--print-ckr-size"])
    assert (r.rc, r.out) == (0, f"{0x8000000}\n")
    assert Run(Recorder(root), ["--print-ckr-size"]).out == "0\n"
    r = Run(Recorder(root), ["-h"])
    assert r.rc == 0 and "--reuse-cmdline" in r.out and "COMPATIBILITY MODE" in r.out
    from kexec_py import __version__

    r = Run(Recorder(root), ["-v", "-e"])
    assert (r.rc, r.out) == (0, f"kexec-py {__version__}\n")


def test_debug_turns_the_syscall_trace_on_for_the_run(root: Path, kernel: str) -> None:
    seen: list[Any] = []

    class Tracing(Recorder):
        def kexec_file_load(self, *a: Any) -> None:
            seen.append(syscall.trace)
            super().kexec_file_load(*a)

    r = Run(Tracing(root), ["-d", "-l", kernel])
    assert r.rc == 0 and seen and seen[0] is not None
    assert syscall.trace is None
    r = Run(Tracing(root), ["-l", kernel])
    assert seen[-1] is None


# --- invoked as kexec -----------------------------------------------------------------


def test_main_dispatches_on_the_program_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from kexec_py.frontend.main import main

    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, loaded=0)
    monkeypatch.setenv("KEXEC_PY_BACKEND", "linux")
    monkeypatch.setenv("KEXEC_PY_ROOT", str(root))
    for prog in ("kexec", "/usr/sbin/kexec"):
        with pytest.raises(SystemExit) as e:
            main(["-e"], prog)
        assert e.value.code == 1
        assert capsys.readouterr().err.splitlines()[0] == "Nothing has been loaded!"
    with pytest.raises(SystemExit) as e:
        main(["-S", "-l"], "kexec")
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:  # getopt names argv[0] as given
        main(["--bogus"], "/usr/sbin/kexec")
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith("/usr/sbin/kexec: unrecognized option '--bogus'\n")
    with pytest.raises(SystemExit) as e:  # another name: the native CLI
        main(["-e"], "kexec-py")
    assert e.value.code == 2


def test_the_compat_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kexec_py.frontend.cli import run

    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, loaded=1)
    for argv, code in ((["compat", "--", "-S", "-l"], 1), (["compat", "-S"], 0),
                       (["compat", "--", "--bogus"], 1), (["compat", "--", "-e", "-K"], 1)):
        with pytest.raises(SystemExit) as e:
            run(["--backend", "linux", "--root", str(root), *argv])
        assert e.value.code == code, argv
    err = capsys.readouterr().err
    assert "kexec: unrecognized option '--bogus'" in err
    assert "kexec: invalid option -- 'K'" in err


def test_a_symlink_named_kexec(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "kexec-py"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from kexec_py.frontend.main import main
        sys.exit(main())
        """))
    script.chmod(0o755)
    (bindir / "kexec").symlink_to("kexec-py")
    root = make_root(tmp_path / "r", memmap=QEMU_MEMMAP, loaded=0)
    env = {**os.environ, "KEXEC_PY_BACKEND": "linux", "KEXEC_PY_ROOT": str(root)}

    def kexec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bindir / "kexec"), *args], capture_output=True, text=True,
                              env=env, check=False)

    from kexec_py import __version__

    r = kexec("--version")
    assert (r.returncode, r.stdout) == (0, f"kexec-py {__version__}\n")
    r = kexec("-e")
    assert (r.returncode, r.stderr.splitlines()[0]) == (1, "Nothing has been loaded!")
    r = kexec("-l", "--serial=ttyS0", "x")
    assert r.returncode == 1
    assert r.stderr.startswith("kexec: option '--serial' is not implemented by kexec-py\nhint: ")
    (root / "sys/kernel/kexec_crash_loaded").write_text("1\n")
    assert kexec("-S").returncode == 1
    assert kexec("-S", "-l").returncode == 0
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env,
                       check=False)
    assert r.stdout == f"kexec-py {__version__}\n"


# --- polish: the syscall trace, status, NO_COLOR, progress -------------------------------


class FakeFFI:
    NULL = None

    def __init__(self, rc: int, err: int) -> None:
        self.rc, self.err_code, self.errno = rc, err, 0

    def new(self, _type: str, init: Any) -> Any:
        return [type("S", (), {})() for _ in range(init)] if isinstance(init, int) else init

    def cast(self, _type: str, value: Any) -> Any:
        return value

    def from_buffer(self, buf: Any) -> Any:
        return buf


class FakeLib:
    def __init__(self, ffi: FakeFFI) -> None:
        self.ffi = ffi

    def syscall(self, *args: Any) -> int:
        self.ffi.errno = self.ffi.err_code
        return self.ffi.rc

    def sync(self) -> None:
        pass


@pytest.fixture
def fake_syscalls(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(rc: int, err: int = 0) -> list[str]:
        ffi = FakeFFI(rc, err)
        monkeypatch.setattr(syscall, "_ffi", ffi)
        monkeypatch.setattr(syscall, "_lib", FakeLib(ffi))
        lines: list[str] = []
        monkeypatch.setattr(syscall, "trace", lines.append)
        return lines

    return install


def test_trace_shows_each_call_with_its_arguments_and_result(fake_syscalls: Any) -> None:
    lines = fake_syscalls(0)
    segs = [Segment(0x100000, 0x2000, 5, b"hello", "kernel"), Segment(0x200000, 0x1000, 0, None)]
    syscall.kexec_load(0x100000, segs, 0x3E0000, abi.host_abi("x86_64"))
    assert lines == [
        "kexec_load(entry=0x100000, nr_segments=2, flags=0x3e0000)",
        "  segment[0]: mem=0x100000 memsz=0x2000 bufsz=0x5 (kernel)",
        "  segment[1]: mem=0x200000 memsz=0x1000 bufsz=0x0",
        "  = 0"]
    lines = fake_syscalls(-1, errno.EPERM)
    with pytest.raises(SyscallError):
        syscall.kexec_file_load(3, -1, b"quiet", 4, abi.host_abi("x86_64"))
    assert lines == ["kexec_file_load(kernel_fd=3, initrd_fd=-1, cmdline_len=6, "
                     "cmdline='quiet', flags=0x4)", "  = -1 EPERM (Operation not permitted)"]
    lines = fake_syscalls(-1, errno.EINVAL)
    with pytest.raises(SyscallError):
        syscall.reboot_kexec(abi.host_abi("x86_64"))
    assert lines[0].startswith("reboot(") and lines[1] == "  = -1 EINVAL (Invalid argument)"


def test_vv_installs_the_trace_for_the_command_only(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from kexec_py.frontend import cli

    seen: list[Any] = []
    monkeypatch.setattr(cli.Ctx, "backend", lambda self: seen.append(syscall.trace)
                        or Recorder(tmp_path))
    runner = CliRunner()
    runner.invoke(cli.cli, ["-vv", "unload"])
    assert seen and all(t is cli.info for t in seen)  # backend() may be asked more than once
    seen.clear()
    runner.invoke(cli.cli, ["-v", "unload"])
    assert seen and all(t is None for t in seen)
    assert syscall.trace is None


def test_status_explains_a_missing_kexec_file_load(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from kexec_py.boundary.backends.linux import LinuxBackend

    be = LinuxBackend(make_root(tmp_path / "r", memmap=QEMU_MEMMAP))
    answers = {"kexec_load": "yes", "kexec_file_load": "no"}
    monkeypatch.setattr(be, "_probe", lambda which: answers[which])
    st = be.status()
    assert any("no kexec_file_load" in p and "ENOSYS" in p for p in st.problems), st.problems
    answers.update(kexec_load="no", kexec_file_load="yes")
    st = be.status()
    assert any("no kexec_load" in p for p in st.problems), st.problems


def test_no_color_means_no_styles_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from kexec_py.frontend import output

    def render(no_color: str | None) -> str:
        if no_color is None:
            monkeypatch.delenv("NO_COLOR", raising=False)
        else:
            monkeypatch.setenv("NO_COLOR", no_color)
        con = output.console()
        buf = io.StringIO()
        con.file = buf
        con.print("[bold red]x[/]")
        return buf.getvalue()

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: as on a terminal
    assert "\x1b[" in render(None) or "\x1b[" in render("")
    assert "\x1b[" not in render("1")


def test_progress_bar_only_on_a_terminal_and_after_the_delay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kexec_py.frontend import output

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with output.ProgressBar(100, "x", delay=0) as bar:
        bar.update(50)
        assert bar._bar is None and not bar.enabled
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with output.ProgressBar(100, "x", delay=3600) as bar:
        bar.update(50)
        assert bar._bar is None
    with output.ProgressBar(100, "loading", delay=0) as bar:
        bar.update(50)
        assert bar._bar is not None
        bar.update(100)
    assert bar._bar is None
    with output.ProgressBar(100, "x", enabled=False, delay=0) as bar:  # --json
        bar.update(50)
        assert bar._bar is None


# --- --json: the documented schemas (man page, JSON OUTPUT) ------------------------------

SCHEMAS = {
    "status": {"backend", "kernel", "loaded", "crash_loaded", "crash_size", "kexec_load",
               "kexec_file_load", "staged", "lockdown", "load_disabled", "load_limits",
               "cap_sys_boot", "problems", "running", "staging"},
    "load": {"loaded", "crash", "syscall", "flags", "kernel", "initrd", "cmdline", "entry",
             "fallback_from"},
    "plan": {"syscall", "entry", "calls"},
    "unload": {"unloaded", "crash", "syscall"},
    "inspect": {"file", "format", "size", "header", "loadable", "problem", "entry", "segments",
                "notes"},
    "error": {"error", "hint", "exit"},
}


def _json_run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    import json

    from kexec_py.frontend.cli import run

    with pytest.raises(SystemExit) as e:
        run(args)
    out = capsys.readouterr().out
    return int(e.value.code or 0), json.loads(out)


def test_json_schemas(tmp_path: Path, root: Path, kernel: str, fake_syscalls: Any,
                      capsys: pytest.CaptureFixture[str]) -> None:
    g = ["--backend", "linux", "--root", str(root), "--json"]
    rc, doc = _json_run([*g, "status"], capsys)
    assert rc == 0 and set(doc) == SCHEMAS["status"]
    assert isinstance(doc["problems"], list) and isinstance(doc["load_limits"], dict)
    rc, doc = _json_run([*g, "load", "-c", kernel, "--dry-run"], capsys)
    assert rc == 0 and set(doc) == SCHEMAS["plan"]
    assert set(doc["calls"][0]) == {"stage", "flags", "segments"}
    assert set(doc["calls"][0]["segments"][0]) == {"mem", "memsz", "bufsz"}
    rc, doc = _json_run([*g, "inspect", kernel], capsys)
    assert rc == 0 and SCHEMAS["inspect"] <= set(doc)
    # what changes the machine: on the model (the linux backend under --root calls nothing)
    m = ["--backend", "model", "--model-state", str(tmp_path / "model"), "--json"]
    rc, doc = _json_run([*m, "load", "-s", kernel, "--append", "quiet"], capsys)
    assert rc == 0 and set(doc) == SCHEMAS["load"]
    assert (doc["syscall"], doc["cmdline"], doc["loaded"]) == ("kexec_file_load", "quiet", True)
    rc, doc = _json_run([*m, "unload"], capsys)
    assert rc == 0 and set(doc) == SCHEMAS["unload"]
    assert _json_run([*m, "model-reset", "--no-cap-sys-boot"], capsys)[0] == 0
    rc, doc = _json_run([*m, "load", "-s", kernel], capsys)
    assert rc == 1 and set(doc) == SCHEMAS["error"] and doc["exit"] == 1
    assert "EPERM" in doc["error"] and doc["hint"]
    rc, doc = _json_run([*g, "load", str(tmp_path / "nope")], capsys)
    assert rc == 1 and set(doc) == SCHEMAS["error"]

"""The running Linux kernel as a backend.

System calls go through :mod:`kexec_py.boundary.syscall`; state comes from /proc and
/sys under ``root``.  EPERM is explained from what the kernel exposes
(lockdown, kexec_load_disabled, the load limits, CAP_SYS_BOOT).

The calls that act on the machine -- kexec_load, kexec_file_load,
reboot(LINUX_REBOOT_CMD_KEXEC), sync -- are made only when ``root`` is
``/`` (the running system): with ``--root DIR`` this backend reads DIR's
/proc and /sys, and a load, unload or exec is refused before any call.
"""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kexec_py.boundary import abi, procfs, syscall
from kexec_py.boundary.backends import ExecReport, Status, has_cap_sys_boot
from kexec_py.boundary.procfs import PageMap
from kexec_py.errors import KexecError, SyscallError, UnsupportedError
from kexec_py.memmap import MemoryMap
from kexec_py.segments import Segment

#: a flag bit no kernel defines: kexec_load answers EINVAL (present) or
#: ENOSYS (absent) before it looks at anything else
_PROBE_BAD_FLAG = 0x8000


class LinuxBackend:
    name = "linux"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.arch = abi.host_abi()
        self.touches_host = Path(root) == Path("/")

    def host_refusal(self) -> str | None:
        if self.touches_host:
            return None
        return (f"the root is {self.root}, not /: kexec-py changes the running kernel only "
                "at root /")

    def lock_path(self) -> Path:
        from kexec_py.boundary.lock import lock_path

        return lock_path(self.root)

    def _host_only(self, call: str) -> None:
        why = self.host_refusal()
        if why is not None:
            raise UnsupportedError(f"{call} would act on this machine's kernel, and {why}: "
                                   "nothing was called",
                                   "drop --root to act on the running kernel, or use "
                                   "--backend model")

    # --- why EPERM ------------------------------------------------------------

    def eperm_reasons(self) -> list[str]:
        """Every reason this kernel would refuse a load with EPERM."""
        reasons: list[str] = []
        cap = has_cap_sys_boot(procfs.read_text(self.root, "proc/self/status"))
        if cap is False:
            reasons.append("this process lacks CAP_SYS_BOOT: run as root")
        if procfs.kexec_load_disabled(self.root):
            reasons.append("kernel.kexec_load_disabled is 1: kexec is off until reboot")
        lock = procfs.lockdown(self.root)
        if lock in ("integrity", "confidentiality"):
            reasons.append(f"the kernel is locked down ({lock}): kexec_load is refused and "
                           "kexec_file_load needs a signed kernel")
        for which, left in procfs.kexec_load_limits(self.root).items():
            if left == 0:
                reasons.append(f"kernel.kexec_load_limit_{which} is 0: no load left")
        return reasons

    def _refine(self, e: SyscallError) -> SyscallError:
        if e.errno == errno.EPERM:
            reasons = self.eperm_reasons()
            if reasons:
                e.hint = "; ".join(reasons)
        return e

    # --- the calls --------------------------------------------------------------

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        self._host_only("kexec_load")
        try:
            syscall.kexec_load(entry, segments, flags | self.arch.kexec_arch
                               if flags & abi.KEXEC_ARCH_MASK == 0 else flags, self.arch)
        except SyscallError as e:
            raise self._refine(e) from None

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                        flags: int) -> None:
        self._host_only("kexec_file_load")
        try:
            syscall.kexec_file_load(kernel_fd, initrd_fd, cmdline, flags, self.arch)
        except SyscallError as e:
            raise self._refine(e) from None

    def reboot_kexec(self) -> None:
        self._host_only("reboot(LINUX_REBOOT_CMD_KEXEC)")
        try:
            syscall.reboot_kexec(self.arch)
        except SyscallError as e:
            raise self._refine(e) from None

    def sync(self) -> None:
        self._host_only("sync")
        syscall.sync()

    # --- state ------------------------------------------------------------------

    def _probe(self, which: str) -> str:
        """Whether a syscall exists, by calling it so that it must fail
        without side effects (a bad fd or an undefined flag)."""
        if self.root != Path("/"):
            return "unknown: --root is not /"
        if which == "kexec_file_load" and self.arch.kexec_file_load is None:
            return "no"
        try:
            if which == "kexec_load":
                syscall.kexec_load(0, [], _PROBE_BAD_FLAG, self.arch)
            else:
                syscall.kexec_file_load(-1, -1, None, 0, self.arch)
        except SyscallError as e:
            if e.errno == errno.ENOSYS:
                return "no"
            if e.errno == errno.EPERM:
                return "yes (but not permitted)"
            return "yes"
        return "yes"

    def status(self) -> Status:
        r = self.root
        st = Status(
            backend=self.name,
            kernel=platform.release() if r == Path("/") else None,
            loaded=procfs.kexec_loaded(r),
            crash_loaded=procfs.kexec_crash_loaded(r),
            crash_size=procfs.kexec_crash_size(r),
            staged=procfs.pgmap_supported(r),
            lockdown=procfs.lockdown(r),
            load_disabled=procfs.kexec_load_disabled(r),
            load_limits=procfs.kexec_load_limits(r),
            cap_sys_boot=has_cap_sys_boot(procfs.read_text(r, "proc/self/status")),
        )
        limits_set = any(v >= 0 for v in st.load_limits.values())
        if limits_set:
            # probing would use up one of the limited loads
            st.kexec_load = st.kexec_file_load = "unknown: kexec_load_limit is set"
        else:
            st.kexec_load = self._probe("kexec_load")
            st.kexec_file_load = self._probe("kexec_file_load")
        st.problems = self.eperm_reasons()
        if st.loaded is None:
            st.problems.append("no /sys/kernel/kexec_loaded: this kernel has no kexec")
        if st.kexec_load == "no" and st.kexec_file_load == "no":
            st.problems.append("neither kexec_load nor kexec_file_load exists in this kernel")
        elif st.kexec_file_load == "no":
            st.problems.append("no kexec_file_load here (CONFIG_KEXEC_FILE off): 'load -s' "
                               "fails with ENOSYS and signed-kernel loads are impossible; the "
                               "default load falls back to kexec_load")
        elif st.kexec_load == "no":
            st.problems.append("no kexec_load here (CONFIG_KEXEC off): 'load -c', ELF images, "
                               "--entry, --mem-min/--mem-max, --load-preserve-context, "
                               "'resume' and staged loads fail with ENOSYS")
        return st

    def memory_map(self) -> MemoryMap:
        return procfs.memory_map(self.root)

    def image_loaded(self, crash: bool) -> bool | None:
        return (procfs.kexec_crash_loaded if crash else procfs.kexec_loaded)(self.root)

    def can_return(self) -> bool:
        return False

    def exec_report(self) -> ExecReport | None:
        return None

    def physical_memory(self) -> Callable[[int, int], bytes] | None:
        return None

    def dump_memory(self, dest: Path) -> dict[str, Any]:
        raise _model_only("dump-memory")

    def reset(self, config: Any = None) -> Path | None:
        raise _model_only("model-reset")

    def total_ram(self) -> int | None:
        """MemTotal of /proc/meminfo: what a kernel booted with ``mem=`` or
        confined by ``memmap=`` really has."""
        return procfs.mem_total(self.root)

    def cmdline(self) -> str:
        c = procfs.cmdline(self.root)
        if c is None:
            raise KexecError(f"cannot read {self.root / 'proc/cmdline'}", "mount /proc")
        return c

    def staged_supported(self) -> bool:
        return procfs.pgmap_supported(self.root)

    def pgmap(self) -> PageMap:
        try:
            data = procfs.read_pgmap_bytes(self.root)
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise KexecError("/proc/kexec_pgmap: no kexec image is loaded (ENODEV)",
                                 "load an image first") from None
            raise KexecError(f"cannot read /proc/kexec_pgmap: {os.strerror(e.errno or 0)}",
                             "run as root") from None
        if data is None:
            raise UnsupportedError(
                "this kernel has no /proc/kexec_pgmap: it does not speak the multi-stage "
                "load protocol",
                "boot a kernel with the kexec multi-stage load patch (see kernel/ in the "
                "kexec-py sources), or use --backend model",
            )
        return procfs.parse_pgmap(data)

    def close(self) -> None:
        pass


def _model_only(what: str) -> UnsupportedError:
    return UnsupportedError(f"{what} works with the model backend only",
                            "add --backend model (a real kernel's memory is /proc/vmcore)")

"""Backends: what kexec-py talks to.

``linux`` is the running kernel (``syscall.py`` plus /proc and /sys under
a root directory).  ``model`` is an in-process model of a kernel with the
multi-stage load patch, whose state lives in a file so that separate
invocations see one kernel.  Both implement :class:`Backend`; nothing above
this package knows which one it has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kexec_py.boundary.procfs import PageMap
from kexec_py.memmap import MemoryMap
from kexec_py.segments import Segment


@dataclass
class Status:
    """What ``kexec-py status`` reports.  ``None`` means "cannot tell"."""

    backend: str
    kernel: str | None = None
    loaded: bool | None = None
    crash_loaded: bool | None = None
    crash_size: int | None = None
    #: "yes", "no" (ENOSYS) or "unknown: <why>"
    kexec_load: str = "unknown"
    kexec_file_load: str = "unknown"
    #: True when /proc/kexec_pgmap exists (multi-stage load protocol)
    staged: bool = False
    lockdown: str | None = None
    load_disabled: bool | None = None
    load_limits: dict[str, int] = field(default_factory=dict)
    cap_sys_boot: bool | None = None
    #: each reason why a load would fail here, in words for the operator
    problems: list[str] = field(default_factory=list)
    #: which kernel runs (the model backend: the original one, or which
    #: image it jumped to); None when there is nothing to say
    running: str | None = None
    #: a staged load in progress (the model backend), None otherwise
    staging: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExecReport:
    """What an exec did, told by a backend that returns to tell it: the
    lines for the operator and the JSON document (whose ``returned`` says
    whether it went back to the kernel that jumped)."""

    lines: list[str]
    document: dict[str, Any]


class Backend(Protocol):
    """The kernel interface kexec-py needs.

    Every method raises :class:`kexec_py.errors.KexecError` (usually
    ``SyscallError``) on failure and never leaves a half-loaded image:
    that is the caller's job for staged loads (``unload`` after an error).
    """

    name: str
    root: Path
    #: whether this backend's system calls act on this machine's kernel
    #: (the running kernel at root /): the only case in which kexec-py may
    #: reach outside it (shutdown, network interfaces)
    touches_host: bool

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None: ...

    def kexec_file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes | None,
                        flags: int) -> None: ...

    def reboot_kexec(self) -> None: ...

    def sync(self) -> None: ...

    def status(self) -> Status: ...

    def memory_map(self) -> MemoryMap: ...

    def total_ram(self) -> int | None:
        """The RAM the kernel counts (``totalram_pages()``, what the
        kernel's half-of-RAM rule for one kexec_load call is measured
        against), in bytes; None when only the memory map can tell."""
        ...

    def cmdline(self) -> str: ...

    def staged_supported(self) -> bool: ...

    def pgmap(self) -> PageMap: ...

    def host_refusal(self) -> str | None:
        """Why this backend refuses every call that would change a kernel
        (the linux backend under a root other than /, whose calls would
        reach this machine's kernel), or None."""
        ...

    def lock_path(self) -> Path:
        """The load lock's file for what this backend loads into."""
        ...

    def eperm_reasons(self) -> list[str]:
        """Every reason this kernel would refuse this process a load with
        EPERM (no CAP_SYS_BOOT, kexec_load_disabled, lockdown, load
        limits); empty when none is known."""
        ...

    def image_loaded(self, crash: bool) -> bool | None:
        """Whether a normal (or crash) image is loaded, as kexec-tools'
        kexec_loaded() asks it (/sys/kernel/kexec[_crash]_loaded); None
        when it cannot tell."""
        ...

    def can_return(self) -> bool:
        """Whether exec with nothing loaded returns to a kernel that jumped
        here with preserve context (the model keeps that kernel; a real
        kernel needs an image loaded to jump back)."""
        ...

    def exec_report(self) -> ExecReport | None:
        """What the last exec did, for a backend that comes back to say (the
        model); None for a real kernel, whose exec returns only from a
        kexec jump."""
        ...

    def physical_memory(self) -> Callable[[int, int], bytes] | None:
        """A reader of the running kernel's physical memory (``read(addr,
        size)``) where the backend has one (the model), else None: a real
        kernel's memory is read through /proc/vmcore."""
        ...

    def dump_memory(self, dest: Path) -> dict[str, Any]:
        """Write physical memory to ``dest`` as an ELF core (the model);
        other backends raise UnsupportedError."""
        ...

    def reset(self, config: Any = None) -> Path | None:
        """Start the backend's kernel over (the model; ``config`` is a
        :class:`kexec_py.model.config.ModelConfig`) and say where its state
        is kept; other backends raise UnsupportedError."""
        ...

    def close(self) -> None: ...


def auto_backend(root: Path) -> str:
    """``linux`` when the kernel under ``root`` has a kexec interface
    (``/sys/kernel/kexec_loaded``), else ``model``."""
    return "linux" if (root / "sys/kernel/kexec_loaded").exists() else "model"


def open_backend(name: str, root: Path, options: dict[str, Any] | None = None) -> Backend:
    """Instantiate a backend by name; imports only the one chosen."""
    opts = options or {}
    if name == "linux":
        from kexec_py.boundary.backends.linux import LinuxBackend

        return LinuxBackend(root)
    if name == "model":
        from kexec_py.boundary.backends.model import ModelBackend

        return ModelBackend(root, **opts)
    raise ValueError(f"unknown backend {name!r}")


def has_cap_sys_boot(status_text: str | None) -> bool | None:
    """Whether ``CapEff`` in /proc/self/status has CAP_SYS_BOOT (bit 22)."""
    if status_text is None:
        return None
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 22 & 1)
    return None


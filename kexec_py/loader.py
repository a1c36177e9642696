"""Loading a kernel: the choice of system call and the call itself.

``cli.py`` turns options into a :class:`LoadRequest`; this module decides
how to load it and talks to a backend.  Nothing here prints.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from kexec_py import abi
from kexec_py.backends import Backend
from kexec_py.errors import FormatError, KexecError, SyscallError


@dataclass
class LoadRequest:
    kernel: Path
    initrd: Path | None = None
    cmdline: str | None = None
    crash: bool = False
    #: "auto" (kexec_file_load, then kexec_load on ENOSYS/EINVAL/ENOEXEC/ENOTSUP),
    #: "file" (-s), "load" (-c)
    syscall: str = "auto"


@dataclass
class LoadResult:
    syscall: str
    flags: int
    kernel: str
    initrd: str | None
    cmdline: str | None
    #: the kexec_file_load error that made "auto" fall back, if any
    fallback_from: str | None = None


def _open(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(f"{what} {path} does not exist", f"check the {what} path") from None
    except IsADirectoryError:
        raise FormatError(f"{what} {path} is a directory", f"give the {what} file") from None
    except OSError as e:
        raise KexecError(f"cannot open {what} {path}: {e.strerror}",
                         "check permissions (run as root?)") from None


def file_load_flags(req: LoadRequest) -> int:
    flags = 0
    if req.crash:
        flags |= abi.KEXEC_FILE_ON_CRASH
    if req.initrd is None:
        flags |= abi.KEXEC_FILE_NO_INITRAMFS
    return flags


def load_file(backend: Backend, req: LoadRequest) -> LoadResult:
    """Load with kexec_file_load(2): the kernel parses the image itself."""
    kfd = _open(req.kernel, "kernel")
    ifd = -1
    try:
        if req.initrd is not None:
            ifd = _open(req.initrd, "initrd")
        flags = file_load_flags(req)
        cmd = req.cmdline.encode() if req.cmdline is not None else None
        try:
            backend.kexec_file_load(kfd, ifd, cmd, flags)
        except SyscallError as e:
            if e.errno == errno.ENOEXEC:
                e.message += f" for {req.kernel}"
            raise
        return LoadResult("kexec_file_load", flags, str(req.kernel),
                          str(req.initrd) if req.initrd else None, req.cmdline)
    finally:
        os.close(kfd)
        if ifd >= 0:
            os.close(ifd)


def unload(backend: Backend, crash: bool) -> str:
    """Unload the normal (or crash) image.  kexec_load with no segments
    unloads; where kexec_load is missing, kexec_file_load's UNLOAD flag.
    Returns the syscall that did it."""
    try:
        backend.kexec_load(0, [], abi.KEXEC_ON_CRASH if crash else 0)
        return "kexec_load"
    except SyscallError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        first = e
    flags = abi.KEXEC_FILE_UNLOAD | (abi.KEXEC_FILE_ON_CRASH if crash else 0)
    try:
        backend.kexec_file_load(-1, -1, None, flags)
    except SyscallError as e:
        raise first if e.errno == errno.ENOSYS else e from None
    return "kexec_file_load"

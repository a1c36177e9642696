"""Errors of kexec-py.

Every expected failure is a :class:`KexecError`: a one-line message that
names what was wrong, and a hint that tells the operator what to do.  Only
``cli.py`` turns them into ``error: ...`` / ``hint: ...`` lines and exit
status 1.  Third-party exceptions (pyelftools, OSError from /proc) are
wrapped where they enter the project.
"""

from __future__ import annotations

import errno as _errno
import os


class KexecError(Exception):
    """Base of every expected failure.

    Accessible attributes: ``message`` (what was wrong), ``hint`` (what to
    do about it, may be empty), ``exit_code`` (1 for runtime errors).
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class FormatError(KexecError):
    """An input file is not what it has to be (bad kernel, bad image)."""


class PlanError(KexecError):
    """A load cannot be planned: segments break the kernel's rules, no room."""

    def __init__(self, message: str, hint: str = "", errno: int = _errno.EINVAL) -> None:
        super().__init__(message, hint)
        self.errno = errno


class ProcfsError(KexecError):
    """A /proc or /sys file could not be read or parsed."""


class UnsupportedError(KexecError):
    """The running kernel cannot do what was asked (no staged protocol, ...)."""


class LockError(KexecError):
    """Another kexec-py holds the load lock, or its file cannot be used.
    ``denied``: the file could not be opened or created for lack of
    permission (a user who could not load anyway, usually)."""

    denied = False


class SyscallError(KexecError):
    """A kexec system call failed.

    Accessible attributes: ``call`` (the call as text, with its arguments),
    ``errno`` (the error number), plus ``message`` and ``hint``.
    """

    def __init__(self, call: str, err: int, hint: str = "") -> None:
        name = _errno.errorcode.get(err, str(err))
        super().__init__(f"{call} = -1 {name} ({os.strerror(err)})", hint)
        self.call = call
        self.errno = err

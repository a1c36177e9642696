"""The load lock: two kexec-py processes never change what is loaded at
the same time, and never interleave the stages of their loads.

An exclusive ``flock(2)`` on ``ROOT/run/kexec-py.lock`` (``/run`` normally,
under ``--root`` in tests), held by every command that changes what is
loaded -- load, resume, unload, exec, model-reset, and the compatibility
mode's loads, unloads and execs -- from before its first change until its
backend is closed.  Dry runs and read-only commands do not take it.  The
model backend at root / (a model of the user's own, whose state is per
user) keeps its lock beside its state directory STATE instead:
``STATE.lock`` (``model.lock`` next to the default ``.../kexec-py/model``),
outside the directory, whose contents are the model's.

The lock file is opened without following a symbolic link, must be a
regular file, and is never truncated.  The holder writes its pid into it,
right-aligned in a fixed-width field so that nothing needs truncating, but
only into a file that is plainly its own: one it created, or a regular
file of the same owner, with one link, no longer than the field.  (A
planted link or file could otherwise make root write into another file.)
On release the field is blanked.  flock locks vanish with the process, so
a killed kexec-py never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kexec_py.errors import LockError

if TYPE_CHECKING:
    from kexec_py.boundary.backends import Backend

LOCK_NAME = "run/kexec-py.lock"
#: the pid field: right-aligned decimal, then a newline
PID_FIELD = 16

_HINT_REMOVE = ("remove it: kexec-py creates the lock file itself, as a regular file, and "
                "never follows a link there")


def lock_path(root: Path | str) -> Path:
    return Path(root) / LOCK_NAME


def lock_for(backend: Backend, wait: float = 0.0) -> LoadLock:
    """The load lock of what ``backend`` loads into (:meth:`Backend.lock_path`:
    ROOT/run/kexec-py.lock, or STATE.lock for a model at root /)."""
    return LoadLock(backend.root, wait, path=backend.lock_path())


def take_lock(backend: Backend, wait: float = 0.0) -> LoadLock:
    """:func:`lock_for` ``backend``, acquired.  When the lock file is out of
    reach for lack of permission and the kernel would refuse this process a
    load too (:meth:`Backend.eperm_reasons`), the error says so and why: a
    user without CAP_SYS_BOOT learns that, not only that /run is root's."""
    lk = lock_for(backend, wait)
    try:
        lk.acquire()
    except LockError as e:
        if e.denied:
            reasons = backend.eperm_reasons()
            if reasons:
                raise LockError(f"{e.message}; the kernel would refuse this process the load "
                                "too (EPERM)", "; ".join(reasons)) from None
        raise
    return lk


def _denied_or(e: OSError, err: LockError) -> LockError:
    err.denied = e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    return err


def _pid_line(text: str) -> bytes:
    return f"{text:>{PID_FIELD - 1}}\n".encode()


class LoadLock:
    """``with LoadLock(root):`` holds the lock or raises :class:`LockError`.

    ``wait`` is how many seconds to keep trying (0: fail at once); ``path``
    overrides ROOT/run/kexec-py.lock."""

    def __init__(self, root: Path | str = "/", wait: float = 0.0,
                 path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else lock_path(root)
        self.wait = wait
        self._fd: int | None = None
        self._wrote = False

    def _open(self) -> tuple[int, bool]:
        """The lock file's descriptor, and whether the pid may be written
        into it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _denied_or(e, LockError(
                f"cannot create {self.path.parent} for the lock file: {e.strerror}",
                "run as root, or give --root a writable directory")) from None
        for _ in range(5):
            try:  # a new file is ours
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644)
                return fd, True
            except FileExistsError:
                pass
            except OSError as e:
                raise _denied_or(e, LockError(
                    f"cannot create the lock file {self.path}: {e.strerror}",
                    "run as root, or give --root a writable directory")) from None
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                             | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed meanwhile: create it
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise LockError(f"the lock file {self.path} is a symbolic link",
                                    _HINT_REMOVE) from None
                if e.errno == errno.EISDIR:
                    raise LockError(f"the lock file {self.path} is not a regular file",
                                    _HINT_REMOVE) from None
                raise _denied_or(e, LockError(
                    f"cannot open the lock file {self.path}: {e.strerror}",
                    "run as root, or give --root a writable directory")) from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise LockError(f"the lock file {self.path} is not a regular file",
                                _HINT_REMOVE)
            ours = (st.st_uid == os.geteuid() and st.st_nlink == 1
                    and st.st_size <= PID_FIELD)
            return fd, ours
        raise LockError(f"cannot open the lock file {self.path}: it keeps disappearing",
                        "is another program removing it?")

    def acquire(self) -> None:
        fd, ours = self._open()
        deadline = time.monotonic() + self.wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise LockError(f"cannot lock {self.path}: {e.strerror}") from None
                    if time.monotonic() >= deadline:
                        holder = _holder(fd)
                        who = f" (pid {holder})" if holder else ""
                        raise LockError(
                            f"another kexec-py{who} is loading: {self.path} is locked",
                            "wait for it to finish; two kexec-py must not change what is "
                            "loaded at once, nor interleave the stages of their loads"
                        ) from None
                    time.sleep(0.05)
            if ours:
                os.pwrite(fd, _pid_line(str(os.getpid())), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._wrote = fd, ours

    def release(self) -> None:
        if self._fd is not None:
            if self._wrote:
                try:
                    os.pwrite(self._fd, _pid_line(""), 0)
                except OSError:
                    pass
            os.close(self._fd)  # closing drops the flock
            self._fd, self._wrote = None, False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> LoadLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, PID_FIELD, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None

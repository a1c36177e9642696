"""The load lock: two kexec-py processes never interleave the stages of
their loads.

An exclusive ``flock(2)`` on ``ROOT/run/kexec-py.lock`` (``/run`` normally,
under ``--root`` in tests), held for the whole of a load, resume or
unload.  The holder writes its pid into the file so that the error can
name it.  flock locks vanish with the process, so a killed kexec-py never
leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from kexec_py.errors import LockError

LOCK_NAME = "run/kexec-py.lock"


def lock_path(root: Path | str) -> Path:
    return Path(root) / LOCK_NAME


class LoadLock:
    """``with LoadLock(root):`` holds the lock or raises :class:`LockError`.

    ``wait`` is how many seconds to keep trying (0: fail at once)."""

    def __init__(self, root: Path | str = "/", wait: float = 0.0) -> None:
        self.path = lock_path(root)
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise LockError(f"cannot open the lock file {self.path}: {e.strerror}",
                            "run as root, or give --root a writable directory") from None
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise LockError(f"cannot lock {self.path}: {e.strerror}") from None
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    who = f" (pid {holder})" if holder else ""
                    raise LockError(
                        f"another kexec-py{who} is loading: {self.path} is locked",
                        "wait for it to finish; two loads must not interleave their stages"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

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
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None

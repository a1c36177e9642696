"""Files that hold secrets or that root writes on a user's behalf: created
private, never reached through a symbolic link.

Two tools:

:func:`private_output`
    writes a new file ``OUT`` (``save-image``, ``dump-memory``: all of RAM,
    keys and passwords included) so that

    - it is mode 0600 whatever the umask (created 0600, then ``fchmod``);
    - it is written to ``OUT.part``, created with ``O_CREAT | O_EXCL |
      O_NOFOLLOW | O_CLOEXEC``: a symlink planted there is never followed;
    - it is fsync'ed, renamed over ``OUT`` (a rename replaces a name, it
      never writes through a link), then the directory is fsync'ed, so
      ``OUT`` is either the old file or the complete new one;
    - ``OUT`` must be absent or a regular file: a symlink (or a device, a
      directory, a FIFO) at ``OUT`` is refused before anything is written;
    - a stale ``OUT.part`` that a run killed before it could clean up left
      behind (a regular file owned by the effective uid) is removed and
      replaced; anything else there (a symlink, a directory, another user's
      file) was not left by kexec-py and is refused, naming it and how to
      remove it: kexec-py does not guess what it is for.

    The directory of ``OUT`` is the caller's choice: symlinks in it are
    followed, as by any program that writes where it is told.

:func:`open_private_dir`
    opens a directory one component at a time from ``/``, without following
    symbolic links, and checks each: the directories above it (the real
    path of ``base``) must not be writable by group or others unless sticky
    (as ``/tmp``), ``base`` itself must be root's or this user's, and the
    directories kexec-py owns below ``base`` must be this user's, mode
    without group/other write, not symlinks (created mode 0700 when
    missing).  Files are then opened relative to the returned descriptor
    with :func:`open_in` (``O_NOFOLLOW | O_CLOEXEC``).  Once these checks
    pass, nobody but this user and root can change what the path of the
    directory leads to, except the owner of a directory above ``base``
    (its owner is not checked: system directories there may belong to
    anyone, e.g. in a user namespace).

Every refusal is an :class:`UnsafePathError` (a
:class:`~kexec_py.errors.KexecError`) naming the path and what is wrong,
with a hint; I/O failures of :func:`private_output` are
:class:`OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from kexec_py.errors import KexecError

#: flags every open of a file kexec-py must not be redirected from carries
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
#: the mode of every private file
PRIVATE_MODE = 0o600
#: the mode of every private directory
PRIVATE_DIR_MODE = 0o700
#: what ``OUT`` is written to first
PART_SUFFIX = ".part"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW


class UnsafePathError(KexecError):
    """A path kexec-py was to write or use is not safe: a symbolic link,
    not a regular file or directory, another user's, or writable by
    others."""


class OutputError(KexecError):
    """An output file could not be written (no space, no permission, an I/O
    error)."""


def kind(st: os.stat_result) -> str:
    """What a file is, for messages: "a symbolic link", "a directory", ..."""
    m = st.st_mode
    if stat.S_ISLNK(m):
        return "a symbolic link"
    if stat.S_ISDIR(m):
        return "a directory"
    if stat.S_ISREG(m):
        return "a regular file"
    if stat.S_ISFIFO(m):
        return "a FIFO"
    if stat.S_ISSOCK(m):
        return "a socket"
    if stat.S_ISBLK(m) or stat.S_ISCHR(m):
        return "a device"
    return "an unknown kind of file"


def _lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_leftover(name: str, dir_fd: int, shown: Path, hint: str) -> None:
    """Remove ``name`` in ``dir_fd`` if it is what an interrupted run of
    kexec-py leaves behind: a regular file owned by the effective uid.
    Nothing there: nothing to do.  Anything else (a symlink, a directory,
    another user's file): :class:`UnsafePathError` naming ``shown``."""
    st = _lstat_at(name, dir_fd)
    if st is None:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{shown} exists and is {kind(st)}, not a regular file of this "
                              "user's", hint)
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{shown} exists and is owned by uid {st.st_uid}, not by this "
                              f"user (uid {os.geteuid()})", hint)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def create_private(name: str, dir_fd: int) -> int:
    """Create the new file ``name`` in ``dir_fd``, mode 0600 whatever the
    umask, for writing; never through a symlink (``O_EXCL | O_NOFOLLOW``:
    anything already there is EEXIST)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, PRIVATE_MODE,
                 dir_fd=dir_fd)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_in(dir_fd: int, name: str, flags: int, shown: Path, hint: str) -> int:
    """``openat(dir_fd, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600)`` of a
    regular file.  A symlink (or anything but a regular file) at ``name``:
    :class:`UnsafePathError` naming ``shown``.  A file it creates is mode
    0600 whatever the umask.  Other failures: the OSError."""
    try:
        fd = os.open(name, flags | NOFOLLOW, PRIVATE_MODE, dir_fd=dir_fd)
    except OSError as e:
        st = _lstat_at(name, dir_fd) if e.errno != errno.ENOENT else None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{shown} is {kind(st)}, not a regular file", hint) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{shown} is {kind(st)}, not a regular file", hint)
        if flags & os.O_CREAT and st.st_uid == os.geteuid() \
                and stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
            os.fchmod(fd, PRIVATE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- private output files -----------------------------------------------------------------


def _check_out(name: str, dir_fd: int, out: Path) -> None:
    st = _lstat_at(name, dir_fd)
    if st is None or stat.S_ISREG(st.st_mode):
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{out} is a symbolic link; kexec-py does not write through one",
                              f"give the path of the file itself, or remove the link first "
                              f"(rm {out})")
    raise UnsafePathError(f"{out} is {kind(st)}, not a regular file",
                          "give the path of a regular file (it is replaced, or created)")


@contextlib.contextmanager
def private_output(out: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``out`` with: mode 0600, written to
    ``out.part`` and renamed over ``out`` when the ``with`` block ends
    without an exception (see the module docstring for every guarantee).
    On an exception ``out.part`` is removed and ``out`` is left as it was;
    an OSError becomes an :class:`OutputError` naming ``out``."""
    out = Path(out)
    name = out.name
    if not name or name in (".", ".."):
        raise OutputError(f"{out} is not a file name", "give the path of a file")
    part_name = name + PART_SUFFIX
    part = out.with_name(part_name)
    hint = "check the target file system (space, permissions)"
    try:
        dfd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror}", hint) from None
    ours: os.stat_result | None = None
    f: BinaryIO | None = None
    try:
        _check_out(name, dfd, out)
        remove_leftover(part_name, dfd, part,
                        "kexec-py leaves only a regular file of its own there (which it "
                        f"replaces); see who made this one, then remove it: rm {part}")
        try:
            fd = create_private(part_name, dfd)
        except FileExistsError:
            raise UnsafePathError(f"{part} appeared while kexec-py was about to create it",
                                  f"see who is writing there, then remove it: rm {part}"
                                  ) from None
        ours = os.fstat(fd)
        f = os.fdopen(fd, "wb")
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        _check_out(name, dfd, out)
        os.replace(part_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        ours = None
        os.fsync(dfd)
    except BaseException as e:
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        if ours is not None:  # remove our part file, and only ours
            st = _lstat_at(part_name, dfd)
            if st is not None and (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                with contextlib.suppress(OSError):
                    os.unlink(part_name, dir_fd=dfd)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {out}: {e.strerror}", hint) from None
        raise
    finally:
        os.close(dfd)


# --- private directories --------------------------------------------------------------------


def _dir_problem(st: os.stat_result, rule: str) -> str | None:
    """What makes a directory unsafe under ``rule``, or None.  ``"own"``:
    one of kexec-py's own directories; ``"base"``: the directory they are
    made in; ``"above"``: a directory above that."""
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if rule == "own":
        if st.st_uid != euid:
            return f"owned by uid {st.st_uid}, not by this user (uid {euid})"
        if mode & 0o022:
            return f"writable by group or others (mode {oct(mode)})"
        return None
    if rule == "base" and st.st_uid not in (0, euid):
        return f"owned by uid {st.st_uid}, neither root nor this user (uid {euid})"
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"writable by group or others (mode {oct(mode)}) and not sticky"
    return None


def open_private_dir(base: Path, owned: Sequence[str], *, create: bool, what: str,
                     shown: Path, hint: str) -> int | None:
    """A descriptor of ``base/owned[0]/owned[1]/...``, reached from ``/``
    one directory at a time without following a symlink, each checked:

    - every directory above ``base`` (its real path): not writable by group
      or others unless sticky;
    - ``base``: that too, and owned by root or this user;
    - each of ``owned``: owned by this user, mode without group/other
      write, not a symlink; created mode 0700 (whatever the umask) when
      missing and ``create``.

    Missing components of ``base`` are created the same way when
    ``create``.  Returns None when something is missing and not
    ``create``.  A check that fails: :class:`UnsafePathError` "unsafe
    {what} {shown}: {directory} is {problem}" with ``hint``; a directory
    that cannot be created or opened: :class:`KexecError`.
    """
    real = Path(os.path.realpath(base))
    names = list(real.parts[1:])
    nbase = len(names)
    names += list(owned)
    euid = os.geteuid()

    def check(st: os.stat_result, i: int, where: Path) -> None:
        rule = "own" if i >= nbase else "base" if i == nbase - 1 else "above"
        problem = _dir_problem(st, rule)
        if problem is not None:
            raise UnsafePathError(f"unsafe {what} {shown}: {where} is {problem}", hint)

    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    cur = Path("/")
    try:
        check(os.fstat(fd), -1, cur)
        for i, name in enumerate(names):
            cur = cur / name
            created = False
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                try:
                    os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
                except OSError as e:
                    raise KexecError(f"cannot create the {what} {shown}: {cur}: {e.strerror}",
                                     hint) from None
                nfd = _open_dir(name, fd, cur, what, shown, hint)
            except OSError as e:
                _dir_error(e, name, fd, cur, what, shown, hint)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if created and st.st_uid == euid and stat.S_IMODE(st.st_mode) != PRIVATE_DIR_MODE:
                os.fchmod(fd, PRIVATE_DIR_MODE)
                st = os.fstat(fd)
            check(st, i, cur)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(name: str, dir_fd: int, cur: Path, what: str, shown: Path, hint: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        _dir_error(e, name, dir_fd, cur, what, shown, hint)


def _dir_error(e: OSError, name: str, dir_fd: int, cur: Path, what: str, shown: Path,
               hint: str) -> NoReturn:
    """Explain why ``name`` could not be opened as a directory."""
    st = _lstat_at(name, dir_fd)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"unsafe {what} {shown}: {cur} is a symbolic link", hint) from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise KexecError(f"{what} {shown}: {cur} is {kind(st)}, not a directory",
                         "give a directory path (it is created if missing)") from None
    raise KexecError(f"cannot open the {what} {shown}: {cur}: {e.strerror}", hint) from None

"""The files of a load, opened once.

A kernel is opened, mapped and identified once per load
(:func:`open_kernel`): the same descriptor goes to kexec_file_load, the
same mapping to the format parsers, and its format (:attr:`MappedFile.kind`)
is sniffed once.  An initrd is opened once too, and mapped only when
kexec-py places it itself (kexec_load).
"""

from __future__ import annotations

import mmap
import os
import stat
from functools import cached_property
from pathlib import Path

from kexec_py.errors import FormatError, KexecError
from kexec_py.formats import bzimage
from kexec_py.formats.elfstruct import ELFMAG, ET_CORE, layout_named_by

__all__ = ["InputFile", "MappedFile", "image_kind", "map_file", "open_input"]


def image_kind(data: memoryview | bytes) -> str:
    """"bzImage", "elf-kernel", "elf-core" or "unknown", from magic numbers
    only (no pyelftools import)."""
    if len(data) >= 18 and bytes(data[:4]) == ELFMAG:
        # e_type is at the same offset in both classes
        e_type = layout_named_by(data).ehdr.get(data, "e_type")
        return "elf-core" if e_type == ET_CORE else "elf-kernel"
    if bzimage.probe(data):
        return "bzImage"
    return "unknown"


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


class InputFile:
    """An input file open read-only (``fd``); ``what`` names it in messages
    ("kernel", "initrd").  :meth:`mapped` maps it, once."""

    def __init__(self, path: Path, what: str, fd: int) -> None:
        self.path = path
        self.what = what
        self.fd = fd
        self._mapped: MappedFile | None = None

    def mapped(self) -> MappedFile:
        if self._mapped is None:
            self._mapped = _map_fd(self.path, self.what, self.fd)
        return self._mapped

    def close(self) -> None:
        """Close the descriptor.  The mapping is not unmapped here: segment
        buffers are slices of it (or all of it, an initrd's), and a plan
        may outlive the files' opening; it goes when its last user does."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MappedFile:
    """A file mapped read-only.  ``data`` is a memoryview of the whole file;
    segment buffers are slices of it, so nothing is copied into Python
    bytes.  The mapping stays alive as long as any slice does."""

    def __init__(self, path: Path, what: str, mm: mmap.mmap) -> None:
        self.path = path
        self.what = what
        self.data = memoryview(mm)
        self.size = len(self.data)

    @cached_property
    def kind(self) -> str:
        """:func:`image_kind` of the file, sniffed once."""
        return image_kind(self.data)


def _map_fd(path: Path, what: str, fd: int) -> MappedFile:
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{what} {path} is not a regular file",
                              f"give the {what} as a file (copy a device to a file first)")
        if st.st_size == 0:
            raise FormatError(f"{what} {path} is empty", f"give a non-empty {what} file")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise KexecError(f"cannot map {what} {path}: {e.strerror}",
                         "check that the file is readable") from None
    return MappedFile(path, what, mm)


def open_input(path: Path, what: str) -> InputFile:
    """Open ``path`` read-only (``what`` names it in messages: "initrd")."""
    return InputFile(path, what, _open(path, what))


def map_file(path: Path, what: str) -> MappedFile:
    """Open and mmap ``path``; the descriptor is closed (the mapping keeps
    the file)."""
    fd = _open(path, what)
    try:
        return _map_fd(path, what, fd)
    finally:
        os.close(fd)

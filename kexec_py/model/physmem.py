"""Physical memory of the model: a sparse file, offset = physical address.

Pages never written are holes and read as zeros, so a 4 GiB machine costs
only what has been written, on disk and in memory.  Access is by
``pread``/``pwrite``: on ext4 a first write into a hole through a shared
mmap costs ~100 us (a block allocation in the page fault), a ``pwrite``
~7 us (delayed allocation) -- measured on the project's machine.  Runs of
pages move with one read and one write.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kexec_py.boundary.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.errors import KexecError
from kexec_py.segments import Buffer

ZERO_PAGE = bytes(PAGE_SIZE)
#: how much is read at once when looking for non-zero pages
SCAN_WINDOW = 1 << 20


def _scratch_dir() -> str | None:
    """Where an unnamed memory file goes: /dev/shm (tmpfs: no block
    allocation at all) when it is there and writable, else the temporary
    directory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


class PhysMem:
    """``[0, size)`` of physical memory.

    ``path`` None keeps the memory in an unlinked temporary file.  Reads
    beyond ``size`` return zeros; writes beyond it are dropped (the model
    has nothing there) and counted in ``lost_bytes``.
    """

    def __init__(self, path: Path | None, size: int, writable: bool = True) -> None:
        self.size = size
        self.path = path
        self.lost_bytes = 0
        self._fd = -1
        try:
            if path is None:
                f = tempfile.TemporaryFile(prefix="kexec-py-model-", dir=_scratch_dir())
                self._fd = os.dup(f.fileno())
                f.close()
            else:
                flags = (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY
                self._fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            have = os.fstat(self._fd).st_size
            if writable and have != size:
                os.ftruncate(self._fd, size)
            elif have < size:
                raise KexecError(f"model memory file {path} is shorter than the model's "
                                 f"memory ({size:#x} bytes)",
                                 "run 'kexec-py --backend model model-reset'")
        except OSError as e:
            if self._fd >= 0:
                os.close(self._fd)
            raise KexecError(f"cannot open the model's memory ({path or 'temporary file'}): "
                             f"{e.strerror}", "check the model state directory (--model-state)"
                             ) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- bytes -------------------------------------------------------------------------

    def _pread(self, n: int, addr: int) -> bytes:
        data = os.pread(self._fd, n, addr)
        return data if len(data) == n else data + bytes(n - len(data))

    def _pwrite(self, data: Buffer, addr: int) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            done = os.pwrite(self._fd, view, addr)
            view, addr = view[done:], addr + done

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at physical ``addr`` (zeros beyond the memory)."""
        if addr < 0 or size < 0:
            raise ValueError("negative address or size")
        if addr >= self.size:
            return bytes(size)
        inside = min(size, self.size - addr)
        data = self._pread(inside, addr)
        return data if inside == size else data + bytes(size - inside)

    def write(self, addr: int, data: Buffer) -> None:
        n = len(data)
        keep = max(0, min(n, self.size - addr))
        if keep:
            self._pwrite(memoryview(data)[:keep], addr)
        self.lost_bytes += n - keep

    def write_page(self, pfn: int, data: Buffer) -> None:
        """Page ``pfn`` := ``data`` (at most a page) followed by zeros.  A
        page of zeros is written only over something (holes stay holes)."""
        a = pfn << PAGE_SHIFT
        n = len(data)
        if n == PAGE_SIZE and a + PAGE_SIZE <= self.size:
            done = os.pwrite(self._fd, data, a)
            if done != PAGE_SIZE:  # a short write: finish it
                self._pwrite(memoryview(data).cast("B")[done:], a + done)
        elif n == PAGE_SIZE:
            self.write(a, data)
        elif n:
            self.write(a, bytes(data) + ZERO_PAGE[n:])
        elif a < self.size and self._pread(PAGE_SIZE, a) != ZERO_PAGE:
            self.write(a, ZERO_PAGE)
        elif a >= self.size:
            self.lost_bytes += PAGE_SIZE

    def copy_pages(self, dst_pfn: int, src_pfn: int, count: int = 1) -> None:
        """``count`` pages from ``src_pfn`` to ``dst_pfn`` (no overlap)."""
        n = count << PAGE_SHIFT
        self.write(dst_pfn << PAGE_SHIFT, self.read(src_pfn << PAGE_SHIFT, n))

    def swap_pages(self, a_pfn: int, b_pfn: int, count: int = 1) -> None:
        """Exchange ``count`` pages at ``a_pfn`` and ``b_pfn`` (no overlap)."""
        a, b, n = a_pfn << PAGE_SHIFT, b_pfn << PAGE_SHIFT, count << PAGE_SHIFT
        ta, tb = self.read(a, n), self.read(b, n)
        self.write(a, tb)
        self.write(b, ta)

    # --- sparse scanning ----------------------------------------------------------------

    def data_extents(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """``[s, e)`` ranges inside ``[start, end)`` that may hold data, from
        SEEK_DATA/SEEK_HOLE (the whole range where the file system cannot
        tell)."""
        end = min(end, self.size)
        pos = start
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # nothing but hole from pos on
                    return
                yield pos, end
                return
            if data >= end:
                return
            try:
                hole = os.lseek(self._fd, data, os.SEEK_HOLE)
            except OSError:
                hole = end
            yield data, min(hole, end)
            pos = hole

    def nonzero_runs(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """``(addr, bytes)`` for every run of pages in ``[start, end)`` that
        is not all zero, in address order; zero pages are left out.

        Pre-condition: ``start`` and ``end`` are page aligned."""
        for s, e in self.data_extents(start, end):
            s &= ~(PAGE_SIZE - 1)
            for w in range(s, e, SCAN_WINDOW):
                we = min(w + SCAN_WINDOW, e)
                buf = self.read(w, we - w)
                if buf.count(0) == len(buf):
                    continue
                run = -1
                for off in range(0, len(buf), PAGE_SIZE):
                    zero = buf[off:off + PAGE_SIZE] == ZERO_PAGE[:min(PAGE_SIZE, len(buf) - off)]
                    if zero and run >= 0:
                        yield w + run, buf[run:off]
                        run = -1
                    elif not zero and run < 0:
                        run = off
                if run >= 0:
                    yield w + run, buf[run:]

"""Physical memory of the model: a sparse file mapped with mmap.

File offset = physical address.  Pages never written are holes and read
as zeros, so a 4 GiB machine costs only what has been written, on disk and
in memory.  Page copies and swaps use ``mmap.move`` and slice assignment:
no Python object per byte, one memcpy per run of pages.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kexec_py.abi import PAGE_SHIFT, PAGE_SIZE
from kexec_py.errors import KexecError
from kexec_py.segments import Buffer

ZERO_PAGE = bytes(PAGE_SIZE)
#: how much is read at once when looking for non-zero pages
SCAN_WINDOW = 1 << 20


def _scratch_dir() -> str | None:
    """Where an unnamed memory file goes: /dev/shm (tmpfs: no block
    allocation on first touch) when it is there and writable, else the
    temporary directory."""
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
        try:
            if path is None:
                f = tempfile.TemporaryFile(prefix="kexec-py-model-", dir=_scratch_dir())
                self._fd = os.dup(f.fileno())
                f.close()
            else:
                flags = (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY
                self._fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
            if writable and os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            elif os.fstat(self._fd).st_size < size:
                raise KexecError(f"model memory file {path} is shorter than the model's "
                                 f"memory ({size:#x} bytes)",
                                 "run 'kexec-py --backend model model-reset'")
            self.mm = mmap.mmap(self._fd, size,
                                access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        except OSError as e:
            raise KexecError(f"cannot map the model's memory ({path or 'temporary file'}): "
                             f"{e.strerror}", "check the model state directory (--model-state)"
                             ) from None

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            os.close(self._fd)

    # --- bytes -------------------------------------------------------------------------

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes at physical ``addr`` (zeros beyond the memory)."""
        if addr < 0 or size < 0:
            raise ValueError("negative address or size")
        end = addr + size
        if end <= self.size:
            return self.mm[addr:end]
        if addr >= self.size:
            return bytes(size)
        return self.mm[addr:self.size] + bytes(end - self.size)

    def write(self, addr: int, data: Buffer) -> None:
        n = len(data)
        if addr + n <= self.size:
            self.mm[addr:addr + n] = data
            return
        keep = max(0, self.size - addr)
        if keep:
            self.mm[addr:self.size] = memoryview(data)[:keep]
        self.lost_bytes += n - keep

    def write_page(self, pfn: int, data: Buffer) -> None:
        """Page ``pfn`` := ``data`` (at most a page) followed by zeros."""
        a = pfn << PAGE_SHIFT
        if a + PAGE_SIZE > self.size:
            self.write(a, bytes(data) + ZERO_PAGE[len(data):])
            return
        n = len(data)
        mm = self.mm
        if n:
            mm[a:a + n] = data
        if n < PAGE_SIZE and mm[a + n:a + PAGE_SIZE] != ZERO_PAGE[n:]:
            # only write zeros where there is something: holes stay holes
            mm[a + n:a + PAGE_SIZE] = ZERO_PAGE[n:]

    def copy_pages(self, dst_pfn: int, src_pfn: int, count: int = 1) -> None:
        """``count`` pages from ``src_pfn`` to ``dst_pfn`` (no overlap)."""
        d, s, n = dst_pfn << PAGE_SHIFT, src_pfn << PAGE_SHIFT, count << PAGE_SHIFT
        if d + n <= self.size and s + n <= self.size:
            self.mm.move(d, s, n)
        else:
            self.write(d, self.read(s, n))

    def swap_pages(self, a_pfn: int, b_pfn: int, count: int = 1) -> None:
        """Exchange ``count`` pages at ``a_pfn`` and ``b_pfn`` (no overlap)."""
        a, b, n = a_pfn << PAGE_SHIFT, b_pfn << PAGE_SHIFT, count << PAGE_SHIFT
        if a + n <= self.size and b + n <= self.size:
            tmp = self.mm[a:a + n]
            self.mm.move(a, b, n)
            self.mm[b:b + n] = tmp
        else:
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
        mm = self.mm
        for s, e in self.data_extents(start, end):
            s &= ~(PAGE_SIZE - 1)
            for w in range(s, e, SCAN_WINDOW):
                we = min(w + SCAN_WINDOW, e)
                buf = mm[w:we]
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

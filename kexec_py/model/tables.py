"""The model kernel's per-page tables, a byte or a word per page of the
machine instead of a dict entry (and an int object or two) per page.

- :class:`Owners`: pool pfn -> owner (0: the running kernel's own memory,
  -1: memory of a kernel frozen by a kexec jump, > 0: the id of the image
  that holds the page); one byte per page of the machine, a code that a
  small table turns into the owner.
- :class:`PageTable`: an image's map, destination pfn -> source pfn
  (``src == dst``: the page is in place), with the reverse (source ->
  destination, for the pages not in place).  It behaves as a dict: entries
  keep the order they were inserted in, assigning an existing key keeps
  its place, deleting and inserting again moves it to the end.  Storage: a
  log of (dst, src) in insertion order; per page of the machine the log
  position of the entry it is in (as the destination or as the source: a
  page is never both, but in place), and a byte that says whether it is
  a destination.  Destinations above the machine's memory (the model
  lets a segment go there) are indexed by a dict instead.

Both are read through :class:`collections.abc.MutableMapping`; the model
kernel's allocator works on the arrays directly (see
``ModelKernel._alloc``).  The per-page arrays are anonymous mmaps: a page
of them costs memory only once something in the 4096 (or 1024) pages of
the machine it covers is touched.

Memory for a load: 16 bytes per log entry (one per destination, plus one
per page placed again or reserved in place), and per page of the machine
1 byte (owners) + 5 bytes per image, touched sparsely.  Dicts costed ~180
bytes per page loaded.
"""

from __future__ import annotations

import mmap
import re
from abc import abstractmethod
from array import array
from collections import deque
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from itertools import compress, count, repeat
from operator import ne
from typing import TypeVar, overload

T = TypeVar("T")

#: code of a free page; 1 and 2 are the running kernel (0) and a frozen one (-1)
FREE = 0
#: both pfns of a deleted map entry
DEAD = (1 << 64) - 1
_NONZERO = re.compile(rb"[^\x00]+")


def _lane_bits(x: int, lanes: int) -> int:
    """Bit 0 of each 64-bit lane of ``x``: whether the lane is not zero (the
    lane or-ed down by shifts of 32 + 16 + ... + 1 bits, 63 in all, that
    bring nothing of the next lane there)."""
    for shift in (32, 16, 8, 4, 2, 1):
        x |= x >> shift
    return x & int.from_bytes(b"\1\0\0\0\0\0\0\0" * lanes, "little")


def _moved(ldst: array[int], lsrc: array[int] | None, chunk: int = 1 << 16) -> bytes:
    """Per entry of the log, 1 when it is live (dst not DEAD) and not in
    place (src != dst; ``lsrc`` None: live is enough), else 0: ``chunk``
    entries at a time as integers."""
    md = memoryview(ldst).cast("B")
    ms = None if lsrc is None else memoryview(lsrc).cast("B")
    out = bytearray()
    for i in range(0, 8 * len(ldst), 8 * chunk):
        n = min(chunk, len(ldst) - i // 8)
        d = int.from_bytes(md[i:i + 8 * n], "little")
        x = _lane_bits(d ^ ((1 << 64 * n) - 1), n)
        if ms is not None:
            x &= _lane_bits(d ^ int.from_bytes(ms[i:i + 8 * n], "little"), n)
        out += x.to_bytes(8 * n, "little")[::8]
    return bytes(out)


def _zeroed(nbytes: int) -> mmap.mmap:
    """``nbytes`` of zeros that cost nothing until written."""
    return mmap.mmap(-1, max(nbytes, 8))


class _Table(MutableMapping[int, int]):
    """A per-page table whose ``items()`` and ``values()`` walk its arrays
    (:meth:`_iter_items`, :meth:`_iter_values`) instead of looking every
    key up."""

    __slots__ = ()

    def items(self) -> ItemsView[int, int]:
        return _Items(self)

    def values(self) -> ValuesView[int]:
        return _Values(self)

    @abstractmethod
    def _iter_items(self) -> Iterator[tuple[int, int]]: ...

    def _iter_values(self) -> Iterator[int]:
        return (v for _, v in self._iter_items())


class _Items(ItemsView[int, int]):
    _mapping: _Table

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self._mapping._iter_items()


class _Values(ValuesView[int]):
    _mapping: _Table

    def __iter__(self) -> Iterator[int]:
        return self._mapping._iter_values()


class Owners(_Table):
    """Who holds each page of the pool: ``owner[pfn]`` is 0 (the running
    kernel), -1 (a kernel frozen by a kexec jump) or an image id; free pages
    are not in the mapping.  Keys are ``0 <= pfn < npfn``.

    ``codes[pfn]`` is the page's one-byte code (0: free), ``code_for(owner)``
    the code of an owner.  A writer of ``codes`` keeps the count right with
    :meth:`add_count`."""

    __slots__ = ("npfn", "codes", "_ids", "_code", "_n")

    def __init__(self, npfn: int) -> None:
        self.npfn = npfn
        self.codes = _zeroed(npfn)
        self._ids: list[int | None] = [None] * 256
        self._code: dict[int, int] = {}
        self._n = 0
        self._bind(0, 1)
        self._bind(-1, 2)

    def _bind(self, owner: int, code: int) -> None:
        self._ids[code] = owner
        self._code[owner] = code

    def code_for(self, owner: int) -> int:
        c = self._code.get(owner)
        if c is not None:
            return c
        for _ in range(2):
            for c in range(3, 256):
                if self._ids[c] is None:
                    self._bind(owner, c)
                    return c
            # codes of owners that hold no page any more are free again
            for c in range(3, 256):
                old = self._ids[c]
                if old is not None and self.codes.find(bytes([c])) < 0:
                    self._ids[c] = None
                    del self._code[old]
        raise RuntimeError("more than 253 images hold pages")

    def add_count(self, n: int) -> None:
        self._n += n

    # --- the mapping -------------------------------------------------------------------

    def __contains__(self, pfn: object) -> bool:
        return type(pfn) is int and 0 <= pfn < self.npfn and self.codes[pfn] != FREE

    def __getitem__(self, pfn: int) -> int:
        c = self.codes[pfn] if type(pfn) is int and 0 <= pfn < self.npfn else FREE
        if c == FREE:
            raise KeyError(pfn)
        owner = self._ids[c]
        assert owner is not None
        return owner

    @overload
    def get(self, pfn: int, /) -> int | None: ...
    @overload
    def get(self, pfn: int, default: int | T, /) -> int | T: ...

    def get(self, pfn: int, default: object = None) -> object:
        c = self.codes[pfn] if type(pfn) is int and 0 <= pfn < self.npfn else FREE
        return default if c == FREE else self._ids[c]

    def __setitem__(self, pfn: int, owner: int) -> None:
        if not 0 <= pfn < self.npfn:
            raise ValueError(f"page {pfn:#x} is outside the machine ({self.npfn:#x} pages)")
        c = self.code_for(owner)
        if self.codes[pfn] == FREE:
            self._n += 1
        self.codes[pfn] = c

    def __delitem__(self, pfn: int) -> None:
        if pfn not in self:
            raise KeyError(pfn)
        self.codes[pfn] = FREE
        self._n -= 1

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        """Held pages in address order."""
        for m in _NONZERO.finditer(self.codes):
            yield from range(m.start(), m.end())

    def runs(self) -> Iterator[tuple[int, int]]:
        """``[start, end)`` of every run of held pages, in address order."""
        for m in _NONZERO.finditer(self.codes):
            yield m.start(), m.end()

    def _iter_items(self) -> Iterator[tuple[int, int]]:
        ids = self._ids
        for s, e in self.runs():
            yield from zip(range(s, e), map(ids.__getitem__, self.codes[s:e]), strict=True)

    # --- whole-table operations ----------------------------------------------------------

    def release(self, pages: Iterable[int]) -> int:
        """Free every page of ``pages`` that is held (by anyone); returns how
        many were."""
        codes, npfn = self.codes, self.npfn
        freed = 0
        for p in pages:
            if 0 <= p < npfn and codes[p]:
                codes[p] = FREE
                freed += 1
        self._n -= freed
        return freed

    def frozen(self) -> Owners:
        """A copy in which every held page belongs to a frozen kernel (-1)."""
        new = Owners(self.npfn)
        code = new.code_for(-1)
        for s, e in self.runs():
            new.codes[s:e] = bytes([code]) * (e - s)
        new._n = self._n
        return new

    def keep_only(self, owner: int) -> None:
        """Free every page not held by ``owner``."""
        c = self._code.get(owner, FREE)
        table = bytes(c if i == c else FREE for i in range(256))
        for s, e in list(self.runs()):
            self.codes[s:e] = self.codes[s:e].translate(table)
        self._n = sum(e - s for s, e in self.runs())

    def set_many(self, pages: Iterable[int], owner: int) -> None:
        """``self[p] = owner`` for every ``p`` of ``pages``."""
        c = self.code_for(owner)
        codes, npfn = self.codes, self.npfn
        added = 0
        for p in pages:
            if not 0 <= p < npfn:
                raise ValueError(f"page {p:#x} is outside the machine ({npfn:#x} pages)")
            if not codes[p]:
                added += 1
            codes[p] = c
        self._n += added

    def arrays(self) -> tuple[array[int], array[int]]:
        """(pages, owners) in address order, as u64 and s64 arrays."""
        keys: array[int] = array("Q")
        values: array[int] = array("q")
        ids = self._ids
        for s, e in self.runs():
            keys.extend(range(s, e))
            values.extend(map(ids.__getitem__, self.codes[s:e]))  # type: ignore[arg-type]
        return keys, values

    @classmethod
    def from_arrays(cls, npfn: int, keys: Iterable[int], values: Iterable[int]) -> Owners:
        new = cls(npfn)
        codes = new.codes
        code_for = new.code_for
        n = 0
        for p, o in zip(keys, values, strict=True):
            if not 0 <= p < npfn:
                raise ValueError(f"page {p:#x} is outside the machine ({npfn:#x} pages)")
            if not codes[p]:
                n += 1
            codes[p] = code_for(o)
        new._n = n
        return new


class PageTable(_Table):
    """An image's map dst pfn -> src pfn (see the module docstring).

    Accessible attributes, for the allocator: ``ldst``, ``lsrc`` (the log,
    u64 arrays; a deleted entry's destination becomes ``DEAD``), ``idx`` (per
    pfn below ``npfn``: log index + 1 of the live entry it is in, as the
    destination or as the source -- never both but in place --, 0: none),
    ``key`` (per pfn below ``npfn``: 1 when it is a destination, i.e. a key;
    a byte is cheaper to look up at random than a word of ``idx``), ``far``
    (log index + 1 for destination pfns from ``npfn`` up), ``n`` (entries),
    ``moved`` (entries not in place).  Sources are pages of the machine
    (``< npfn``).  A writer of the arrays calls :meth:`touch` when done (and
    sets ``far`` through :meth:`set_far`)."""

    __slots__ = ("npfn", "idx", "key", "far", "ldst", "lsrc", "n", "moved", "_version",
                 "_cache")

    def __init__(self, npfn: int = 0) -> None:
        self.npfn = npfn
        self.idx = memoryview(_zeroed(4 * npfn)).cast("I")
        self.key = memoryview(_zeroed(npfn))
        self.far: dict[int, int] = {}
        self.ldst: array[int] = array("Q")
        self.lsrc: array[int] = array("Q")
        self.n = 0
        self.moved = 0
        self._version = 0
        self._cache: tuple[int, array[int], array[int]] | None = None

    def touch(self) -> None:
        """The arrays were changed directly."""
        self._version += 1

    # --- positions ---------------------------------------------------------------------

    def pos_of(self, dst: int) -> int:
        """Log index + 1 of ``dst``'s entry (0: ``dst`` is no key)."""
        if 0 <= dst < self.npfn:
            return self.idx[dst] if self.key[dst] else 0
        return self.far.get(dst, 0)

    def rev_of(self, src: int) -> int:
        """Log index + 1 of the entry that maps a page to ``src``, not in
        place (0: none)."""
        if 0 <= src < self.npfn and not self.key[src]:
            i = self.idx[src]
            if i and self.lsrc[i - 1] == src:
                return i
        return 0

    def set_far(self, dst: int, i: int) -> None:
        """``far[dst] = i`` (0: delete)."""
        if i:
            self.far[dst] = i
        else:
            del self.far[dst]

    def _set_dst(self, dst: int, i: int) -> None:
        if dst < self.npfn:
            self.idx[dst] = i
            self.key[dst] = 1 if i else 0
        else:
            self.set_far(dst, i)

    def _live(self) -> bytes | None:
        """Per log entry, 1 when it is live; None when all are."""
        if self.n == len(self.ldst):
            return None
        return _moved(self.ldst, None)

    # --- the mapping -------------------------------------------------------------------

    def __contains__(self, dst: object) -> bool:
        return type(dst) is int and self.pos_of(dst) != 0

    def __getitem__(self, dst: int) -> int:
        i = self.pos_of(dst) if type(dst) is int else 0
        if not i:
            raise KeyError(dst)
        return self.lsrc[i - 1]

    @overload
    def get(self, dst: int, /) -> int | None: ...
    @overload
    def get(self, dst: int, default: int | T, /) -> int | T: ...

    def get(self, dst: int, default: object = None) -> object:
        i = self.pos_of(dst) if type(dst) is int else 0
        return self.lsrc[i - 1] if i else default

    def __setitem__(self, dst: int, src: int) -> None:
        """``map[dst] = src``.  Pre-condition (the kernel's): no page is the
        source of two entries, nor a source and a destination; else
        ValueError."""
        if dst < 0 or not 0 <= src < self.npfn:
            raise ValueError(f"map entry {dst:#x} -> {src:#x}: bad page numbers")
        i = self.pos_of(dst)
        if self.rev_of(dst) or (src != dst and (self.pos_of(src) or
                                                self.rev_of(src) not in (0, i))):
            raise ValueError(f"map entry {dst:#x} -> {src:#x}: a page would be a source twice, "
                             "or a source and a destination")
        if i:
            old = self.lsrc[i - 1]
            if old != dst:
                self.idx[old] = 0
                self.moved -= 1
            self.lsrc[i - 1] = src
        else:
            self.ldst.append(dst)
            self.lsrc.append(src)
            i = len(self.ldst)
            self._set_dst(dst, i)
            self.n += 1
        if src != dst:
            self.idx[src] = i
            self.moved += 1
        self._version += 1

    def __delitem__(self, dst: int) -> None:
        i = self.pos_of(dst) if type(dst) is int else 0
        if not i:
            raise KeyError(dst)
        src = self.lsrc[i - 1]
        if src != dst:
            self.idx[src] = 0
            self.moved -= 1
        self._set_dst(dst, 0)
        self.ldst[i - 1] = DEAD
        self.n -= 1
        self._version += 1

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        live = self._live()
        return iter(self.ldst) if live is None else compress(self.ldst, live)

    def _iter_items(self) -> Iterator[tuple[int, int]]:
        live = self._live()
        if live is None:
            return zip(self.ldst, self.lsrc, strict=True)
        return zip(compress(self.ldst, live), compress(self.lsrc, live), strict=True)

    def _iter_values(self) -> Iterator[int]:
        live = self._live()
        return iter(self.lsrc) if live is None else compress(self.lsrc, live)

    def check(self) -> list[str]:
        """What is inconsistent in the table, in words (tests)."""
        bad = self._index_problems()
        live = sum(1 for _ in self)
        if live != self.n:
            bad.append(f"map counts {self.n} entries, holds {live}")
        if sum(1 for d, s in self.items() if d != s) != self.moved:
            bad.append(f"map counts {self.moved} pages not in place")
        for i, (d, s) in enumerate(zip(self.ldst, self.lsrc, strict=True), 1):
            if d != DEAD and (self.pos_of(d) != i or (d != s and self.rev_of(s) != i)):
                bad.append(f"entry {d:#x} -> {s:#x} is not indexed")
                break
        return bad

    def _index_problems(self) -> list[str]:
        """The index holds one pfn per live entry in place, two per entry
        not in place."""
        bad: list[str] = []
        indexed = len(self.idx) - array("I", self.idx.tobytes()).count(0) + len(self.far)
        if indexed != self.n + self.moved:
            bad.append(f"{indexed} pages indexed for {self.n} entries, {self.moved} not in "
                       "place")
        keys = len(self.key) - self.key.tobytes().count(0) + len(self.far)
        if keys != self.n:
            bad.append(f"{keys} pages marked as keys for {self.n} entries")
        return bad

    @property
    def rev(self) -> RevView:
        """src -> dst of the entries not in place."""
        return RevView(self)

    def moved_arrays(self) -> tuple[array[int], array[int]]:
        """(dst, src) of every entry not in place, in insertion order.  The
        arrays are kept until the table changes: do not modify them."""
        c = self._cache
        if c is None or c[0] != self._version:
            ldst, lsrc = self.ldst, self.lsrc
            mask = _moved(ldst, lsrc)
            c = self._cache = (self._version, array("Q", compress(ldst, mask)),
                               array("Q", compress(lsrc, mask)))
        return c[1], c[2]

    def arrays(self) -> tuple[array[int], array[int]]:
        """(dst, src) of every entry, in insertion order."""
        live = self._live()
        if live is None:
            return self.ldst[:], self.lsrc[:]
        return array("Q", compress(self.ldst, live)), array("Q", compress(self.lsrc, live))

    @classmethod
    def from_arrays(cls, npfn: int, keys: array[int], values: array[int]) -> PageTable:
        """The table of ``dict(zip(keys, values))``: keys distinct, values
        pages of the machine, a value not in place neither a key nor the
        value of another entry (else ValueError)."""
        new = cls(npfn)
        if len(keys) != len(values):
            raise ValueError("keys and values of different lengths")
        if not keys:
            return new
        if min(keys) < 0 or max(keys) >= DEAD or min(values) < 0 or max(values) >= npfn:
            raise ValueError("map entry with a page outside the machine")
        new.ldst, new.lsrc = array("Q", keys), array("Q", values)
        new.n = len(keys)
        idx = new.idx
        if max(keys) < npfn:
            deque(map(idx.__setitem__, keys, count(1)), 0)
            deque(map(new.key.__setitem__, keys, repeat(1)), 0)
        else:
            for i, d in enumerate(keys, 1):
                new._set_dst(d, i)
        moved = bytes(map(ne, keys, values))
        new.moved = sum(moved)
        deque(map(idx.__setitem__, compress(values, moved), compress(count(1), moved)), 0)
        bad = new._index_problems()
        if bad:
            raise ValueError(f"inconsistent map: {bad[0]}")
        return new


class RevView(Mapping[int, int]):
    """The reverse of a :class:`PageTable`: src -> dst of the pages not in
    place, in the order of their entries."""

    __slots__ = ("_t",)

    def __init__(self, table: PageTable) -> None:
        self._t = table

    def __getitem__(self, src: int) -> int:
        i = self._t.rev_of(src) if type(src) is int else 0
        if not i:
            raise KeyError(src)
        return self._t.ldst[i - 1]

    def __contains__(self, src: object) -> bool:
        return type(src) is int and self._t.rev_of(src) != 0

    def __len__(self) -> int:
        return self._t.moved

    def __iter__(self) -> Iterator[int]:
        return iter(self._t.moved_arrays()[1][:])

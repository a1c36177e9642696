"""The order in which the model's page allocator hands out free pages.

A seeded permutation of the pool's page indexes ``[0, n)`` in O(1) memory:
a full-period linear congruential generator modulo ``2**k`` (``a = 1 mod
4``, ``c`` odd: Hull-Dobell), passed through a bijective mixer (xorshift,
multiply by an odd constant, xorshift), walking past values ``>= n``
("cycle walking").  Each period visits every index exactly once, so the
allocator finds every free page; the order looks random enough that free
pages come from all over RAM -- the allocator of a long-running kernel.

The state is four integers: it persists in the model's state file, so the
order continues across invocations.
"""

from __future__ import annotations

import random
from bisect import bisect_right


class PageOrder:
    def __init__(self, n: int, seed: int, x: int | None = None) -> None:
        if n <= 0:
            raise ValueError("empty pool")
        self.n = n
        self.k = k = max(2, (n - 1).bit_length())
        self.mask = mask = (1 << k) - 1
        rnd = random.Random(seed)
        self.a = ((rnd.getrandbits(k) << 2) | 1) & mask
        self.c = rnd.getrandbits(k) | 1
        self.c &= mask
        self.m = rnd.getrandbits(k) | 1
        self.s1 = max(1, k // 2)
        self.s2 = max(1, k // 3)
        self.x = rnd.getrandbits(k) if x is None else x & mask

    def next(self) -> int:
        """The next index in ``[0, n)``."""
        a, c, mask, m, s1, s2, n = self.a, self.c, self.mask, self.m, self.s1, self.s2, self.n
        x = self.x
        while True:
            x = (a * x + c) & mask
            y = x ^ (x >> s1)
            y = (y * m) & mask
            y ^= y >> s2
            if y < n:
                self.x = x
                return y


class Pool:
    """The pool's pfn runs, indexed ``0 .. n-1`` in address order."""

    def __init__(self, runs: list[tuple[int, int]]) -> None:
        self.runs = runs
        self.starts: list[int] = []  # first index of each run
        self.firsts: list[int] = []  # first pfn of each run
        total = 0
        for first, end in runs:
            self.starts.append(total)
            self.firsts.append(first)
            total += end - first
        self.n = total
        self._single = runs[0][0] if len(runs) == 1 else None

    def pfn(self, index: int) -> int:
        if self._single is not None:
            return self._single + index
        i = bisect_right(self.starts, index) - 1
        return self.firsts[i] + index - self.starts[i]

    def __contains__(self, pfn: object) -> bool:
        if not isinstance(pfn, int):
            return False
        i = bisect_right(self.firsts, pfn) - 1
        return i >= 0 and pfn < self.runs[i][1]

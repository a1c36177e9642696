"""The seeded order of the model's page allocator, computed in batches of
packed integers, is the order of its one-step definition: pfn for pfn and
state for state, also when the state is saved and restored in the middle
of a batch, for pools of one page to more than 2**31, of one run to many.
"""

from __future__ import annotations

import random

import pytest

from kexec_py.model.order import PageOrder, Pool

# --- the order ---------------------------------------------------------------------------


def one_step_order(pool: Pool, seed: int, count: int) -> list[tuple[int, int]]:
    """(pfn, state) of the first ``count`` pages, by the definition."""
    o = PageOrder(pool, seed)
    x, out = o.x, []
    while len(out) < count:
        x, y = o.step(x)
        if y < pool.n:
            out.append((pool.pfn(y), x))
    return out


def random_pool(rnd: random.Random, nruns: int, size: int) -> Pool:
    runs, pfn = [], rnd.randint(0, 300)
    for _ in range(nruns):
        n = rnd.randint(1, size)
        runs.append((pfn, pfn + n))
        pfn += n + rnd.randint(0, 40)
    return Pool(runs)


@pytest.mark.parametrize("nruns,size", [(1, 1), (1, 3), (1, 5000), (2, 3000), (3, 700),
                                        (17, 300), (40, 50)])
def test_batched_order_is_the_one_step_order(nruns: int, size: int) -> None:
    rnd = random.Random(nruns * 1000 + size)
    for _ in range(8):
        pool = random_pool(rnd, nruns, size)
        seed = rnd.randrange(2**32)
        count = rnd.choice([1, 100, 3 * pool.n + 5, 20000])
        want = one_step_order(pool, seed, count)
        o = PageOrder(pool, seed)
        got = []
        for _ in range(count):
            p = o.next()
            got.append((p, o.x))
            if rnd.random() < 0.01:  # the state file keeps x only
                x = o.x
                o = PageOrder(pool, seed)
                o.x = x
        assert got == want


@pytest.mark.parametrize("n", [2**13 - 3, 2**13, 2**12 + 1, 2**14 - 1])
def test_batches_that_skip_few_or_many_steps(n: int) -> None:
    """Indexes >= n are skipped: a few per batch (n just below a power of
    two) or up to half of them (just above)."""
    pool = Pool([(0x100, 0x100 + n // 3), (0x200 + n, 0x200 + n + n - n // 3)])
    want = one_step_order(pool, n, 3 * n)
    o = PageOrder(pool, n)
    got = []
    for i in range(3 * n):
        got.append((o.next(), o.x))
        if i % 997 == 0:
            x = o.x
            o = PageOrder(pool, n)
            o.x = x
    assert got == want


def test_order_of_a_pool_too_big_for_packed_lanes() -> None:
    pool = Pool([(0x100, 0x100 + (1 << 31) + 5)])  # k = 32: computed step by step
    want = one_step_order(pool, 7, 3000)
    o = PageOrder(pool, 7)
    assert [(o.next(), o.x)[0] for _ in range(3000)] == [p for p, _ in want]
    assert o.x == want[-1][1]


def test_pool_select_is_membership() -> None:
    pool = Pool([(3, 10), (12, 13), (20, 40)])
    pfns = list(range(-2, 45)) + [11, 5, 12, 39, 40]
    assert pool.select(pfns) == [p for p in pfns if p in pool]

"""The quick-start example, end to end (a first line of defence; details elsewhere)."""

from __future__ import annotations

import anyio

from flowlet import pipe
from support import Tracked


async def test_quick_start() -> None:
    result = await pipe([1, 2, 3, 4, 5]).map(lambda n: n * 2).filter(lambda n: n > 5).collect()
    assert result == [6, 8, 10]


async def double(n: int) -> int:
    await anyio.sleep(0)
    return n * 2


async def test_concurrent_map_closes_source() -> None:
    source = Tracked(range(100))
    result = await pipe(source).map(double, concurrency=8).collect()
    assert sorted(result) == [n * 2 for n in range(100)]
    assert source.closes == 1

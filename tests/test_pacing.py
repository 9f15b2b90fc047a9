"""Loops that never suspend on their own still let other tasks run.

A sync source with sync stages is pulled in C code and never awaits; neither does a
filter that drops a long run of items, a huge batch, or a flat_map of empty expansions.
flowlet lets the event loop run about every 2 ms in all of them. The tests do not time
anything: a neighbour task records how far the pipeline had got each time it ran, and
it must have run while the pipeline was half-way.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from flowlet import Pipeline, pipe

N = 300_000


class Progress:
    """Counts the items the pipeline's functions saw; the neighbour samples it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen = 0
        self.samples: list[int] = []

    def count(self, item: Any) -> Any:
        self.seen += 1
        return item

    def expand_to_nothing(self, item: Any) -> tuple[()]:
        self.seen += 1
        return ()

    async def expand_to_nothing_async(self, item: Any) -> AsyncIterator[Any]:
        self.seen += 1
        return
        yield  # an async generator that ends at once, without suspending

    def ran_half_way(self) -> bool:
        return any(0 < sample < self.total for sample in self.samples)


async def run_beside_a_neighbour(progress: Progress, consume: Callable[[], Awaitable[Any]]) -> None:
    async def neighbour() -> None:
        while True:
            progress.samples.append(progress.seen)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(neighbour)
            await anyio.lowlevel.checkpoint()  # the neighbour is running
            progress.samples.clear()
            await consume()
            tg.cancel_scope.cancel()


async def drain_by_async_for(pipeline: Pipeline[Any]) -> None:
    async for _ in pipeline:
        pass


PIPELINES: dict[str, Callable[[Progress], Pipeline[Any]]] = {
    "sync maps": lambda p: pipe(range(N)).map(p.count).map(abs),
    "filter dropping everything": lambda p: pipe(range(N)).map(p.count).filter(lambda x: x < 0),
    "one huge batch": lambda p: pipe(range(N)).map(p.count).batch(N),
    "empty expansions": lambda p: pipe(range(N // 10)).map(p.count).flat_map(lambda x: ()),
    "empty async expansions that never suspend": lambda p: pipe(range(N // 10)).flat_map(
        p.expand_to_nothing_async
    ),
    # the source read as it is (no fused steps in front, so nothing paces the reads)
    "empty expansions of a bare source": lambda p: pipe(range(N // 10)).flat_map(
        p.expand_to_nothing
    ),
    "async filter dropping everything": lambda p: (
        pipe(range(N // 10)).map(p.count).filter(_never, concurrency=4)
    ),
}


async def _never(item: int) -> bool:
    return False


@pytest.mark.parametrize("consumer", ["collect", "async for", "drain"])
@pytest.mark.parametrize("name", list(PIPELINES))
async def test_a_long_run_that_never_suspends_lets_other_tasks_run(
    name: str, consumer: str
) -> None:
    total = N if name in ("sync maps", "filter dropping everything", "one huge batch") else N // 10
    progress = Progress(total)
    pipeline = PIPELINES[name](progress)
    consume: dict[str, Callable[[], Awaitable[Any]]] = {
        "collect": pipeline.collect,
        "async for": lambda: drain_by_async_for(pipeline),
        "drain": pipeline.drain,
    }
    await run_beside_a_neighbour(progress, consume[consumer])
    assert progress.seen == total
    assert progress.ran_half_way(), "the neighbour never ran while the pipeline was running"


def slow_sync(item: int) -> int:
    time.sleep(0.003)  # longer than the pacing interval: every item should be followed by a turn
    return item


@pytest.mark.parametrize("consumer", ["collect", "async for"])
async def test_a_slow_sync_function_is_paced_item_by_item(consumer: str) -> None:
    progress = Progress(6)
    pipeline = pipe(range(6)).map(progress.count).map(slow_sync)

    async def consume() -> Any:
        if consumer == "collect":
            return await pipeline.collect()
        return await drain_by_async_for(pipeline)

    await run_beside_a_neighbour(progress, consume)
    # The neighbour ran between items, not only at the start and the end.
    assert len({s for s in progress.samples if 0 < s < 6}) >= 3

"""Open and abandon a thousand pipelines: nothing is left behind.

Each round runs :data:`ROUND` pipelines over endless sources - inline and decoupled, sync
and async, with ``in_thread`` and async-generator expansions - and leaves every one of
them early: ``break`` (the event loop closes the iterator), ``aclose()``, dropping the
iterator (garbage), the exit of a ``stream()`` block, an exception in the loop body, an
outer ``move_on_after`` around ``collect``. A first round warms up (starts flowlet's
thread pool, fills the interpreter's caches); a second round of the same size must then
leave the counts where the first one left them:

* tasks (asyncio: ``asyncio.all_tasks()``; trio: ``tasks_living``) - exactly;
* threads other than flowlet's pool - exactly; the pool itself keeps up to 40 daemon
  threads by design, so it only has to stay within that;
* open file descriptors (Linux) - exactly;
* memory traced by ``tracemalloc`` - within :data:`MEMORY_TOLERANCE` (a leaked pipeline
  costs kilobytes, so a thousand of them would show).

Every source was closed exactly once, by the pipeline.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from flowlet import Pipeline, in_thread, pipe
from flowlet._threads import DEFAULT_THREADS

ROUND = 1000
"""Pipelines per round."""

MEMORY_TOLERANCE = 64 * 1024
"""Bytes the second round may leave on top of the first: about 65 bytes a pipeline, while
keeping just the source of each (an object and an ``itertools.count``) costs 160."""

DEADLINE = 0.0005
"""Seconds before ``move_on_after`` ends a ``collect`` of an endless source."""

SETTLE_TIMEOUT = 10
"""Seconds to wait for abandoned pipelines to finish closing (hang guard)."""


class Endless:
    """An endless sync source that counts its closes."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self.closes = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return next(self._count)

    def close(self) -> None:
        self.closes += 1


class AsyncEndless:
    """An endless async source that counts its closes."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self.closes = 0

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        await anyio.lowlevel.checkpoint()
        return next(self._count)

    async def aclose(self) -> None:
        self.closes += 1


def _double(item: int) -> int:
    return 2 * item


async def _adouble(item: int) -> int:
    await anyio.lowlevel.checkpoint()
    return 2 * item


async def _pair(item: int) -> AsyncIterator[int]:
    for i in range(2):
        await anyio.lowlevel.checkpoint()
        yield item + i


def _keep(item: int) -> bool:
    return item % 3 != 0


Shape = Callable[[Any], Pipeline[Any]]

SHAPES: list[tuple[str, bool, Shape]] = [
    # (name, async source, build)
    ("inline-sync", False, lambda s: pipe(s).map(_double).filter(_keep).batch(3)),
    ("inline-async", True, lambda s: pipe(s).map(_adouble).flat_map(_pair)),
    ("decoupled-map", False, lambda s: pipe(s).map(_adouble, concurrency=4)),
    (
        "decoupled-ordered-flat",
        True,
        lambda s: pipe(s).flat_map(_pair, concurrency=3, ordered=True).batch(2),
    ),
    ("sync-buffered", False, lambda s: pipe(s).map(_double, buffer=2).filter(_keep)),
    ("thread-pump", False, lambda s: pipe(s).map(in_thread(_double), concurrency=2)),
    (
        "two-decoupled",
        True,
        lambda s: pipe(s).map(_adouble, concurrency=2).filter(_keep, buffer=1),
    ),
]


class BodyError(Exception):
    pass


async def by_break(p: Pipeline[Any]) -> None:
    async for _ in p:
        break


async def by_aclose(p: Pipeline[Any]) -> None:
    iterator: Any = aiter(p)
    await anext(iterator)
    await iterator.aclose()


async def by_drop(p: Pipeline[Any]) -> None:
    iterator: Any = aiter(p)
    await anext(iterator)
    del iterator  # the event loop closes it


async def by_stream(p: Pipeline[Any]) -> None:
    async with p.stream() as items:
        async for _ in items:
            break


async def by_body_error(p: Pipeline[Any]) -> None:
    try:
        async for _ in p:
            raise BodyError
    except BodyError:
        pass


async def by_deadline(p: Pipeline[Any]) -> None:
    with anyio.move_on_after(DEADLINE):
        await p.collect()


EXITS: list[Callable[[Pipeline[Any]], Awaitable[None]]] = [
    by_break,
    by_aclose,
    by_drop,
    by_stream,
    by_body_error,
    by_deadline,
]


async def abandon(count: int) -> list[Endless | AsyncEndless]:
    """Open ``count`` pipelines and leave each early; every shape meets every exit."""
    sources: list[Endless | AsyncEndless] = []
    for i in range(count):
        _, is_async, build = SHAPES[i % len(SHAPES)]
        leave = EXITS[(i // len(SHAPES)) % len(EXITS)]
        source = AsyncEndless() if is_async else Endless()
        sources.append(source)
        await leave(build(source))
    return sources


def live_tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no asyncio loop: trio
        import trio.lowlevel

        return trio.lowlevel.current_statistics().tasks_living


def _pool_thread(thread: threading.Thread) -> bool:
    return thread.name.startswith("flowlet-worker-")


@dataclass(frozen=True)
class Counts:
    tasks: int
    other_threads: int
    pool_threads: int
    fds: int | None
    memory: int


def measure() -> Counts:
    threads = threading.enumerate()
    fds = len(os.listdir("/proc/self/fd")) if sys.platform == "linux" else None
    return Counts(
        tasks=live_tasks(),
        other_threads=sum(not _pool_thread(t) for t in threads),
        pool_threads=sum(map(_pool_thread, threads)),
        fds=fds,
        memory=tracemalloc.get_traced_memory()[0],
    )


async def settle(sources: list[Endless | AsyncEndless]) -> None:
    """Let abandoned iterators be closed and their tasks end (the event loop closes an
    iterator dropped after ``break`` a few iterations later)."""
    with anyio.fail_after(SETTLE_TIMEOUT):
        stable, last = 0, -1
        while stable < 5 or not all(s.closes for s in sources):
            gc.collect()
            await anyio.sleep(0.002)
            now = live_tasks()
            stable, last = (stable + 1, now) if now == last else (0, now)
    gc.collect()


@pytest.fixture
def traced() -> Iterator[None]:
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    try:
        yield
    finally:
        if not already:
            tracemalloc.stop()


@pytest.mark.usefixtures("traced")
async def test_abandoning_a_thousand_pipelines_leaves_nothing_behind() -> None:
    warm_up = await abandon(ROUND)
    await settle(warm_up)
    del warm_up
    gc.collect()
    before = measure()

    sources = await abandon(ROUND)
    await settle(sources)
    assert [s.closes for s in sources] == [1] * ROUND, "every source closed exactly once"
    del sources
    gc.collect()
    after = measure()

    grown = after.memory - before.memory
    print(f"\nleaks: before={before} after={after} memory grew by {grown} bytes")
    assert after.tasks == before.tasks
    assert after.other_threads == before.other_threads
    assert after.pool_threads <= DEFAULT_THREADS
    assert after.fds == before.fds
    assert grown < MEMORY_TOLERANCE, f"{grown} bytes left after {ROUND} pipelines"


def test_the_mix_covers_every_shape_with_every_exit() -> None:
    pairs = {(i % len(SHAPES), (i // len(SHAPES)) % len(EXITS)) for i in range(ROUND)}
    assert len(pairs) == len(SHAPES) * len(EXITS)

"""The yardstick: pipelines written by hand on plain asyncio, no library.

Each shape gets the fastest straightforward design we know how to write:

* sequential stages (and sync functions, which cannot overlap on the event loop
  anyway) are a chain of async generators, one per stage; the first stage loops over
  a sync source with a plain ``for``;
* a concurrent async map is :class:`WorkerPool`: N long-lived worker tasks pull from
  the upstream themselves and append results (completion order) to a bounded deque;
  the consumer drains the deque, parking on one future only when it is empty, and a
  worker parks on its own future only when the deque is full;
* a blocking function in a thread pool is :class:`ThreadPull`: N jobs in the pool
  pull inputs from the source themselves and hand results back in bursts, with one
  ``call_soon_threadsafe`` per burst rather than one event-loop round trip per item.

Both concurrent designs bound their run-ahead by ``workers + buffer`` inputs, like a
flowlet stage, and clean up (cancel workers, close the source) when the consumer
stops early.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any

_END: Any = object()


# -- sequential stages: a chain of async generators --------------------------------------


async def source(items: Iterable[Any]) -> AsyncIterator[Any]:
    for x in items:
        yield x


async def map_sync(fn: Callable[[Any], Any], items: Iterable[Any]) -> AsyncIterator[Any]:
    """First stage of a chain: a sync function over a sync source."""
    for x in items:
        yield fn(x)


async def map_async(fn: Callable[[Any], Any], upstream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for x in upstream:
        yield fn(x)


async def filter_sync(pred: Callable[[Any], Any], items: Iterable[Any]) -> AsyncIterator[Any]:
    for x in items:
        if pred(x):
            yield x


async def filter_async(
    pred: Callable[[Any], Any], upstream: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    async for x in upstream:
        if pred(x):
            yield x


async def flat_map_sync(fn: Callable[[Any], Any], items: Iterable[Any]) -> AsyncIterator[Any]:
    for x in items:
        for y in fn(x):
            yield y


async def batch(upstream: AsyncIterator[Any], size: int) -> AsyncIterator[list[Any]]:
    chunk: list[Any] = []
    async for x in upstream:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def chain_maps(fns: list[Callable[[Any], Any]], items: Iterable[Any]) -> AsyncIterator[Any]:
    """``len(fns)`` sequential map stages over a sync source."""
    it = map_sync(fns[0], items)
    for fn in fns[1:]:
        it = map_async(fn, it)
    return it


async def collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


# -- a concurrent async map: worker tasks and a bounded deque ------------------------------


class WorkerPool:
    """``workers`` tasks run ``fn`` (async) over the upstream; results in completion order.

    Inputs held (being processed, or finished and waiting in the deque) never exceed
    ``workers + buffer``: a worker with a result and a full deque parks, still holding
    its input, until the consumer takes something.
    """

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[Any]],
        upstream: Any,
        workers: int,
        buffer: int | None = None,
    ) -> None:
        self._fn = fn
        self._up = upstream
        self._workers = workers
        self._cap = 2 * workers if buffer is None else buffer
        self._ready: deque[Any] = deque()
        self._full: deque[asyncio.Future[None]] = deque()  # workers waiting for room
        self._consumer: asyncio.Future[None] | None = None
        self._running = 0
        self._error: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if hasattr(self._up, "__anext__"):
            self._lock: asyncio.Lock | None = asyncio.Lock()
            self._next: Any = self._up.__anext__
        else:
            self._lock = None
            self._next = iter(self._up).__next__
        self._running = self._workers
        self._tasks = [loop.create_task(self._work()) for _ in range(self._workers)]

    def _poke(self) -> None:
        waiter = self._consumer
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _work(self) -> None:
        fn, ready, cap, lock, take = self._fn, self._ready, self._cap, self._lock, self._next
        try:
            while True:
                if lock is None:
                    try:
                        x = take()
                    except StopIteration:
                        return
                else:
                    async with lock:
                        try:
                            x = await take()
                        except StopAsyncIteration:
                            return
                y = await fn(x)
                while len(ready) >= cap:
                    room = self._loop.create_future()
                    self._full.append(room)
                    await room
                ready.append(y)
                self._poke()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._running -= 1
            self._poke()

    def _make_room(self, taken: int) -> None:
        full = self._full
        while taken and full:
            room = full.popleft()
            if not room.done():
                room.set_result(None)
                taken -= 1

    async def _wait(self) -> bool:
        """Wait for results; False once every worker has stopped and nothing is left."""
        while not self._ready:
            if self._error is not None:
                raise self._error
            if not self._running:
                return False
            self._consumer = self._loop.create_future()
            await self._consumer
            self._consumer = None
        return True

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        aclose = getattr(self._up, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aiter__(self) -> AsyncIterator[Any]:
        self._start()
        ready = self._ready
        try:
            while await self._wait():
                y = ready.popleft()
                self._make_room(1)
                yield y
            if self._error is not None:
                raise self._error
        finally:
            await self._stop()

    async def collect(self) -> list[Any]:
        """Bulk consumer: take every ready result at once."""
        self._start()
        out: list[Any] = []
        ready = self._ready
        try:
            while await self._wait():
                taken = len(ready)
                out.extend(ready)
                ready.clear()
                self._make_room(taken)
            if self._error is not None:
                raise self._error
        finally:
            await self._stop()
        return out


# -- a blocking map in a thread pool: threads pull their own inputs ------------------------


class ThreadPull:
    """``workers`` jobs in ``pool`` each loop: take an input, call ``fn``, hand the result
    back. The event loop hears about results once per burst (when the result deque goes
    from empty to non-empty). Inputs held are bounded by ``workers + buffer``."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        pool: Executor,
        workers: int,
        buffer: int | None = None,
    ) -> None:
        self._fn = fn
        self._items = iter(items)
        self._pool = pool
        self._workers = workers
        self._slots = threading.Semaphore(workers + (2 * workers if buffer is None else buffer))
        self._lock = threading.Lock()
        self._results: deque[Any] = deque()
        self._alive = 0
        self._stopping = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:  # on the event loop
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _job(self) -> None:  # in a pool thread
        fn, lock, results, items = self._fn, self._lock, self._results, self._items
        notify = self._loop.call_soon_threadsafe
        try:
            while True:
                self._slots.acquire()
                if self._stopping:
                    return
                with lock:
                    x = next(items, _END)
                if x is _END:
                    return
                y = fn(x)
                with lock:
                    results.append(y)
                    first = len(results) == 1
                if first:
                    notify(self._wake)
        except BaseException as exc:
            self._error = exc
        finally:
            with lock:
                self._alive -= 1
            notify(self._wake)

    async def __aiter__(self) -> AsyncIterator[Any]:
        self._loop = asyncio.get_running_loop()
        self._alive = self._workers
        for _ in range(self._workers):
            self._pool.submit(self._job)
        lock, results, release = self._lock, self._results, self._slots.release
        try:
            while True:
                with lock:
                    burst = list(results)
                    results.clear()
                    alive = self._alive
                if burst:
                    for y in burst:
                        release()
                        yield y
                    continue
                if self._error is not None:
                    raise self._error
                if not alive:
                    return
                self._waiter = self._loop.create_future()
                await self._waiter
                self._waiter = None
        finally:
            self._stopping = True
            release(self._workers)

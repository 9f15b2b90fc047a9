"""Decoupled stages: a pool of worker tasks between an upstream and an outbox.

A stage with ``concurrency=N`` runs N workers. Each worker reads an input from the
upstream, calls the function and puts the result in the stage's outbox; it holds at
most one input at a time. So the stage holds at most ``N`` inputs in flight plus the
finished values in its outbox (``buffer``, by default ``2N``): its run-ahead is at most
``concurrency + buffer`` inputs, in completion order and in input order alike.

The stage owns its upstream: once every worker has stopped, for whatever reason, it
closes the upstream exactly once. Each ``flat_map`` worker owns the expansion it is
streaming and closes it the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio

from .._errors import STOPS, is_awaitable_result, stop_error
from .calls import Call, reject_awaitable
from .closing import close_any
from .flat_map import open_expansion
from .markers import END, PAUSE, SKIP
from .outbox import OrderedFlatOutbox, OrderedOutbox, Outbox
from .pacing import Pacer
from .run import Run
from .sync_chain import SyncChain, sync_reader
from .waiting import Waiters

Reader = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Pool:
    """What a stage that runs in workers asks for.

    ``capacity``: finished values that may wait for the consumer (``buffer``);
    ``expands``: the call's results are expansions to stream (``flat_map``).
    """

    call: Call
    concurrency: int
    capacity: int
    ordered: bool = False
    expands: bool = False

    @property
    def run_ahead(self) -> int:
        """Input items the pool may hold: in flight, plus finished and waiting."""
        return self.concurrency + self.capacity


class DecoupledStage:
    """One stage's workers, its outbox and its upstream, inside a run."""

    def __init__(self, pool: Pool, upstream: Any, run: Run) -> None:
        self.pool = stage = pool
        self.call = pool.call
        self.run = run
        self.upstream = upstream
        self.scope = anyio.CancelScope()
        self._finished_workers = 0
        self.outbox: Outbox | OrderedOutbox
        ordered = stage.ordered and stage.concurrency > 1
        window = stage.concurrency + stage.capacity
        if not ordered:
            self.outbox = Outbox(run, stage.capacity)
        elif stage.expands:
            self.outbox = OrderedFlatOutbox(run, window, stage.capacity)
        else:
            self.outbox = OrderedOutbox(run, window)
        self.outbox.on_close = self.scope.cancel
        self._read = make_reader(upstream, run)
        # A sync upstream is read with a plain call, saving a coroutine per item.
        self._sync_next = sync_reader(upstream) if isinstance(upstream, SyncChain) else None
        self._checkpoint = run.backend.checkpoint
        self._fn: Callable[[Any], Any] = stage.call.fn if stage.call.awaits else self._call_sync
        self._worker = self._pick_worker(ordered)

    def _pick_worker(self, ordered: bool) -> Callable[[], Coroutine[Any, Any, None]]:
        flat = self.pool.expands
        if ordered:
            self._loop = self._ordered_flat_loop if flat else self._ordered_loop
        elif flat:
            self._loop = self._flat_loop
        else:
            return self._map_worker  # the hot path guards itself: one coroutine level less
        return self._work

    async def run_workers(self) -> None:
        """Run the workers to the end, then close the upstream (in the run's task group)."""
        try:
            with self.scope:
                await self._run_tasks()
        finally:
            completed = self._completed()
            with anyio.CancelScope(shield=True):
                await self._close_upstream(completed)
            self.outbox.finish(completed)

    async def _run_tasks(self) -> None:
        await self.run.backend.run_tasks([self._worker] * self.pool.concurrency)

    def _completed(self) -> bool:
        """Whether every worker stopped because the upstream ended (not cancelled)."""
        return self._finished_workers == self.pool.concurrency

    async def _close_upstream(self, completed: bool) -> None:
        try:
            await close_any(self.upstream)
        except BaseException as exc:
            if completed:
                self.run.fail_close(exc)
            else:
                self.run.close_failed(exc)

    async def _work(self) -> None:
        try:
            await self._loop()
        except BaseException as exc:
            self._failed(exc)
        else:
            self._finished()

    def _failed(self, exc: BaseException) -> None:
        """A worker raised: record it (the run stops); cancellations go on up."""
        if self.run.is_cancellation(exc):
            raise exc
        if isinstance(exc, STOPS):  # the stage's calls translate their own: a read's
            whose = "an expansion" if self.pool.expands else "the source"
            exc = stop_error(exc, f"{whose} of {self.call.name}")
        self.run.fail(exc)

    def _finished(self) -> None:
        """A worker saw the end of its upstream."""
        if not self.run.stopping:  # stopped early, the stage did not complete
            self._finished_workers += 1

    def _call_sync(self, item: Any) -> Any:
        try:
            result = self.call.fn(item)
        except STOPS as exc:
            raise stop_error(exc, self.call.name) from exc
        if is_awaitable_result(result):
            reject_awaitable(result, self.call.name)
        return result

    async def _call(self, item: Any) -> Any:
        # A sync function's StopIteration is translated by _call_sync, before it
        # leaves a coroutine (which would turn it into a RuntimeError naming nothing).
        result = self._fn(item)
        if not self.call.awaits:
            return result
        try:
            return await result
        except StopAsyncIteration as exc:  # a coroutine lets this one through as it is
            raise stop_error(exc, self.call.name) from exc

    # -- completion order ------------------------------------------------------------

    async def _map_worker(self) -> None:
        # The hot loop of concurrent map/filter stages: the task's own coroutine, locals
        # only, no coroutine per item beyond the stage function's own.
        read, sync_next, fn, awaits = self._read, self._sync_next, self._fn, self.call.awaits
        outbox: Outbox = self.outbox  # type: ignore[assignment]
        put_nowait = outbox.put_nowait
        is_filter, drops, checkpoint = self.call.verdict, Pacer(), self._checkpoint
        run = self.run
        try:
            while not run.stopping:
                item = sync_next() if sync_next is not None else await read()
                if item is END:
                    self._finished()
                    return
                if item is PAUSE:
                    await checkpoint()
                    continue
                result = fn(item)
                if awaits:
                    try:
                        result = await result
                    except StopAsyncIteration as exc:  # see _call
                        raise stop_error(exc, self.call.name) from exc
                if is_filter:
                    if not result:
                        if drops.tick():  # dropping a long run never waits on the outbox
                            await checkpoint()
                        continue
                    result = item
                if not put_nowait(result):
                    await outbox.put(result)
        except BaseException as exc:
            self._failed(exc)

    async def _flat_loop(self) -> None:
        read, call, pace = self._read, self._call, Pacer()
        outbox: Outbox = self.outbox  # type: ignore[assignment]
        while not self.run.stopping:
            if pace.tick():  # empty expansions never wait on the outbox
                await self._checkpoint()
            item = await read()
            if item is END:
                return
            expansion, is_async = open_expansion(await call(item), self.call)
            async with _owned(expansion, self.run):
                if is_async:
                    async for value in expansion:
                        if not outbox.put_nowait(value):
                            await outbox.put(value)
                else:
                    for value in expansion:
                        if not outbox.put_nowait(value):
                            await outbox.put(value)

    # -- input order -----------------------------------------------------------------

    async def _ordered_read(self, outbox: OrderedOutbox) -> tuple[int, Any]:
        if self.run.stopping:
            return -1, END
        await outbox.reserve()
        try:
            item = await self._read()
        except BaseException:
            outbox.unreserve()
            raise
        if item is END:
            outbox.unreserve()
            return -1, END
        return outbox.assign(), item

    async def _ordered_loop(self) -> None:
        outbox: OrderedOutbox = self.outbox  # type: ignore[assignment]
        is_filter = self.call.verdict
        while True:
            position, item = await self._ordered_read(outbox)
            if item is END:
                return
            result = await self._call(item)
            if is_filter:
                result = item if result else SKIP
            outbox.fill(position, result)

    async def _ordered_flat_loop(self) -> None:
        outbox: OrderedFlatOutbox = self.outbox  # type: ignore[assignment]
        while True:
            position, item = await self._ordered_read(outbox)
            if item is END:
                return
            slot = outbox.open(position)
            expansion, is_async = open_expansion(await self._call(item), self.call)
            async with _owned(expansion, self.run):
                if is_async:
                    async for value in expansion:
                        await outbox.put(position, slot, value)
                else:
                    for value in expansion:
                        await outbox.put(position, slot, value)
            outbox.finish_expansion(position, slot)


class _owned:
    """Close an expansion exactly once when the block exits, shielded from cancellation.

    A failure to close stops the run when the block succeeded; after a failure it is
    only recorded. Either way it is kept apart from read and stage failures, which it
    never replaces.
    """

    __slots__ = ("_iterator", "_run")

    def __init__(self, iterator: Any, run: Run) -> None:
        self._iterator = iterator
        self._run = run

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await close_any(self._iterator)
            except BaseException as close_exc:
                if exc is None:
                    self._run.fail_close(close_exc)  # stops the run; ranks below errors
                else:
                    self._run.close_failed(close_exc)


def make_reader(upstream: Any, run: Run) -> Reader:
    """An async ``read()`` giving the next upstream item or END, safe for many workers."""
    if isinstance(upstream, SyncChain):
        return _sync_read(sync_reader(upstream), run)
    if isinstance(upstream, (Outbox, OrderedOutbox)):
        return upstream.get  # many readers are fine
    return _LockedReader(upstream, run).read


def _sync_read(read: Callable[[], Any], run: Run) -> Reader:
    checkpoint = run.backend.checkpoint

    async def sync_read() -> Any:
        while not run.stopping:
            if (item := read()) is not PAUSE:
                return item
            await checkpoint()
        return END

    return sync_read


class _LockedReader:
    """Serialises reads of an async iterator: ``__anext__`` must not run twice at once."""

    __slots__ = ("_anext", "_ended", "_reading", "_run", "_waiters")

    def __init__(self, upstream: Any, run: Run) -> None:
        self._anext = upstream.__anext__
        self._ended = False
        self._reading = False
        self._run = run
        self._waiters = Waiters(run)

    async def read(self) -> Any:
        while self._reading:
            await self._waiters.wait()
        self._reading = True
        try:
            if self._ended or self._run.stopping:  # the run failed while this one waited
                return END
            try:
                return await self._anext()
            except StopAsyncIteration:
                self._ended = True
                return END
        finally:
            self._reading = False
            self._waiters.wake_one()

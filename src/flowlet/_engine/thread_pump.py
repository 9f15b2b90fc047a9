"""A concurrent ``map``/``filter`` over :func:`flowlet.in_thread` without a loop round
trip per item.

The generic stage runs N worker tasks, each awaiting one thread call at a time, so
every item costs a hand-off to the pool and a wake-up of the event loop before the
thread gets its next item. Here, up to N *jobs* run in the pool and take inputs from a
queue that the event loop keeps filled ahead of them: a thread goes straight from one
item to the next, and the loop is woken once per batch of results (when the result
queue goes from empty to non-empty), not once per item.

Bounds are the same as the generic stage's: at most ``concurrency`` calls run at once
(at most that many jobs exist), and inputs queued, running, finished or waiting in the
outbox are at most ``concurrency + buffer`` together. Jobs leave the pool as soon as the
input queue is empty, so stages sharing a pool never starve each other.

Cancellation stops the feeding and drops queued inputs; calls already running finish in
their threads and their results are discarded, as with ``in_thread`` anywhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .markers import END, PAUSE
from .outbox import Outbox
from .run import Run
from .waiting import Waiters
from .workers import DecoupledStage, Pool


class Offloaded(Protocol):
    """A stage function that runs a sync function in a thread pool (``in_thread``): the
    pump calls :attr:`checked` in :attr:`pool`'s threads itself."""

    @property
    def checked(self) -> Callable[[Any], Any]: ...

    @property
    def pool(self) -> Submitter: ...


class Submitter(Protocol):
    def submit(self, fn: Callable[[], None], /) -> object: ...


class _TokenOutbox(Outbox):
    """An outbox that reports every value taken, so the feeder can read another."""

    __slots__ = ("on_taken",)

    def __init__(self, run: Run, capacity: int, on_taken: Callable[[int], None]) -> None:
        super().__init__(run, capacity)
        self.on_taken = on_taken

    async def get(self) -> Any:
        item = await super().get()
        if item is not END:
            self.on_taken(1)
        return item

    def take_all(self) -> list[Any]:
        items = super().take_all()
        self.on_taken(len(items))
        return items


class ThreadPumpStage(DecoupledStage):
    """The workers of a concurrent, completion-order map or filter of an ``in_thread``
    function (the stage decides that it is one, and passes ``offloaded``)."""

    def __init__(self, pool: Pool, offloaded: Offloaded, upstream: Any, run: Run) -> None:
        assert not pool.expands, "a flat_map does not run in the pump"
        assert not (pool.ordered and pool.concurrency > 1), "nor does an ordered stage"
        super().__init__(pool, upstream, run)
        self._call_fn = offloaded.checked
        self._pool = offloaded.pool
        self._limit = pool.run_ahead
        self.outbox = self._pump_outbox = _TokenOutbox(run, self._limit, self._taken)
        self.outbox.on_close = self.scope.cancel
        self._held = 0  # inputs read and not yet taken downstream (or dropped)
        self._lock = threading.Lock()
        self._inputs: deque[tuple[Any, contextvars.Context]] = deque()
        self._results: deque[tuple[Any, bool, Any]] = deque()
        self._jobs = 0  # jobs alive in the pool (under _lock)
        self._stopped = False
        self._feeding_done = False
        self._done = False
        self._feeder = Waiters(run)
        self._drainer: Any = None  # the drainer's parker while it waits for results
        self._call_soon = run.backend.threadsafe_caller()

    def _completed(self) -> bool:
        return self._done and not self.run.stopping

    async def run_workers(self) -> None:
        try:
            await super().run_workers()
        finally:
            with self._lock:  # queued inputs are dropped; running calls finish unobserved
                self._stopped = True
                self._inputs.clear()

    async def _run_tasks(self) -> None:
        await self.run.backend.run_tasks([self._guarded(self._feed), self._guarded(self._drain)])

    def _guarded(self, loop: Any) -> Any:
        async def task() -> None:
            try:
                await loop()
            except BaseException as exc:
                if self.run.is_cancellation(exc):
                    raise
                self.run.fail(exc)

        return task

    # -- event loop side ---------------------------------------------------------------

    def _taken(self, count: int) -> None:
        self._held -= count
        if count:
            self._feeder.wake_one()

    async def _feed(self) -> None:
        read, sync_next, limit = self._read, self._sync_next, self._limit
        copy_context = contextvars.copy_context
        while not self.run.stopping:
            while self._held >= limit:
                await self._feeder.wait()
            item = sync_next() if sync_next is not None else await read()
            if item is END:
                break
            if item is PAUSE:
                await self._checkpoint()
                continue
            self._held += 1
            with self._lock:
                self._inputs.append((item, copy_context()))
                start = self._jobs < self.pool.concurrency
                if start:
                    self._jobs += 1
            if start:
                self._pool.submit(self._job)
        self._feeding_done = True
        self._wake_drainer()

    async def _drain(self) -> None:
        outbox = self._pump_outbox
        is_filter = self.call.verdict
        backend = self.run.backend
        while True:
            with self._lock:
                batch = list(self._results)
                self._results.clear()
                finished = self._feeding_done and not self._jobs and not self._inputs
            for item, ok, value in batch:
                if not ok:
                    raise value
                if is_filter:
                    if not value:
                        self._taken(1)  # dropped
                        continue
                    value = item
                outbox.put_nowait(value)  # never full: _held bounds it
            if batch:
                continue
            if finished:
                self._done = True
                return
            parker = backend.parker()
            self._drainer = parker
            with self._lock:
                idle = not self._results and not (
                    self._feeding_done and not self._jobs and not self._inputs
                )
            if idle:
                await parker
            self._drainer = None

    def _wake_drainer(self) -> None:
        parker, self._drainer = self._drainer, None
        if parker is not None:
            self.run.backend.wake(parker)

    # -- pool thread side --------------------------------------------------------------

    def _job(self) -> None:
        fn, lock, inputs, results = self._call_fn, self._lock, self._inputs, self._results
        while True:
            with lock:
                if not inputs or self._stopped:
                    self._jobs -= 1
                    last = not self._jobs
                    break
                item, context = inputs.popleft()
            try:
                value, ok = context.run(fn, item), True
            except BaseException as exc:  # handed to the event loop, raised there
                value, ok = exc, False
            with lock:
                results.append((item, ok, value))
                first = len(results) == 1
            if first:
                self._notify()
            del item, context, value
        if last:
            self._notify()

    def _notify(self) -> None:
        # RuntimeError: the event loop is gone, and nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._call_soon(self._wake_drainer)

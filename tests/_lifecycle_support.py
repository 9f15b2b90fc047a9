"""Instruments for the lifecycle and early-exit tests.

* :class:`Source` / :class:`AsyncSource` - the shared tracked iterators, plus: whether
  the pipeline opened them (``iter()`` / ``aiter()``; an iterator may be asked again),
  every exception they raised (so a test can check that the consumer got that very
  object), a hook run on each read, and (async) a read that never returns.
* :class:`Calls` - stage functions that count calls started and finished (a call still
  in flight after the consumer is done is a leak) and expansions that are tracked too.
* :func:`settle` - let the event loop finalise abandoned iterators.
* :func:`live_tasks` - a backend-neutral measure of the tasks still alive.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel

from support import AsyncTracked, CloseError, ReadError, StageError, Tracked

Errors = list[tuple[str, BaseException]]
"""What the instruments raised, in order: ("read" | "stage" | "close", exception)."""


class Source(Tracked):
    """A :class:`Tracked` that logs what it raises and can run ``on_read(index)``."""

    def __init__(
        self,
        items: Any,
        *,
        fail_at: int | None = None,
        fail_close: bool = False,
        errors: Errors | None = None,
        on_read: Callable[[int], object] | None = None,
    ) -> None:
        super().__init__(items, fail_at=fail_at, fail_close=fail_close)
        self.opened = False
        self.errors: Errors = [] if errors is None else errors
        self.on_read = on_read

    def __iter__(self) -> Iterator[Any]:
        self.opened = True
        return self

    def __next__(self) -> Any:
        if self.on_read is not None:
            self.on_read(self.pulled)
        try:
            return super().__next__()
        except ReadError as exc:
            self.errors.append(("read", exc))
            raise

    def close(self) -> None:
        try:
            super().close()
        except CloseError as exc:
            self.errors.append(("close", exc))
            raise


class AsyncSource(AsyncTracked):
    """The async twin of :class:`Source`; ``stall_at``: that read never returns."""

    def __init__(
        self,
        items: Any,
        *,
        fail_at: int | None = None,
        fail_close: bool = False,
        errors: Errors | None = None,
        on_read: Callable[[int], object] | None = None,
        stall_at: int | None = None,
    ) -> None:
        super().__init__(items, fail_at=fail_at, fail_close=fail_close)
        self.opened = False
        self.errors: Errors = [] if errors is None else errors
        self.on_read = on_read
        self.stall_at = stall_at

    def __aiter__(self) -> AsyncIterator[Any]:
        self.opened = True
        return self

    async def __anext__(self) -> Any:
        if self.on_read is not None:
            self.on_read(self.pulled)
        if self.stall_at is not None and self.pulled == self.stall_at:
            await anyio.sleep_forever()
        try:
            return await super().__anext__()
        except ReadError as exc:
            self.errors.append(("read", exc))
            raise

    async def aclose(self) -> None:
        try:
            await super().aclose()
        except CloseError as exc:
            self.errors.append(("close", exc))
            raise


class Calls:
    """Stage functions and flat_map expansions that report what happened to them.

    ``fail_from``: the functions raise :class:`StageError` for every item >= this.
    ``expansion_kind``: ``"sync"`` (:class:`Source`) or ``"async"`` (:class:`AsyncSource`).
    ``expansion_fail_from`` / ``expansion_fail_at``: the expansions of items >= the first
    fail at their read number ``expansion_fail_at``. ``expansion_fail_close_from``: the
    expansions of items >= this fail to close. ``stall_at``: the async functions never
    return for that item.
    """

    def __init__(
        self,
        *,
        errors: Errors | None = None,
        fail_from: int | None = None,
        expansion_kind: str = "sync",
        expansion_size: int = 2,
        expansion_fail_from: int | None = None,
        expansion_fail_at: int = 0,
        expansion_fail_close_from: int | None = None,
        stall_at: int | None = None,
    ) -> None:
        self.errors: Errors = [] if errors is None else errors
        self.started = 0
        self.finished = 0
        self.fail_from = fail_from
        self.expansion_kind = expansion_kind
        self.expansion_size = expansion_size
        self.expansion_fail_from = expansion_fail_from
        self.expansion_fail_at = expansion_fail_at
        self.expansion_fail_close_from = expansion_fail_close_from
        self.stall_at = stall_at
        self.expansions: list[Source | AsyncSource] = []
        self.left_to_gc = 0

    @property
    def in_flight(self) -> int:
        return self.started - self.finished

    def _maybe_fail(self, item: int) -> None:
        if self.fail_from is not None and item >= self.fail_from:
            exc = StageError(f"stage failed at {item}")
            self.errors.append(("stage", exc))
            raise exc

    def sync(self, result: Callable[[int], Any]) -> Callable[[int], Any]:
        """A plain function returning ``result(item)``."""

        def fn(item: int) -> Any:
            self.started += 1
            try:
                self._maybe_fail(item)
                return result(item)
            finally:
                self.finished += 1

        return fn

    def async_(self, result: Callable[[int], Any]) -> Callable[[int], Any]:
        """An ``async def`` function returning ``result(item)`` after one checkpoint."""

        async def fn(item: int) -> Any:
            self.started += 1
            try:
                await anyio.lowlevel.checkpoint()
                if item == self.stall_at:
                    await anyio.sleep_forever()
                self._maybe_fail(item)
                return result(item)
            finally:
                self.finished += 1

        return fn

    def async_gen(self, size: int) -> Callable[[int], AsyncIterator[int]]:
        """An async generator function expanding ``item`` into ``size`` items, one
        checkpoint each; a body started and not yet finished counts as a call in flight,
        and a body finalised by the event loop's garbage-collection hook (rather than
        closed by the pipeline) counts in :attr:`left_to_gc`."""

        async def expand(item: int) -> AsyncIterator[int]:
            self.started += 1
            try:
                for i in range(size):
                    await anyio.lowlevel.checkpoint()
                    if item == self.stall_at:
                        await anyio.sleep_forever()
                    yield 10 * item + i
            finally:
                self.finished += 1
                if finalised_by_event_loop():
                    self.left_to_gc += 1

        return expand

    def expand(self, item: int) -> Source | AsyncSource:
        """A tracked expansion of ``item``: ``10 * item``, ``10 * item + 1``, ..."""
        fails = self.expansion_fail_from is not None and item >= self.expansion_fail_from
        kind = Source if self.expansion_kind == "sync" else AsyncSource
        expansion = kind(
            [10 * item + i for i in range(self.expansion_size)],
            fail_at=self.expansion_fail_at if fails else None,
            fail_close=(
                self.expansion_fail_close_from is not None
                and item >= self.expansion_fail_close_from
            ),
            errors=self.errors,
        )
        self.expansions.append(expansion)
        return expansion


async def settle(done: Callable[[], bool], *, generation: int = 2, rounds: int = 200) -> None:
    """Collect garbage and let the event loop run until ``done()`` (or ``rounds`` passed).

    An abandoned ``async for`` iterator is finalised by the event loop a few iterations
    after it was dropped (or found by the garbage collector); the caller asserts ``done()``
    afterwards. ``generation=1`` collects only young objects: much cheaper, and enough
    for the objects of a run that just ended.
    """
    gc.collect(generation)
    for _ in range(rounds):
        if done():
            return
        await anyio.sleep(0)


def finalised_by_event_loop() -> bool:
    """True inside an async generator's cleanup when the event loop's finaliser runs it
    (the generator was garbage collected before anyone closed it)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        import trio.lowlevel

        return trio.lowlevel.current_task().name.endswith("(abandoned)")
    return task is not None and type(task.get_coro()).__name__ == "async_generator_athrow"


def live_tasks() -> Any:
    """Something to compare before and after: the set of unfinished asyncio tasks, or
    trio's count of living tasks."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        import trio.lowlevel

        return trio.lowlevel.current_statistics().tasks_living
    return {task for task in asyncio.all_tasks() if not task.done()}


async def settle_tasks(before: Any, rounds: int = 200) -> Any:
    """Let the event loop run until the live tasks are back to ``before``; return them."""
    gc.collect()
    now = live_tasks()
    for _ in range(rounds):
        if now == before:
            break
        await anyio.sleep(0)
        now = live_tasks()
    return now

"""Running a pipeline: building the plan, hosting the workers, consuming the output.

Every way of consuming a pipeline goes through :func:`build` and :func:`close_final`;
what differs is who hosts the decoupled stages' workers:

* terminals (``collect``, ``drain``, ``for_each``) and ``stream()`` host them in a task
  group in the caller's task, around the consuming loop;
* ``async for`` cannot (an async generator must not yield inside a task group), so it
  starts a runner task outside the caller's scopes; breaking out of the loop, ``aclose()``
  or the garbage collector cancels the runner and closes everything.

A pipeline without decoupled stages needs no task at all: the consumer pulls through
the inline chain itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._errors import STOPS, stop_error
from .calls import SYNC_CALLS
from .closing import close_any
from .flat_map import AsyncFlatMap
from .markers import END, PAUSE
from .nodes import Node
from .outbox import OrderedOutbox, Outbox
from .pacing import PACE_INTERVAL, Pacer
from .plan import Stage, build
from .run import Run
from .sync_chain import Pause, SyncChain
from .workers import DecoupledStage


class Sink:
    """Where a terminal puts the outputs: in bulk (``extend``) or one at a time."""

    __slots__ = ("append", "extend")

    def __init__(
        self, extend: Callable[[list[Any]], object], append: Callable[[Any], object]
    ) -> None:
        self.extend = extend
        self.append = append


def _discard(_: object) -> None:
    return None


DISCARD = Sink(_discard, _discard)


async def close_final(final: Any, run: Run, failed: bool) -> None:
    """Close the consumed node (and so the inline chain behind it) exactly once.

    After a failure the close failure is only recorded: it never replaces the error.
    """
    try:
        if isinstance(final, SyncChain):
            final.close()  # sync: nothing to shield
        else:
            with anyio.CancelScope(shield=True):
                await close_any(final)
    except BaseException as exc:
        run.own_context(exc)  # closed while unwinding: that is not part of the failure
        if not failed:
            raise
        run.close_failed(exc)


# -- terminals ---------------------------------------------------------------------------


async def execute(source: Any, stages: Sequence[Stage], sink: Sink) -> None:
    """Run the pipeline to the end, handing every output to ``sink``."""
    run = Run()
    final, decoupled = build(source, stages, run)
    async with _hosted(run, final, decoupled):
        await _consume(final, run, sink)


@asynccontextmanager
async def _hosted(run: Run, final: Any, decoupled: list[DecoupledStage]) -> AsyncGenerator[None]:
    """Run the decoupled stages' workers while the block consumes ``final``; then close
    ``final`` and raise the run's failure, if any.

    The block's own exception is recorded as a failure of the run (so it stops the
    workers) and raised after the cleanup, as itself: never inside an exception group.
    Without decoupled stages there is nothing to host: no task group, no cancel scope.
    """
    try:
        if not decoupled:
            yield
        else:
            with run.scope:
                async with anyio.create_task_group() as tg:
                    start_workers(tg, decoupled)
                    try:
                        yield
                    except BaseException as exc:
                        if run.is_cancellation(exc):
                            raise
                        run.fail(exc)
    except BaseException:
        await close_final(final, run, failed=True)
        raise
    await close_final(final, run, failed=run.failed)
    if decoupled and run.failed and run.backend.name == "asyncio":
        # On asyncio the workers' cancellation reaches this task by coroutine.throw(), and
        # an exception leaving a throw() chains itself onto whatever each frame on the
        # way up is handling: here the consumer's cancellation (the caller's async with
        # is exiting on it). After one turn of the loop the task is resumed by send(),
        # and the failure leaves with the context it was raised with. (trio always
        # resumes tasks by send().)
        await anyio.lowlevel.cancel_shielded_checkpoint()
    run.raise_failure()


def start_workers(tg: anyio.abc.TaskGroup, decoupled: list[DecoupledStage]) -> None:
    for stage in decoupled:
        tg.start_soon(stage.run_workers)


async def _consume(final: Any, run: Run, sink: Sink) -> None:
    """Pull everything from ``final`` into ``sink``, in the fastest way its type allows."""
    if isinstance(final, SyncChain):
        await _consume_sync(final, run, sink)
    elif isinstance(final, Outbox):
        while await final.wait_ready():
            sink.extend(final.take_all())
    elif isinstance(final, Node):
        checkpoint, extend, pace = run.backend.checkpoint, sink.extend, Pacer()
        while chunk := await final.next_chunk():
            extend(chunk)
            if pace.tick():
                await checkpoint()
    else:
        checkpoint, append, pace = run.backend.checkpoint, sink.append, Pacer()
        get = final.get if isinstance(final, OrderedOutbox) else _getter(final)
        while (item := await get()) is not END:
            append(item)
            if pace.tick():
                await checkpoint()


async def _consume_sync(chain: SyncChain, run: Run, sink: Sink) -> None:
    # Pull in chunks sized so that each takes about PACE_INTERVAL, and let the event loop
    # run between chunks: fast sync stages cost one islice per chunk, slow ones cannot
    # starve the other tasks for long.
    iterator, checkpoint, clock = chain.iterator, run.backend.checkpoint, time.perf_counter
    size = 1  # doubles while chunks are quick: slow stages are paced from the first item
    while True:
        started = clock()
        chunk: list[Any] = []
        try:
            chunk.extend(islice(iterator, size))  # keeps what it got if a Pause comes
        except Pause:
            sink.extend(chunk)
            await checkpoint()
            continue
        except StopAsyncIteration as exc:
            raise stop_error(exc, SYNC_CALLS) from exc
        sink.extend(chunk)
        if len(chunk) < size:
            chain.check_ended()
            return
        elapsed = clock() - started
        if elapsed < PACE_INTERVAL / 2 and size < 1 << 16:
            size *= 2
        elif elapsed > PACE_INTERVAL and size > 1:
            size //= 2
        await checkpoint()


def _getter(final: Any) -> Callable[[], Any]:
    """``get()`` for an async iterator: the next item, or END."""
    anext = final.__anext__

    async def get() -> Any:
        try:
            return await anext()
        except StopAsyncIteration:
            return END

    return get


Cleanup = Callable[[BaseException | None], Awaitable[None]]
Opened = tuple[Any, Run, "Cleanup | None"]


async def next_window(pacer: Pacer, checkpoint: Callable[[], Awaitable[None]]) -> int:
    """A consumer's countdown ran out: give the event loop its turn if the pacing
    interval has passed, and return the next countdown (see :class:`Pacer`)."""
    if pacer.expired():
        await checkpoint()
    return pacer.countdown


async def paced_items(open_run: Callable[[], Opened]) -> AsyncGenerator[Any, None]:
    """The items of a run, one by one, letting the event loop run regularly.

    ``open_run()`` is called at the first ``__anext__`` and gives the node to read, the
    run, and ``cleanup(primary)``, which runs when the generator ends, fails or is
    closed; ``primary`` is the exception that ended it (None for exhaustion and for
    ``aclose()``).
    """
    final, run, cleanup = open_run()
    checkpoint, pacer = run.backend.checkpoint, Pacer()
    countdown = 1  # items until the next look at the clock (see Pacer)
    primary: BaseException | None = None
    try:
        if isinstance(final, SyncChain):
            iterator = final.iterator
            while True:
                try:
                    for item in iterator:
                        yield item
                        countdown -= 1
                        if not countdown:
                            countdown = await next_window(pacer, checkpoint)
                    break
                except Pause:  # raised by the chain's Probe: the loop's turn, then read on
                    await checkpoint()
            final.check_ended()
        elif isinstance(final, (Outbox, OrderedOutbox)):
            get = final.get
            while (item := await get()) is not END:
                yield item
                countdown -= 1
                if not countdown:
                    countdown = await next_window(pacer, checkpoint)
        elif isinstance(final, AsyncFlatMap):
            # A run of items at a time (a sync expansion, drained lazily right here),
            # rather than a coroutine per item; and, while nothing needs awaiting, no
            # coroutine per run either.
            next_sync_run, next_run = final.next_sync_run, final.next_run
            while True:
                run = next_sync_run()
                if run is None:
                    run = await next_run()
                if run is END:
                    break
                if run is PAUSE:
                    await checkpoint()
                    continue
                for item in run:
                    yield item
                    countdown -= 1
                    if not countdown:
                        countdown = await next_window(pacer, checkpoint)
                countdown -= 1  # a run counts too: runs of empty expansions are paced
                if not countdown:
                    countdown = await next_window(pacer, checkpoint)
        else:
            anext = final.__anext__
            while True:
                try:
                    item = await anext()
                except StopAsyncIteration:
                    break
                yield item
                countdown -= 1
                if not countdown:
                    countdown = await next_window(pacer, checkpoint)
    except STOPS as exc:
        # Not an end: every read above that may end says so with END or is caught
        # where it is made, so this came from user code (a sync stage function, the
        # source, or a flat_map expansion drained right here).
        primary = final.user_stop(exc) if isinstance(final, AsyncFlatMap) else None
        primary = primary or stop_error(exc, SYNC_CALLS)
        raise primary from exc
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            primary = exc
        raise
    finally:
        if cleanup is not None:
            await cleanup(primary)


# -- scoped iteration ----------------------------------------------------------------------


@asynccontextmanager
async def stream(source: Any, stages: Sequence[Stage]) -> AsyncGenerator[AsyncIterator[Any], None]:
    """``async with pipeline.stream() as items``: the workers live exactly as long as the
    block; leaving it (normally, by an exception or by cancellation) stops them and
    closes every iterator before ``__aexit__`` returns."""
    run = Run()
    final, decoupled = build(source, stages, run)
    items = _Scoped(paced_items(lambda: (final, run, None)))
    async with _hosted(run, final, decoupled):
        try:
            yield items
        finally:
            # The block is over, whichever way: stop the workers before cleaning up.
            if decoupled:
                run.scope.cancel()
            await items.aclose()


class _Scoped:
    """The iterator handed out by ``stream()``: usable only inside its block."""

    __slots__ = ("_items", "_open")

    def __init__(self, items: AsyncGenerator[Any, None]) -> None:
        self._items = items
        self._open = True

    def __aiter__(self) -> _Scoped:
        return self

    async def __anext__(self) -> Any:
        if not self._open:
            raise RuntimeError("this stream() is closed: iterate it inside its async with block")
        return await self._items.__anext__()

    async def aclose(self) -> None:
        self._open = False
        await self._items.aclose()

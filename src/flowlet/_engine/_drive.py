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

from .._stages import Stage
from ._closing import close_any
from ._inline import END, NODE_TYPES, Node, Passthrough, SyncChain
from ._outbox import OrderedOutbox, Outbox
from ._run import Run
from ._stage import DecoupledStage
from ._thread_stage import ThreadPumpStage, runs_in_thread_pump


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

PACE_INTERVAL = 0.002
"""Seconds a loop that never suspends may keep the event loop to itself (about)."""


def build(source: Any, stages: Sequence[Stage], run: Run) -> tuple[Any, list[DecoupledStage]]:
    """Wire ``stages`` onto ``source``: the node to consume, and the stages needing workers.

    Inline sync stages over a sync source fuse into one :class:`SyncChain`; other
    inline stages become async nodes, and the sync map/filter stages after a node are
    absorbed into it; decoupled stages get workers and an outbox.
    """
    node: Any = source.__aiter__() if hasattr(source, "__aiter__") else SyncChain(iter(source))
    decoupled: list[DecoupledStage] = []
    for stage in stages:
        if stage.decoupled:
            kind = ThreadPumpStage if runs_in_thread_pump(stage) else DecoupledStage
            worker_stage = kind(stage, node, run)
            decoupled.append(worker_stage)
            node = worker_stage.outbox
        elif isinstance(node, SyncChain) and node.can_take(stage):
            node.take(stage)
        elif Node.can_absorb(stage):
            if not isinstance(node, Node):
                node = Passthrough(node)
            node.absorb(stage)
        else:
            node = NODE_TYPES[stage.kind](node, stage)
    return node, decoupled


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
                    _start_workers(tg, decoupled)
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
    run.raise_failure()


def _start_workers(tg: anyio.abc.TaskGroup, decoupled: list[DecoupledStage]) -> None:
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
        get = reader(final)
        while (item := await get()) is not END:
            append(item)
            if pace.tick():
                await checkpoint()


async def _consume_sync(chain: SyncChain, run: Run, sink: Sink) -> None:
    # Pull in chunks sized so that each takes about PACE_INTERVAL, and let the event loop
    # run between chunks: fast sync stages cost one islice per chunk, slow ones cannot
    # starve the other tasks for long.
    iterator, checkpoint, clock = chain.iterator, run.backend.checkpoint, time.perf_counter
    size = 16
    while True:
        started = clock()
        chunk = list(islice(iterator, size))
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


def reader(final: Any) -> Callable[[], Any]:
    """``get()`` for an async node or outbox: the next item, or END."""
    if isinstance(final, (Outbox, OrderedOutbox)):
        return final.get
    anext = final.__anext__

    async def get() -> Any:
        try:
            return await anext()
        except StopAsyncIteration:
            return END

    return get


class Pacer:
    """Says when a per-item loop that may never suspend on its own (an async iterator
    over a sync source, say) should let the event loop run: about every
    :data:`PACE_INTERVAL`. Callers count items and ask only every :attr:`EVERY` items,
    so the clock is read rarely."""

    __slots__ = ("_countdown", "_deadline")

    EVERY = 64

    def __init__(self) -> None:
        self._countdown = self.EVERY
        self._deadline = time.perf_counter() + PACE_INTERVAL

    def tick(self) -> bool:
        """Count one item; True when the caller should checkpoint now."""
        self._countdown -= 1
        if self._countdown:
            return False
        self._countdown = self.EVERY
        return self.due()

    def due(self) -> bool:
        """True (and restart the interval) if the interval has passed."""
        now = time.perf_counter()
        if now < self._deadline:
            return False
        self._deadline = now + PACE_INTERVAL
        return True


Cleanup = Callable[[BaseException | None], Awaitable[None]]
Opened = tuple[Any, Run, "Cleanup | None"]


async def _items(open_run: Callable[[], Opened]) -> AsyncGenerator[Any, None]:
    """The items of a run, one by one, letting the event loop run regularly.

    ``open_run()`` is called at the first ``__anext__`` and gives the node to read, the
    run, and ``cleanup(primary)``, which runs when the generator ends, fails or is
    closed; ``primary`` is the exception that ended it (None for exhaustion and for
    ``aclose()``).
    """
    final, run, cleanup = open_run()
    checkpoint, pacer, every = run.backend.checkpoint, Pacer(), Pacer.EVERY
    countdown = every
    primary: BaseException | None = None
    try:
        if isinstance(final, SyncChain):
            for item in final.iterator:
                yield item
                countdown -= 1
                if not countdown:
                    countdown = every
                    if pacer.due():
                        await checkpoint()
            final.check_ended()
        elif isinstance(final, (Outbox, OrderedOutbox)):
            get = final.get
            while (item := await get()) is not END:
                yield item
                countdown -= 1
                if not countdown:
                    countdown = every
                    if pacer.due():
                        await checkpoint()
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
                    countdown = every
                    if pacer.due():
                        await checkpoint()
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            primary = exc
        raise
    finally:
        if cleanup is not None:
            await cleanup(primary)


# -- async iteration ---------------------------------------------------------------------


def iterate(source: Any, stages: Sequence[Stage]) -> AsyncIterator[Any]:
    """``async for`` over a pipeline.

    An async generator, so that the event loop finalises it when it is abandoned
    (``break``, an exception in the loop body, garbage collection); its cleanup then
    stops the runner and closes every iterator. Nothing yields inside a cancel scope:
    the workers live in the runner's task. The run starts at the first ``__anext__``.
    """

    def open_run() -> Opened:
        run = Run()
        final, decoupled = build(source, stages, run)
        runner: Runner | None = None
        if decoupled:
            decoupled[-1].outbox.read_outside_run()
            runner = Runner(run, decoupled)
            runner.start()

        async def cleanup(primary: BaseException | None) -> None:
            if runner is not None:
                await runner.stop()
            await close_final(final, run, failed=primary is not None or run.failed)
            if primary is None:
                run.raise_failure()

        return final, run, cleanup

    return _items(open_run)


class Runner:
    """Hosts the workers of a detached iteration in a task outside the consumer's scopes."""

    def __init__(self, run: Run, decoupled: list[DecoupledStage]) -> None:
        self._run = run
        self._decoupled = decoupled
        self._done = anyio.Event()

    def start(self) -> None:
        self._run.backend.spawn_detached(self._host)

    async def _host(self) -> None:
        run = self._run
        try:
            with run.scope:
                async with anyio.create_task_group() as tg:
                    _start_workers(tg, self._decoupled)
        except BaseException as exc:
            # Workers never raise; what arrives here is a cancellation from outside
            # (the event loop shutting down), which must be allowed to end the task.
            if not run.is_cancellation(exc):  # pragma: no cover - defensive
                run.fail(exc)
                return
            raise
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Cancel the workers (if still running) and wait until every close is done."""
        self._run.scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()


# -- scoped iteration ----------------------------------------------------------------------


@asynccontextmanager
async def stream(source: Any, stages: Sequence[Stage]) -> AsyncGenerator[AsyncIterator[Any], None]:
    """``async with pipeline.stream() as items``: the workers live exactly as long as the
    block; leaving it (normally, by an exception or by cancellation) stops them and
    closes every iterator before ``__aexit__`` returns."""
    run = Run()
    final, decoupled = build(source, stages, run)
    items = _Scoped(_items(lambda: (final, run, None)))
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

"""Leaving a pipeline early: break, aclose(), dropping the iterator, an exception in the
loop body, an outer deadline - for inline and decoupled pipelines.

Afterwards: no stage call is in flight, the source and every expansion are closed (by
the pipeline, not by the garbage collector), the stage functions ran at most
(items delivered + documented run-ahead) times, and no task is left behind.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _lifecycle_support import (
    AsyncSource,
    Calls,
    Source,
    live_tasks,
    settle,
    settle_tasks,
)
from flowlet import Pipeline, pipe

N = 20
EXPANSION = 3
"""Items per expansion of the flat_map pipelines."""

DEADLINE = 0.05
"""Seconds before move_on_after fires (only ever a moment to leave at, never measured)."""


class BodyError(Exception):
    """Raised in the consumer's loop body."""


def _same(item: int) -> int:
    return item


def _even(item: int) -> bool:
    return item % 2 == 0


# -- pipelines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[Pipeline[int], list[Calls]], Pipeline[Any]]
    run_ahead: tuple[int, ...]
    """Per stage: the input items it and the stages after it may hold ahead of the
    consumer (a decoupled stage: concurrency + buffer; the bounds of a chain add up).
    The decoupled specs give ``buffer`` explicitly: the bound is checked as documented,
    whatever the default buffer is."""
    sync_source: bool = False
    stalls: bool = True
    """Its first stage can be made to stall (an async function)."""
    per_output: int = 1
    """Outputs per input item of the first stage (a flat_map: EXPANSION)."""

    @property
    def inline(self) -> bool:
        return self.run_ahead == (0,)

    def __str__(self) -> str:
        return self.name


SPECS = [
    Spec("inline-async", lambda p, c: p.map(c[0].async_(_same)), (0,)),
    Spec("inline-sync", lambda p, c: p.map(c[0].sync(_same)), (0,), sync_source=True, stalls=False),
    Spec("decoupled", lambda p, c: p.map(c[0].async_(_same), concurrency=2, buffer=2), (4,)),
    Spec(
        "decoupled-sync-buffer2",
        lambda p, c: p.map(c[0].sync(_same), buffer=2),
        (3,),
        stalls=False,
    ),
    Spec(
        "two-decoupled",
        lambda p, c: p.map(c[0].async_(_same), concurrency=2, buffer=2).map(
            c[1].async_(_same), concurrency=2, buffer=2
        ),
        (8, 4),
    ),
    Spec(
        "decoupled-flat-asyncgen",
        lambda p, c: p.flat_map(c[0].async_gen(EXPANSION), concurrency=2, buffer=2),
        (4,),
        per_output=EXPANSION,
    ),
]


# -- ways to leave ------------------------------------------------------------------------


@dataclass
class Consumer:
    delivered: list[Any] = field(default_factory=list)


async def break_after_2(p: Pipeline[Any], c: Consumer) -> None:
    async for item in p:
        c.delivered.append(item)
        if len(c.delivered) == 2:
            break


async def aclose_after_2(p: Pipeline[Any], c: Consumer) -> None:
    iterator = aiter(p)
    c.delivered += [await anext(iterator), await anext(iterator)]
    await iterator.aclose()  # type: ignore[attr-defined]


async def drop_after_2(p: Pipeline[Any], c: Consumer) -> None:
    iterator = aiter(p)
    c.delivered += [await anext(iterator), await anext(iterator)]
    del iterator
    gc.collect()


async def raise_in_body_after_2(p: Pipeline[Any], c: Consumer) -> None:
    async def loop() -> None:
        async for item in p:
            c.delivered.append(item)
            if len(c.delivered) == 2:
                raise BodyError

    with pytest.raises(BodyError):
        await loop()


async def deadline_around_async_for(p: Pipeline[Any], c: Consumer) -> None:
    with anyio.move_on_after(DEADLINE) as scope:
        async for item in p:
            c.delivered.append(item)
    assert scope.cancelled_caught


async def deadline_in_body_after_2(p: Pipeline[Any], c: Consumer) -> None:
    with anyio.move_on_after(DEADLINE) as scope:
        async for item in p:
            c.delivered.append(item)
            if len(c.delivered) == 2:
                await anyio.sleep_forever()
    assert scope.cancelled_caught


async def deadline_around_collect(p: Pipeline[Any], c: Consumer) -> None:
    with anyio.move_on_after(DEADLINE) as scope:
        await p.collect()
    assert scope.cancelled_caught


@dataclass(frozen=True)
class Exit:
    name: str
    leave: Callable[[Pipeline[Any], Consumer], Awaitable[None]]
    stage_stall_at: int | None = None
    source_stall_at: int | None = None
    waiting: bool = False
    """The consumer was waiting for an item when it left (an inline stage may have
    started the call for it)."""
    deterministic: bool = False
    """The contract promises everything is closed when ``leave`` returns."""
    counted: bool = True
    """The consumer knows how many items were delivered (collect does not say)."""

    def __str__(self) -> str:
        return self.name


EXITS = [
    Exit("break", break_after_2),
    Exit("aclose", aclose_after_2, deterministic=True),
    Exit("drop_and_gc", drop_after_2),
    Exit("exception_in_body", raise_in_body_after_2),
    # The deadline cancels the consumer inside the iterator, which then cleans up at once.
    Exit(
        "deadline_while_first_call_stalls",
        deadline_around_async_for,
        stage_stall_at=0,
        waiting=True,
        deterministic=True,
    ),
    Exit(
        "deadline_while_call_3_stalls",
        deadline_around_async_for,
        stage_stall_at=3,
        waiting=True,
        deterministic=True,
    ),
    Exit(
        "deadline_while_read_5_stalls",
        deadline_around_async_for,
        source_stall_at=5,
        waiting=True,
        deterministic=True,
    ),
    # ... while here it cancels the loop body and leaves the iterator to the event loop.
    Exit("deadline_in_body_after_2", deadline_in_body_after_2),
    Exit(
        "collect_deadline_while_call_3_stalls",
        deadline_around_collect,
        stage_stall_at=3,
        deterministic=True,
        counted=False,
    ),
    Exit(
        "collect_deadline_while_read_5_stalls",
        deadline_around_collect,
        source_stall_at=5,
        deterministic=True,
        counted=False,
    ),
]


def _fits(spec: Spec, way_out: Exit) -> bool:
    if way_out.stage_stall_at is not None and not spec.stalls:
        return False  # a sync function cannot stall
    return not (way_out.source_stall_at is not None and spec.sync_source)  # nor a sync source


@pytest.mark.parametrize(
    ("spec", "way_out"),
    [
        pytest.param(spec, way_out, id=f"{spec}-{way_out}")
        for spec in SPECS
        for way_out in EXITS
        if _fits(spec, way_out)
    ],
)
async def test_leaving_early_stops_every_call_and_closes_everything(
    spec: Spec, way_out: Exit
) -> None:
    with anyio.fail_after(5):
        tasks_before = live_tasks()
        if spec.sync_source:
            source: Source | AsyncSource = Source(range(N))
        else:
            source = AsyncSource(range(N), stall_at=way_out.source_stall_at)
        calls = [Calls() for _ in spec.run_ahead]
        calls[0].stall_at = way_out.stage_stall_at
        consumer = Consumer()
        await way_out.leave(spec.build(pipe(source), calls), consumer)
        if way_out.deterministic:
            assert source.closes == 1
            assert [c.in_flight for c in calls] == [0] * len(calls)
        await settle(lambda: source.closes > 0 and not any(c.in_flight for c in calls))
        tasks_after = await settle_tasks(tasks_before)

    assert source.closes == 1
    assert [c.in_flight for c in calls] == [0] * len(calls)
    assert [c.left_to_gc for c in calls] == [0] * len(calls), "expansions closed by the gc"
    assert tasks_after == tasks_before
    if way_out.counted:
        delivered = len(consumer.delivered)
        waiting = way_out.waiting and spec.inline
        for stage, run_ahead in zip(calls, spec.run_ahead, strict=True):
            assert stage.started <= delivered // spec.per_output + run_ahead + waiting


# -- dropping the iterator -----------------------------------------------------------------


async def test_dropping_the_iterator_warns_nothing() -> None:
    """trio warns (ResourceWarning) about every async generator garbage collected before
    it was exhausted: the ``async for`` iterator must not be a plain async generator."""
    source = AsyncSource(range(N))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async for _ in pipe(source).map(_same):
            break
        gc.collect()
        await settle(lambda: source.closes > 0)
    assert source.closes == 1
    assert [str(w.message) for w in caught] == []


# -- the same pipeline twice at once ------------------------------------------------------


class Reopenable:
    """An iterable source that hands out a fresh tracked iterator on each ``iter()``."""

    def __init__(self) -> None:
        self.opened: list[Source | AsyncSource] = []

    def __iter__(self) -> Any:
        source = Source(range(N))
        self.opened.append(source)
        return source


class AsyncReopenable(Reopenable):
    def __aiter__(self) -> Any:  # preferred over __iter__
        source = AsyncSource(range(N))
        self.opened.append(source)
        return source


@pytest.mark.parametrize("source", [Reopenable, AsyncReopenable])
@pytest.mark.parametrize("concurrency", [1, 2])
async def test_consuming_one_pipeline_from_two_tasks_at_once_gives_two_runs(
    source: type[Reopenable], concurrency: int
) -> None:
    reopenable = source()
    calls = Calls()
    pipeline = pipe(reopenable).map(calls.async_(_same), concurrency=concurrency)
    results: dict[str, list[int]] = {}
    first_items = {"a": anyio.Event(), "b": anyio.Event()}

    async def consume(name: str, other: str) -> None:
        got = results.setdefault(name, [])
        async for item in pipeline:
            got.append(item)
            if len(got) == 1:
                first_items[name].set()
                await first_items[other].wait()  # both runs are under way at once

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, "a", "b")
            tg.start_soon(consume, "b", "a")

    assert sorted(results["a"]) == list(range(N))
    assert sorted(results["b"]) == list(range(N))
    assert [type(s) for s in reopenable.opened] == [type(reopenable.opened[0])] * 2
    assert isinstance(reopenable.opened[0], AsyncSource) == (source is AsyncReopenable)
    assert [s.closes for s in reopenable.opened] == [1, 1]
    assert calls.started == 2 * N
    assert calls.in_flight == 0


async def test_collecting_one_pipeline_from_two_tasks_at_once_gives_two_runs() -> None:
    reopenable = AsyncReopenable()
    calls = Calls()
    pipeline = pipe(reopenable).map(calls.async_(_same), concurrency=2).filter(_even)
    results = []

    async def collect() -> None:
        results.append(await pipeline.collect())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            tg.start_soon(collect)

    assert [sorted(r) for r in results] == [list(range(0, N, 2))] * 2
    assert [s.closes for s in reopenable.opened] == [1, 1]
    assert calls.started == 2 * N


# -- a pipeline inside a flat_map ---------------------------------------------------------


@dataclass
class Nested:
    """An outer pipeline whose flat_map expands each item into an inner pipeline."""

    outer: Source
    inner_sources: list[AsyncSource] = field(default_factory=list)
    inner_calls: Calls = field(default_factory=Calls)

    def inner(self, item: int) -> Pipeline[int]:
        source = AsyncSource(range(10 * item, 10 * item + 5))
        self.inner_sources.append(source)
        return pipe(source).map(self.inner_calls.async_(_same), concurrency=2)

    async def inner_async(self, item: int) -> Pipeline[int]:
        await anyio.lowlevel.checkpoint()
        return self.inner(item)


def _nested(decoupled_outer: bool) -> tuple[Nested, Pipeline[int]]:
    nested = Nested(Source(range(N)))
    if decoupled_outer:
        return nested, pipe(nested.outer).flat_map(nested.inner_async, concurrency=2)
    return nested, pipe(nested.outer).flat_map(nested.inner)


@pytest.mark.parametrize("decoupled_outer", [False, True], ids=["inline-outer", "decoupled-outer"])
async def test_breaking_out_of_a_nested_pipeline_closes_the_inner_sources(
    decoupled_outer: bool,
) -> None:
    nested, pipeline = _nested(decoupled_outer)
    with anyio.fail_after(5):
        tasks_before = live_tasks()
        iterator = aiter(pipeline)
        got = [await anext(iterator) for _ in range(3)]
        await iterator.aclose()  # type: ignore[attr-defined]
        # The inner pipelines are expansions: closed by the time aclose() returns.
        assert nested.outer.closes == 1
        assert nested.inner_sources, "no inner pipeline ran"
        assert [s.closes for s in nested.inner_sources] == [
            int(s.opened) for s in nested.inner_sources
        ]
        assert nested.inner_calls.in_flight == 0
        tasks_after = await settle_tasks(tasks_before)
    assert len(got) == 3
    assert any(s.opened for s in nested.inner_sources)
    assert tasks_after == tasks_before


@pytest.mark.parametrize("decoupled_outer", [False, True], ids=["inline-outer", "decoupled-outer"])
async def test_dropping_a_nested_pipeline_closes_the_inner_sources(decoupled_outer: bool) -> None:
    nested, pipeline = _nested(decoupled_outer)
    with anyio.fail_after(5):
        tasks_before = live_tasks()
        async for _ in pipeline:
            break
        opened = nested.inner_sources
        await settle(
            lambda: (
                nested.outer.closes > 0
                and all(s.closes for s in opened if s.opened)
                and not nested.inner_calls.in_flight
            )
        )
        tasks_after = await settle_tasks(tasks_before)
    assert nested.outer.closes == 1
    assert [s.closes for s in opened] == [int(s.opened) for s in opened]
    assert nested.inner_calls.in_flight == 0
    assert tasks_after == tasks_before


# -- stream() -----------------------------------------------------------------------------


async def _stream_break(p: Pipeline[Any]) -> None:
    async with p.stream() as items:
        async for _ in items:
            break


async def _stream_raise(p: Pipeline[Any]) -> None:
    async def block() -> None:
        async with p.stream() as items:
            async for _ in items:
                raise BodyError

    with pytest.raises(BodyError):
        await block()


async def _stream_cancelled(p: Pipeline[Any]) -> None:
    with anyio.CancelScope() as scope:
        async with p.stream() as items:
            async for _ in items:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught


async def _stream_deadline(p: Pipeline[Any]) -> None:
    with anyio.move_on_after(DEADLINE) as scope:
        async with p.stream() as items:
            async for _ in items:
                await anyio.sleep_forever()
    assert scope.cancelled_caught


async def _stream_drained(p: Pipeline[Any]) -> None:
    async with p.stream() as items:
        assert len([item async for item in items]) > 0


@pytest.mark.parametrize(
    "leave",
    [_stream_break, _stream_raise, _stream_cancelled, _stream_deadline, _stream_drained],
    ids=lambda f: f.__name__.removeprefix("_stream_"),
)
@pytest.mark.parametrize("spec", SPECS, ids=str)
async def test_stream_closes_everything_by_the_end_of_its_block(
    spec: Spec, leave: Callable[[Pipeline[Any]], Awaitable[None]]
) -> None:
    source: Source | AsyncSource = Source(range(N)) if spec.sync_source else AsyncSource(range(N))
    calls = [Calls() for _ in spec.run_ahead]
    with anyio.fail_after(5):
        tasks_before = live_tasks()
        await leave(spec.build(pipe(source), calls))
        # No checkpoint, no garbage collection: stream() is deterministic.
        assert source.closes == 1
        assert [c.in_flight for c in calls] == [0] * len(calls)
        assert [c.left_to_gc for c in calls] == [0] * len(calls)
        assert live_tasks() == tasks_before


async def test_a_stream_that_is_never_iterated_still_closes_its_source() -> None:
    source = AsyncSource(range(N))
    calls = Calls()
    with anyio.fail_after(5):
        async with pipe(source).map(calls.async_(_same), concurrency=2, buffer=2).stream():
            await anyio.wait_all_tasks_blocked()  # the workers run ahead meanwhile
    assert source.closes == 1
    assert calls.in_flight == 0
    assert 0 < calls.started <= 4


@pytest.mark.parametrize("decoupled", [False, True], ids=["inline", "decoupled"])
async def test_using_the_stream_iterator_after_its_block_raises_runtime_error(
    decoupled: bool,
) -> None:
    source = AsyncSource(range(N))
    pipeline = pipe(source).map(_same, buffer=2) if decoupled else pipe(source).map(_same)
    with anyio.fail_after(5):
        async with pipeline.stream() as items:
            assert await anext(items) == 0
        with pytest.raises(RuntimeError, match="stream"):
            await anext(items)
        with pytest.raises(RuntimeError):
            async for _ in items:
                pass
    assert source.closes == 1
    assert source.pulled <= 1 + (3 if decoupled else 0)

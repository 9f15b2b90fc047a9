"""Backpressure: how far each stage runs ahead of a consumer that stops taking items.

The bound under test: a decoupled stage holds at most ``concurrency + buffer`` input items
(``buffer`` defaults to ``2 * concurrency``); an inline stage holds none while its consumer
is not pulling; ``batch(n)`` holds fewer than ``n``; the bounds of a chain add up. An
item is held from the moment it is pulled from the source until every output it led to
was taken by the consumer (or a filter dropped it).

Each test checks the bound both ways: it is never exceeded (checked at every pull) and it
is reached while the consumer stalls (so a stage that does not run ahead fails too).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from _concurrency_support import run_ahead, settle
from flowlet import Pipeline, pipe
from support import Tracked

N = 30
EXPANSION = 3  # outputs per flat_map input
BATCH = 3  # batch after the stage under test
BATCH_BEFORE = 2  # batch before it: the stage then holds up to 12 batches, 24 items (< N)


class Ledger:
    """Items pulled from the source and items done with (all outputs taken, or dropped)."""

    def __init__(self) -> None:
        self.pulled = 0
        self.done = 0
        self.max_held = 0

    @property
    def held(self) -> int:
        return self.pulled - self.done

    def pull(self) -> None:
        self.pulled += 1
        self.max_held = max(self.max_held, self.held)


class CountingSource:
    """``range(total)`` (or endless) that records each pull in a ledger."""

    def __init__(self, ledger: Ledger, total: int | None = None) -> None:
        self._items = iter(range(total)) if total is not None else itertools.count()
        self._ledger = ledger

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        item = next(self._items)
        self._ledger.pull()
        return item


class AsyncCountingSource(CountingSource):
    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        await anyio.lowlevel.checkpoint()
        try:
            return next(self)
        except StopIteration:
            raise StopAsyncIteration from None


def make_source(kind: str, ledger: Ledger, total: int | None = N) -> CountingSource:
    return CountingSource(ledger, total) if kind == "sync" else AsyncCountingSource(ledger, total)


async def identity(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def keep(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return True


async def expand(x: int) -> list[tuple[int, int]]:
    await anyio.lowlevel.checkpoint()
    return [(x, j) for j in range(EXPANSION)]


def bound_of(concurrency: int, buffer: int | None) -> int:
    """Input items a stage with async functions may hold: 0 inline (concurrency 1, no
    buffer), else ``concurrency + buffer``."""
    return run_ahead(concurrency, buffer, decoupled=concurrency > 1 or buffer is not None)


def stage_under_test(
    p: Pipeline[int], kind: str, concurrency: int, buffer: int | None, ordered: bool
) -> Pipeline[Any]:
    opts: dict[str, Any] = {"concurrency": concurrency, "buffer": buffer, "ordered": ordered}
    if kind == "map":
        return p.map(identity, **opts)
    if kind == "filter":
        return p.filter(keep, **opts)
    if kind == "flat_map":
        return p.flat_map(expand, **opts)
    if kind == "batch_after":
        return p.map(identity, **opts).batch(BATCH)
    assert kind == "batch_before"
    return p.batch(BATCH_BEFORE).map(identity, **opts)


def account(ledger: Ledger, kind: str, output: Any) -> None:
    """Record the source items that ``output`` finished."""
    if kind == "flat_map":
        if output[1] == EXPANSION - 1:  # the last output of its input's expansion
            ledger.done += 1
    elif isinstance(output, list):
        ledger.done += len(output)
    else:
        ledger.done += 1


def expected_outputs(kind: str) -> list[Any]:
    items = list(range(N))
    if kind == "flat_map":
        return [(x, j) for x in items for j in range(EXPANSION)]
    if kind.startswith("batch"):
        size = BATCH if kind == "batch_after" else BATCH_BEFORE
        return [items[i : i + size] for i in range(0, N, size)]
    return items


async def consume_with_stalls(
    p: Pipeline[Any],
    consumer: str,
    on_take: Callable[[Any], object],
    on_stall: Callable[[Any], object],
) -> list[Any]:
    """Take every output (``on_take``), then stall until everything else is blocked and
    look (``on_stall``)."""
    outputs: list[Any] = []

    async def take(items: AsyncIterator[Any]) -> None:
        async for output in items:
            outputs.append(output)
            on_take(output)
            await settle()
            on_stall(output)

    if consumer == "async_for":
        await take(p.__aiter__())
    else:
        async with p.stream() as items:
            await take(items)
    return outputs


KINDS = ["map", "filter", "flat_map", "batch_after", "batch_before"]


@pytest.mark.parametrize("consumer", ["async_for", "stream"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("buffer", [None, 1, 3])
@pytest.mark.parametrize("concurrency", [1, 2, 4])
@pytest.mark.parametrize("kind", KINDS)
async def test_stage_holds_at_most_its_bound_and_reaches_it(
    kind: str,
    concurrency: int,
    buffer: int | None,
    ordered: bool,
    source_kind: str,
    consumer: str,
) -> None:
    ledger = Ledger()
    p = stage_under_test(pipe(make_source(source_kind, ledger)), kind, concurrency, buffer, ordered)
    bound = bound_of(concurrency, buffer)
    stalls: list[int] = []

    def on_take(output: Any) -> None:
        account(ledger, kind, output)

    def on_stall(output: Any) -> None:
        stalls.append(ledger.held)

    with anyio.fail_after(10):
        outputs = await consume_with_stalls(p, consumer, on_take, on_stall)

    if ordered or concurrency == 1:
        assert outputs == expected_outputs(kind)
    elif kind == "batch_after":  # unordered items, batched
        assert sorted(x for batch in outputs for x in batch) == list(range(N))
        assert [len(batch) for batch in outputs] == [BATCH] * (N // BATCH)
    else:
        assert sorted(outputs) == expected_outputs(kind)
    assert ledger.pulled == N
    if kind == "flat_map":
        # An expansion has several outputs and an input is held until its last output
        # was taken, so how many inputs a full stage holds depends on how the
        # expansions interleave. Never more than the bound; and a decoupled stage holds
        # more inputs than it has calls running (it works ahead).
        if bound:
            assert ledger.max_held <= bound
            assert max(stalls) >= concurrency + 1
        else:
            assert ledger.max_held == 1
            assert set(stalls) == {0, 1}  # lockstep: the current input only
        return
    if kind == "batch_before":
        bound *= BATCH_BEFORE  # the decoupled stage holds whole batches
    # While the consumer stalls the stage is full: it holds exactly its bound, or what
    # is left of the source.
    done_at_stall = itertools.accumulate(len(o) if isinstance(o, list) else 1 for o in outputs)
    assert stalls == [min(bound, N - done) for done in done_at_stall]
    if not bound:
        # The consumer pulls through the inline stages itself: they hold what the
        # output being made needs (one item, or one batch), then nothing.
        assert ledger.max_held == {"batch_after": BATCH, "batch_before": BATCH_BEFORE}.get(kind, 1)
    elif kind == "batch_after":
        # The inline batch after the stage holds a partial batch while the consumer
        # pulls: the bounds add up.
        assert bound <= ledger.max_held <= bound + BATCH - 1
    else:
        assert ledger.max_held == bound


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("buffer", [None, 1, 3])
@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_filter_that_drops_items_holds_at_most_its_bound(
    concurrency: int, buffer: int | None, ordered: bool
) -> None:
    """A dropped item stops being held once its predicate returned False."""
    ledger = Ledger()

    async def drop_every_third(x: int) -> bool:
        await anyio.lowlevel.checkpoint()
        if x % 3 == 2:
            ledger.done += 1
            return False
        return True

    p = pipe(make_source("async", ledger)).filter(
        drop_every_third, concurrency=concurrency, buffer=buffer, ordered=ordered
    )
    bound = bound_of(concurrency, buffer)
    reorders = ordered and concurrency > 1
    checks = 0

    def on_take(output: int) -> None:
        ledger.done += 1

    def on_stall(output: int) -> None:
        nonlocal checks
        if reorders:
            # A dropped item keeps its place in the reorder window until the consumer
            # passes it: the window spans `bound` source items after the last one taken.
            assert ledger.pulled == min(N, output + 1 + bound)
        else:
            # A dropped item frees its place at once: the stage fills up again.
            assert ledger.held == min(bound, N - ledger.done)
        checks += 1

    with anyio.fail_after(10):
        outputs = await consume_with_stalls(p, "stream", on_take, on_stall)
    expected = [x for x in range(N) if x % 3 != 2]
    assert (outputs if ordered or concurrency == 1 else sorted(outputs)) == expected
    assert checks == len(expected)
    assert ledger.max_held <= max(bound, 1)


# (chain, bound, slack): the slack is what an inline stage at the end holds while the
# consumer pulls through it (the item it is passing on).
CHAINS = [
    pytest.param(
        lambda p: (
            p.map(identity, concurrency=2)
            .map(lambda x: x)
            .filter(keep, concurrency=3, ordered=True, buffer=1)
        ),
        run_ahead(2) + 0 + run_ahead(3, 1),
        0,
        id="map-c2|inline-map|filter-c3-ordered-b1",
    ),
    pytest.param(
        lambda p: p.map(identity, buffer=2).map(identity).map(identity, concurrency=4),
        run_ahead(1, 2) + 0 + run_ahead(4),
        0,
        id="map-c1-b2|inline-map|map-c4",
    ),
    pytest.param(
        lambda p: p.filter(keep, concurrency=4, buffer=3, ordered=True).map(
            identity, concurrency=2, ordered=True
        ),
        run_ahead(4, 3) + run_ahead(2),
        0,
        id="filter-c4-b3-ordered|map-c2-ordered",
    ),
    pytest.param(
        lambda p: p.map(identity, concurrency=2, buffer=1).map(identity),
        run_ahead(2, 1) + 0,
        1,
        id="map-c2-b1|inline-map",
    ),
]


@pytest.mark.parametrize("consumer", ["async_for", "stream"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize(("build", "bound", "slack"), CHAINS)
async def test_bounds_of_chained_stages_add_up(
    build: Any, bound: int, slack: int, source_kind: str, consumer: str
) -> None:
    ledger = Ledger()
    p = build(pipe(make_source(source_kind, ledger)))
    stalls: list[int] = []

    def on_take(output: int) -> None:
        ledger.done += 1

    def on_stall(output: int) -> None:
        stalls.append(ledger.held)

    with anyio.fail_after(10):
        outputs = await consume_with_stalls(p, consumer, on_take, on_stall)
    assert sorted(outputs) == list(range(N))
    assert stalls == [min(bound, N - done) for done in range(1, N + 1)]
    assert bound <= ledger.max_held <= bound + slack


def two_decoupled_stages(p: Pipeline[int]) -> Pipeline[int]:
    """A stage reading another stage's unordered outbox with several workers."""
    return p.map(lambda x: x, concurrency=2, buffer=1).map(identity, concurrency=3, buffer=2)


TWO_STAGES_BOUND = run_ahead(2, 1) + run_ahead(3, 2)


@pytest.mark.parametrize("consumer", ["async_for", "stream"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_two_decoupled_stages_never_hold_more_than_their_bounds_together(
    source_kind: str, consumer: str
) -> None:
    ledger = Ledger()
    p = two_decoupled_stages(pipe(make_source(source_kind, ledger)))

    def on_take(output: int) -> None:
        ledger.done += 1

    with anyio.fail_after(10):
        outputs = await consume_with_stalls(p, consumer, on_take, lambda _: None)
    assert sorted(outputs) == list(range(N))
    assert 0 < ledger.max_held <= TWO_STAGES_BOUND


class OpeningSource(AsyncCountingSource):
    """Its first read waits until ``opened`` is set; the others return at once."""

    def __init__(self, ledger: Ledger, total: int) -> None:
        super().__init__(ledger, total)
        self.opened = anyio.Event()

    async def __anext__(self) -> int:
        if not self.opened.is_set():
            await self.opened.wait()
        try:
            return next(self)
        except StopIteration:
            raise StopAsyncIteration from None


@pytest.mark.parametrize("consumer", ["async_for", "stream"])
async def test_two_decoupled_stages_reach_their_bounds_together(consumer: str) -> None:
    """The source opens when every worker waits for input, and then yields a burst."""
    ledger = Ledger()
    source = OpeningSource(ledger, N)
    p = two_decoupled_stages(pipe(source))
    stalls: list[int] = []

    def on_take(output: int) -> None:
        ledger.done += 1

    async def open_when_waiting() -> None:
        await settle()
        source.opened.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(open_when_waiting)
            outputs = await consume_with_stalls(
                p, consumer, on_take, lambda _: stalls.append(ledger.held)
            )
    assert sorted(outputs) == list(range(N))
    assert stalls == [min(TWO_STAGES_BOUND, N - done) for done in range(1, N + 1)]


# -- batch ----------------------------------------------------------------------------------


class BlockingSource:
    """An async source that yields ``before`` items and then waits forever."""

    def __init__(self, before: int) -> None:
        self.before = before
        self.pulled = 0
        self.waiting = False

    def __aiter__(self) -> BlockingSource:
        return self

    async def __anext__(self) -> int:
        await anyio.lowlevel.checkpoint()
        if self.pulled == self.before:
            self.waiting = True
            await anyio.sleep_forever()
        self.pulled += 1
        return self.pulled - 1


@pytest.mark.parametrize(("size", "before"), [(2, 1), (5, 3), (5, 4), (5, 7)])
async def test_batch_holds_fewer_items_than_its_size(size: int, before: int) -> None:
    """While its source waits, a batch holds the partial batch and delivers nothing."""
    source = BlockingSource(before)
    received: list[list[int]] = []

    async def consume() -> None:
        async with pipe(source).batch(size).stream() as batches:
            async for batch in batches:
                received.append(batch)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await settle()
            assert source.waiting
            assert source.pulled == before
            full = before // size
            assert received == [list(range(i * size, (i + 1) * size)) for i in range(full)]
            assert source.pulled - full * size < size
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_stalled_consumer_of_a_batch_holds_no_source_items(
    size: int, source_kind: str
) -> None:
    ledger = Ledger()
    p = pipe(make_source(source_kind, ledger)).batch(size)
    stalls: list[int] = []

    def on_take(batch: list[int]) -> None:
        ledger.done += len(batch)

    def on_stall(batch: list[int]) -> None:
        stalls.append(ledger.held)

    with anyio.fail_after(10):
        outputs = await consume_with_stalls(p, "async_for", on_take, on_stall)
    assert [x for batch in outputs for x in batch] == list(range(N))
    assert set(stalls) == {0}
    assert ledger.max_held == size


# -- infinite sources -----------------------------------------------------------------------


INFINITE_SHAPES = [
    pytest.param({}, 0, id="inline"),
    pytest.param({"concurrency": 3}, run_ahead(3), id="c3"),
    pytest.param({"concurrency": 3, "ordered": True}, run_ahead(3), id="c3-ordered"),
    pytest.param({"buffer": 2}, run_ahead(1, 2), id="c1-b2"),
    pytest.param({"concurrency": 2, "buffer": 5}, run_ahead(2, 5), id="c2-b5"),
]


@pytest.mark.parametrize(("options", "bound"), INFINITE_SHAPES)
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_infinite_source_is_read_only_as_far_as_the_bound(
    source_kind: str, options: dict[str, Any], bound: int
) -> None:
    ledger = Ledger()
    iterator = pipe(make_source(source_kind, ledger, None)).map(identity, **options).__aiter__()
    taken = 0
    with anyio.fail_after(5):
        async for _ in iterator:
            taken += 1
            ledger.done += 1
            await settle()
            assert ledger.held == bound
            if taken == 10:
                break
        await iterator.aclose()
        await settle()
    assert ledger.pulled == 10 + bound
    assert ledger.max_held == max(bound, 1)


@pytest.mark.parametrize(("options", "bound"), INFINITE_SHAPES)
async def test_infinite_source_is_closed_after_break_and_aclose(
    options: dict[str, Any], bound: int
) -> None:
    source = Tracked(itertools.count())
    iterator = pipe(source).map(identity, **options).__aiter__()
    taken = 0
    with anyio.fail_after(5):
        async for _ in iterator:
            taken += 1
            if taken == 20:
                break
        await iterator.aclose()
        assert source.closes == 1
        pulled = source.pulled
        await settle()
    assert source.pulled == pulled <= 20 + bound


@pytest.mark.parametrize(("options", "bound"), INFINITE_SHAPES)
async def test_infinite_source_is_closed_when_a_stream_block_is_left(
    options: dict[str, Any], bound: int
) -> None:
    source = Tracked(itertools.count())
    taken = 0
    with anyio.fail_after(5):
        async with pipe(source).map(identity, **options).stream() as items:
            async for _ in items:
                taken += 1
                if taken == 20:
                    break
        assert source.closes == 1
        pulled = source.pulled
        await settle()
    assert source.pulled == pulled <= 20 + bound

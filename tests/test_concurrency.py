"""Concurrency: lockstep at concurrency=1, the limit on calls in flight, and work that goes
on while the source or the consumer waits."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from _concurrency_support import run_ahead, settle
from flowlet import Pipeline, pipe
from support import AsyncTracked, Tracked

N = 10

# -- lockstep ----------------------------------------------------------------------------


def identity(x: int) -> int:
    return x


async def async_identity(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


def multiple_of_3(x: int) -> bool:
    return x % 3 == 0


async def async_multiple_of_3(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return x % 3 == 0


def not_2_mod_3(x: int) -> bool:
    return x % 3 != 2


async def async_not_2_mod_3(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return x % 3 != 2


def repeat_by_mod_3(x: int) -> list[int]:
    """Expansions of 0, 1 and 2 items."""
    return [x] * (x % 3)


async def async_repeat_by_mod_3(x: int) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return [x] * (x % 3)


def repeat_1_or_2(x: int) -> list[int]:
    return [x] * (x % 2 + 1)


async def async_repeat_1_or_2(x: int) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return [x] * (x % 2 + 1)


FUNCTIONS: dict[str, dict[str, Callable[..., Any]]] = {
    "sync": {
        "identity": identity,
        "multiple_of_3": multiple_of_3,
        "not_2_mod_3": not_2_mod_3,
        "repeat_by_mod_3": repeat_by_mod_3,
        "repeat_1_or_2": repeat_1_or_2,
    },
    "async": {
        "identity": async_identity,
        "multiple_of_3": async_multiple_of_3,
        "not_2_mod_3": async_not_2_mod_3,
        "repeat_by_mod_3": async_repeat_by_mod_3,
        "repeat_1_or_2": async_repeat_1_or_2,
    },
}


def build_chain(
    p: Pipeline[int], chain: str, fns: dict[str, Callable[..., Any]], **opts: Any
) -> Pipeline[Any]:
    """The chains whose outputs tell how many source items they need.

    Every output is a source item (or a batch of them): delivering ``x`` needs the source
    items up to ``x``; delivering a full batch needs those up to its last item, and the
    last, partial batch needs the whole source.
    """
    if chain == "map":
        return p.map(fns["identity"], **opts)
    if chain == "filter":
        return p.filter(fns["multiple_of_3"], **opts)
    if chain == "flat_map":
        return p.flat_map(fns["repeat_by_mod_3"], **opts)
    if chain == "batch":
        return p.batch(4)
    assert chain == "all"
    return (
        p.map(fns["identity"], **opts)
        .filter(fns["not_2_mod_3"], **opts)
        .flat_map(fns["repeat_1_or_2"], **opts)
        .batch(3)
    )


def pulls_needed(output: Any, batch_size: int) -> int:
    if isinstance(output, list):
        return output[-1] + 1 if len(output) == batch_size else N
    return output + 1


def expected_outputs(chain: str) -> list[Any]:
    items = list(range(N))
    if chain == "map":
        return items
    if chain == "filter":
        return [x for x in items if x % 3 == 0]
    if chain == "flat_map":
        return [x for x in items for _ in range(x % 3)]
    if chain == "batch":
        return [items[i : i + 4] for i in range(0, N, 4)]
    flat = [x for x in items if x % 3 != 2 for _ in range(x % 2 + 1)]
    return [flat[i : i + 3] for i in range(0, len(flat), 3)]


CHAINS = ["map", "filter", "flat_map", "batch", "all"]


def make_source(kind: str) -> Tracked | AsyncTracked:
    return Tracked(range(N)) if kind == "sync" else AsyncTracked(range(N))


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_inline_stages_pull_exactly_the_source_items_each_output_needs(
    chain: str, fn_kind: str, source_kind: str
) -> None:
    source = make_source(source_kind)
    p = build_chain(pipe(source), chain, FUNCTIONS[fn_kind])
    batch_size = 4 if chain == "batch" else 3
    outputs = []
    with anyio.fail_after(5):
        async for output in p:
            assert source.pulled == pulls_needed(output, batch_size), output
            outputs.append(output)
    assert outputs == expected_outputs(chain)


@pytest.mark.parametrize("chain", ["map", "filter", "flat_map", "all"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_sync_functions_with_concurrency_stay_in_lockstep_and_in_order(
    chain: str, source_kind: str
) -> None:
    """Sync calls cannot overlap on the event loop: concurrency=8 without a buffer is
    still an inline stage."""
    source = make_source(source_kind)
    p = build_chain(pipe(source), chain, FUNCTIONS["sync"], concurrency=8)
    batch_size = 3
    outputs = []
    with anyio.fail_after(5):
        async for output in p:
            assert source.pulled == pulls_needed(output, batch_size), output
            outputs.append(output)
    assert outputs == expected_outputs(chain)


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_sync_functions_with_concurrency_keep_input_order(
    ordered: bool, source_kind: str
) -> None:
    source = Tracked(range(200)) if source_kind == "sync" else AsyncTracked(range(200))
    with anyio.fail_after(5):
        result = await (
            pipe(source)
            .map(lambda x: x * 2, concurrency=8, ordered=ordered)
            .filter(lambda x: x % 3 != 0, concurrency=8, ordered=ordered)
            .flat_map(lambda x: (x, -x), concurrency=8, ordered=ordered)
            .collect()
        )
    assert result == [y for x in range(200) if (x * 2) % 3 != 0 for y in (x * 2, -x * 2)]


async def test_sync_functions_in_a_buffered_ordered_stage_keep_input_order() -> None:
    with anyio.fail_after(5):
        result = (
            await pipe(range(300)).map(identity, concurrency=8, ordered=True, buffer=2).collect()
        )
    assert result == list(range(300))


async def test_sync_functions_with_concurrency_never_overlap() -> None:
    running = 0
    overlaps = 0

    def call(x: int) -> int:
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        running -= 1
        return x

    with anyio.fail_after(5):
        result = await pipe(AsyncTracked(range(50))).map(call, concurrency=8).collect()
    assert result == list(range(50))
    assert overlaps == 0


@pytest.mark.parametrize("source_kind", ["sync", "async"])
async def test_inline_flat_map_reads_each_expansion_lazily(source_kind: str) -> None:
    expansions: list[Tracked] = []

    def expand(x: int) -> Tracked:
        expansion = Tracked([(x, j) for j in range(3)])
        expansions.append(expansion)
        return expansion

    source = make_source(source_kind)
    with anyio.fail_after(5):
        async for x, j in pipe(source).flat_map(expand):
            assert source.pulled == x + 1
            assert len(expansions) == x + 1
            assert expansions[-1].pulled == j + 1
    assert [e.closes for e in expansions] == [1] * N


async def test_inline_async_generator_flat_map_reads_each_expansion_lazily() -> None:
    produced = 0

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        nonlocal produced
        for j in range(3):
            produced += 1
            yield x, j

    source = AsyncTracked(range(N))
    with anyio.fail_after(5):
        async for x, j in pipe(source).flat_map(expand):
            assert source.pulled == x + 1
            assert produced == 3 * x + j + 1


# -- the limit on calls in flight -----------------------------------------------------------


class Gate:
    """Calls that wait until the test releases them; counts the calls in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[Any] = []
        self._waiting: dict[Any, anyio.Event] = {}

    async def enter(self, item: Any) -> None:
        event = anyio.Event()
        self._waiting[item] = event
        self.started.append(item)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await event.wait()
        finally:
            self.in_flight -= 1

    @property
    def waiting(self) -> list[Any]:
        """Items whose call is waiting, oldest call first."""
        return list(self._waiting)

    def release(self, item: Any) -> None:
        self._waiting.pop(item).set()


async def release_one_by_one(gate: Gate, total: int, limit: int, newest_first: bool) -> None:
    """Release every call, one at a time; whenever everything is blocked, exactly
    ``min(limit, calls not finished)`` calls must be in flight."""
    for finished in range(total):
        await settle()
        assert gate.in_flight == min(limit, total - finished)
        waiting = gate.waiting
        gate.release(waiting[-1] if newest_first else waiting[0])
    await settle()
    assert gate.in_flight == 0


def gated_stage(p: Pipeline[int], kind: str, gate: Gate, **opts: Any) -> Pipeline[Any]:
    if kind == "map":

        async def double(x: int) -> int:
            await gate.enter(x)
            return 2 * x

        return p.map(double, **opts)
    if kind == "filter":

        async def even(x: int) -> bool:
            await gate.enter(x)
            return x % 2 == 0

        return p.filter(even, **opts)
    if kind == "flat_map":

        async def pair(x: int) -> list[int]:
            await gate.enter(x)
            return [x, -x]

        return p.flat_map(pair, **opts)
    assert kind == "flat_map_agen"

    async def pair_gen(x: int) -> AsyncIterator[int]:
        await gate.enter(x)
        yield x
        yield -x

    return p.flat_map(pair_gen, **opts)


def gated_expected(kind: str, total: int) -> list[int]:
    items = range(total)
    if kind == "map":
        return [2 * x for x in items]
    if kind == "filter":
        return [x for x in items if x % 2 == 0]
    return [y for x in items for y in (x, -x)]


LIMIT_CASES = [
    pytest.param(False, False, id="unordered-oldest_first"),
    pytest.param(False, True, id="unordered-newest_first"),
    pytest.param(True, False, id="ordered-oldest_first"),
]


@pytest.mark.parametrize(("ordered", "newest_first"), LIMIT_CASES)
@pytest.mark.parametrize("buffer", [None, 1])
@pytest.mark.parametrize("concurrency", [2, 5])
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map", "flat_map_agen"])
async def test_calls_in_flight_reach_the_concurrency_and_never_exceed_it(
    kind: str, concurrency: int, buffer: int | None, ordered: bool, newest_first: bool
) -> None:
    total = 12
    gate = Gate()
    p = gated_stage(
        pipe(AsyncTracked(range(total))),
        kind,
        gate,
        concurrency=concurrency,
        ordered=ordered,
        buffer=buffer,
    )
    result: list[int] = []

    async def consume() -> None:
        result.extend(await p.collect())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await release_one_by_one(gate, total, concurrency, newest_first)
    assert gate.max_in_flight == concurrency
    expected = gated_expected(kind, total)
    if ordered:
        assert result == expected
    else:
        assert sorted(result) == sorted(expected)


class OpeningSource:
    """An async source whose first read waits until ``opened`` is set; later reads
    return at once (a burst)."""

    def __init__(self, total: int) -> None:
        self._items = iter(range(total))
        self.opened = anyio.Event()

    def __aiter__(self) -> OpeningSource:
        return self

    async def __anext__(self) -> int:
        if not self.opened.is_set():
            await self.opened.wait()
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None


UPSTREAMS: dict[str, Callable[[Pipeline[int]], Pipeline[int]]] = {
    "inline-map": lambda p: p.map(identity),
    "map-c2": lambda p: p.map(async_identity, concurrency=2),
    "map-c2-ordered-b1": lambda p: p.map(identity, concurrency=2, ordered=True, buffer=1),
    "map-c1-b1": lambda p: p.map(identity, buffer=1),
    "map-c2-b1": lambda p: p.map(identity, concurrency=2, buffer=1),
    "flat_map-c2-b1": lambda p: p.flat_map(lambda x: [x, x + 100], concurrency=2, buffer=1),
}


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize(
    "upstream",
    [
        "inline-map",
        "map-c2",
        "map-c2-ordered-b1",
        "map-c1-b1",
        "map-c2-b1",
        "flat_map-c2-b1",
    ],
)
async def test_stage_after_a_decoupled_stage_reaches_its_concurrency(
    upstream: str, ordered: bool
) -> None:
    """When the first stage has items ready, every worker of the second finds work."""
    total = 12
    gate = Gate()
    source = OpeningSource(total)
    first = UPSTREAMS[upstream](pipe(source))
    p = gated_stage(first, "map", gate, concurrency=3, ordered=ordered)
    result: list[int] = []

    async def consume() -> None:
        result.extend(await p.collect())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await settle()  # every worker waits for input
            source.opened.set()
            await settle()
            in_flight_at_start = gate.in_flight
            while gate.waiting:  # finish the run, whatever happened
                gate.release(gate.waiting[0])
                await settle()
    assert in_flight_at_start == 3
    assert len(result) == len(gate.started)


async def test_unordered_results_come_in_completion_order() -> None:
    gate = Gate()
    p = gated_stage(pipe(range(6)), "map", gate, concurrency=6)
    result: list[int] = []

    async def consume() -> None:
        async for x in p:
            result.append(x)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for expected_len, item in enumerate([3, 5, 0, 1, 4, 2]):
                await settle()
                assert len(result) == expected_len
                gate.release(item)
    assert result == [6, 10, 0, 2, 8, 4]


@pytest.mark.parametrize("newest_first", [False, True])
@pytest.mark.parametrize("concurrency", [1, 3, 5])
async def test_for_each_calls_reach_the_concurrency_and_never_exceed_it(
    concurrency: int, newest_first: bool
) -> None:
    total = 12
    gate = Gate()
    seen: list[int] = []

    async def record(x: int) -> None:
        await gate.enter(x)
        seen.append(x)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    pipe(AsyncTracked(range(total))).for_each, record, concurrency=concurrency
                )
            )
            await release_one_by_one(gate, total, concurrency, newest_first)
    assert gate.max_in_flight == concurrency
    assert sorted(seen) == list(range(total))


async def test_for_each_with_a_sync_function_calls_it_for_every_item() -> None:
    seen: list[int] = []
    with anyio.fail_after(5):
        await pipe(range(20)).for_each(seen.append, concurrency=4)
    assert seen == list(range(20))


@pytest.mark.parametrize("buffer", [None, 1, 4])
@pytest.mark.parametrize("kind", ["map", "filter"])
async def test_ordered_stage_keeps_starting_calls_while_the_head_is_slow(
    kind: str, buffer: int | None
) -> None:
    """With the first item stuck, later calls keep starting until the reorder window
    (concurrency + buffer input items) is full; nothing is delivered before the head."""
    concurrency = 3
    window = run_ahead(concurrency, buffer)
    total = 20
    gate = Gate()
    p = gated_stage(
        pipe(range(total)), kind, gate, concurrency=concurrency, ordered=True, buffer=buffer
    )
    result: list[int] = []

    async def consume() -> None:
        async for x in p:
            result.append(x)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            while True:
                await settle()
                assert gate.in_flight <= concurrency
                later = [x for x in gate.waiting if x != 0]
                if not later:
                    break
                if len(gate.started) < window:
                    assert gate.in_flight == concurrency
                gate.release(later[-1])
            assert len(gate.started) == window
            assert gate.waiting == [0]
            assert result == []
            gate.release(0)
            await settle()
            while gate.waiting:
                assert gate.in_flight <= concurrency
                gate.release(gate.waiting[0])
                await settle()
    assert result == gated_expected(kind, total)


# -- work goes on while the source blocks ---------------------------------------------------


class StallingSource:
    """An async source that yields ``before`` items, then waits until ``resume`` is set
    before yielding the rest."""

    def __init__(self, total: int, before: int) -> None:
        self._items = iter(range(total))
        self.before = before
        self.pulled = 0
        self.waiting = False
        self.resume = anyio.Event()

    def __aiter__(self) -> StallingSource:
        return self

    async def __anext__(self) -> int:
        await anyio.lowlevel.checkpoint()
        if self.pulled == self.before:
            self.waiting = True
            await self.resume.wait()
            self.waiting = False
        try:
            item = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        self.pulled += 1
        return item


async def async_pair(x: int) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return [x, x]


async def async_true(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return True


DECOUPLED_SHAPES = [
    pytest.param("map", {"concurrency": 2}, id="map-c2"),
    pytest.param("map", {"concurrency": 4, "ordered": True}, id="map-c4-ordered"),
    pytest.param("map", {"buffer": 2}, id="map-c1-buffer2"),
    pytest.param("filter", {"concurrency": 3}, id="filter-c3"),
    pytest.param("filter", {"concurrency": 3, "ordered": True}, id="filter-c3-ordered"),
    pytest.param("flat_map", {"concurrency": 2}, id="flat_map-c2"),
    pytest.param("flat_map", {"concurrency": 2, "ordered": True}, id="flat_map-c2-ordered"),
    pytest.param("flat_map", {"buffer": 1}, id="flat_map-c1-buffer1"),
]


def decoupled_stage(p: Pipeline[int], kind: str, opts: dict[str, Any]) -> Pipeline[Any]:
    if kind == "map":
        return p.map(async_identity, **opts)
    if kind == "filter":
        return p.filter(async_true, **opts)
    return p.flat_map(async_pair, **opts)


def outputs_per_item(kind: str) -> int:
    return 2 if kind == "flat_map" else 1


@pytest.mark.parametrize(("kind", "opts"), DECOUPLED_SHAPES)
async def test_finished_results_are_delivered_while_the_source_blocks(
    kind: str, opts: dict[str, Any]
) -> None:
    source = StallingSource(total=6, before=3)
    p = decoupled_stage(pipe(source), kind, opts)
    received: list[int] = []
    with anyio.fail_after(5):
        async for x in p:
            received.append(x)
            if len(received) == 3 * outputs_per_item(kind):
                # Every result of the items read so far arrived; the source still waits.
                await settle()
                assert source.waiting
                assert sorted(received) == sorted([0, 1, 2] * outputs_per_item(kind))
                source.resume.set()
    assert sorted(received) == sorted(x for x in range(6) for _ in range(outputs_per_item(kind)))


@pytest.mark.parametrize(("kind", "opts"), DECOUPLED_SHAPES)
async def test_finished_results_reach_a_stream_consumer_while_the_source_blocks(
    kind: str, opts: dict[str, Any]
) -> None:
    source = StallingSource(total=6, before=2)
    p = decoupled_stage(pipe(source), kind, opts)
    received: list[int] = []
    with anyio.fail_after(5):
        async with p.stream() as items:
            async for x in items:
                received.append(x)
                if len(received) == 2 * outputs_per_item(kind):
                    await settle()
                    assert source.waiting
                    source.resume.set()
    assert sorted(received) == sorted(x for x in range(6) for _ in range(outputs_per_item(kind)))


async def test_inline_stage_waits_for_the_source_before_delivering() -> None:
    """The contrast: an inline stage cannot deliver item 3 before the source yields it,
    and the consumer blocks with the source."""
    source = StallingSource(total=6, before=3)
    received: list[int] = []

    async def consume() -> None:
        async for x in pipe(source).map(async_identity):
            received.append(x)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await settle()
            assert source.waiting
            assert received == [0, 1, 2]
            source.resume.set()
    assert received == list(range(6))


# -- a buffered stage works ahead of its consumer -------------------------------------------


def recording(fn_kind: str) -> tuple[list[int], Callable[[int], Any]]:
    """An identity function of the given kind, and the list of the items it was called on."""
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    async def async_record(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return record(x)

    return calls, record if fn_kind == "sync" else async_record


@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("buffer", [1, 3])
async def test_buffered_stage_at_concurrency_1_works_ahead_of_its_consumer(
    fn_kind: str, buffer: int
) -> None:
    calls, fn = recording(fn_kind)
    received: list[int] = []
    with anyio.fail_after(5):
        async with pipe(AsyncTracked(range(20))).map(fn, buffer=buffer).stream() as items:
            async for x in items:
                received.append(x)
                await settle()
                # One call per item taken, one waiting to hand its result over, `buffer`
                # results waiting: the calls ran while the consumer was busy.
                assert len(calls) == min(20, len(received) + 1 + buffer)
    assert received == list(range(20))


@pytest.mark.parametrize("fn_kind", ["sync", "async"])
async def test_unbuffered_stage_at_concurrency_1_does_not_work_ahead(fn_kind: str) -> None:
    calls, fn = recording(fn_kind)
    with anyio.fail_after(5):
        async with pipe(AsyncTracked(range(20))).map(fn).stream() as items:
            async for x in items:
                await settle()
                assert calls[-1] == x
                assert len(calls) == x + 1

"""The four ways to write a pipeline (fluent, ``|`` with op.*, Flow fragments, and
flowlet.functional) build the same thing; Flows and pipelines are immutable and
reusable; terminals see every item."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

import flowlet.functional as F
from flowlet import Flow, Pipeline, op, pipe
from support import AsyncTracked, Tracked


async def times_ten(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x * 10


def not_multiple_of_three(x: int) -> bool:
    return x % 30 != 0


async def pair(x: int) -> AsyncIterator[int]:
    yield x
    await anyio.lowlevel.checkpoint()
    yield x + 1


def total(group: list[int]) -> int:
    return sum(group)


async def as_text(x: int) -> str:
    return f"<{x}>"


ITEMS = list(range(20))


def reference() -> list[str]:
    tens = [x * 10 for x in ITEMS]
    kept = [x for x in tens if x % 30 != 0]
    pairs = [y for x in kept for y in (x, x + 1)]
    sums = [sum(pairs[i : i + 3]) for i in range(0, len(pairs), 3)]
    return [f"<{s}>" for s in sums]


# Each front end builds: map(times_ten, concurrency=3, ordered=True) -> filter -> flat_map
# (concurrency 2, ordered) -> batch(3) -> map(as_text, buffer=2). Every one of them takes a
# source (list or async iterator) and returns the collected outputs.


async def fluent(source: Any) -> list[str]:
    return (
        await pipe(source)
        .map(times_ten, concurrency=3, ordered=True)
        .filter(not_multiple_of_three)
        .flat_map(pair, concurrency=2, ordered=True)
        .batch(3)
        .map(total)
        .map(as_text, buffer=2)
        .collect()
    )


async def with_op(source: Any) -> list[str]:
    return await (
        pipe(source)
        | op.map(times_ten, concurrency=3, ordered=True)
        | op.filter(not_multiple_of_three)
        | op.flat_map(pair, concurrency=2, ordered=True)
        | op.batch(3)
        | op.map(total)
        | op.map(as_text, buffer=2)
    ).collect()


async def with_op_composed_first(source: Any) -> list[str]:
    flow = (
        op.map(times_ten, concurrency=3, ordered=True)
        | op.filter(not_multiple_of_three)
        | op.flat_map(pair, concurrency=2, ordered=True)
        | op.batch(3)
        | op.map(total)
        | op.map(as_text, buffer=2)
    )
    return await (pipe(source) | flow).collect()


async def with_flow_fragments(source: Any) -> list[str]:
    front = Flow[int]().map(times_ten, concurrency=3, ordered=True).filter(not_multiple_of_three)
    middle = Flow[int]().flat_map(pair, concurrency=2, ordered=True).batch(3)
    back = Flow[list[int]]().map(total).map(as_text, buffer=2)
    return await pipe(source).through(front).through(middle).through(back).collect()


async def with_nested_flows(source: Any) -> list[str]:
    front = Flow[int]().map(times_ten, concurrency=3, ordered=True).filter(not_multiple_of_three)
    middle = Flow[int]().flat_map(pair, concurrency=2, ordered=True).batch(3)
    back = Flow[list[int]]().map(total).map(as_text, buffer=2)
    whole = front.through(middle | back)
    return await pipe(source).through(whole).collect()


OPERATORS = (
    F.map(times_ten, concurrency=3, ordered=True),
    F.filter(not_multiple_of_three),
    F.flat_map(pair, concurrency=2, ordered=True),
    F.batch(3),
    F.map(total),
    F.map(as_text, buffer=2),
)


async def with_chain(source: Any) -> list[str]:
    return await F.collect(F.chain(*OPERATORS)(source))


async def with_nested_operator_calls(source: Any) -> list[str]:
    stream: Any = source
    for operator in OPERATORS:
        stream = operator(stream)  # each operator reads the previous one's output
    return await F.collect(stream)


async def with_chained_sub_chains(source: Any) -> list[str]:
    head = F.chain(*OPERATORS[:2])
    tail = F.chain(*OPERATORS[2:])
    return await F.collect(F.chain(head, tail)(source))


async def with_operator_on_pipeline(source: Any) -> list[str]:
    """An operator also reads a pipeline (an async iterable)."""
    first = pipe(source).map(times_ten, concurrency=3, ordered=True)
    return await F.collect(F.chain(*OPERATORS[1:])(first))


FRONT_ENDS = [
    fluent,
    with_op,
    with_op_composed_first,
    with_flow_fragments,
    with_nested_flows,
    with_chain,
    with_nested_operator_calls,
    with_chained_sub_chains,
    with_operator_on_pipeline,
]


async def _async_source(items: list[int]) -> AsyncIterator[int]:
    for item in items:
        await anyio.lowlevel.checkpoint()
        yield item


@pytest.mark.parametrize("source_kind", ["list", "async-iterator", "tracked"])
@pytest.mark.parametrize("front_end", FRONT_ENDS, ids=lambda f: f.__name__)
async def test_every_front_end_gives_the_reference_result(front_end: Any, source_kind: str) -> None:
    source = {"list": list, "async-iterator": _async_source, "tracked": AsyncTracked}[source_kind](
        ITEMS
    )
    with anyio.fail_after(5):
        assert await front_end(source) == reference()


async def test_front_ends_agree_on_an_unordered_concurrent_pipeline() -> None:
    async def run_all() -> list[list[int]]:
        fluent_result = await pipe(range(50)).map(times_ten, concurrency=5).collect()
        op_result = await (pipe(range(50)) | op.map(times_ten, concurrency=5)).collect()
        flow_result = (
            await pipe(range(50)).through(Flow[int]().map(times_ten, concurrency=5)).collect()
        )
        f_result = await F.collect(F.map(times_ten, concurrency=5)(range(50)))
        return [fluent_result, op_result, flow_result, f_result]

    with anyio.fail_after(5):
        results = await run_all()
    for result in results:
        assert sorted(result) == [x * 10 for x in range(50)]


# -- the same terminal in different clothes ----------------------------------------------


async def test_collect_async_for_and_stream_give_the_same_outputs() -> None:
    pipeline = (
        pipe(range(30)).map(times_ten, concurrency=4, ordered=True).filter(not_multiple_of_three)
    )
    with anyio.fail_after(5):
        collected = await pipeline.collect()
        iterated = [x async for x in pipeline]
        async with pipeline.stream() as items:
            streamed = [x async for x in items]
        functional = await F.collect(pipeline)
    assert collected == [x * 10 for x in range(30) if x % 3 != 0]
    assert iterated == streamed == functional == collected


# -- Flows: immutable and reusable -------------------------------------------------------


async def test_building_two_flows_from_the_same_base_does_not_change_the_base() -> None:
    base = Flow[int]().map(lambda x: x + 1)
    doubled = base.map(lambda x: x * 2)
    evens = base.filter(lambda x: x % 2 == 0)
    assert await pipe(range(5)).through(base).collect() == [1, 2, 3, 4, 5]
    assert await pipe(range(5)).through(doubled).collect() == [2, 4, 6, 8, 10]
    assert await pipe(range(5)).through(evens).collect() == [2, 4]


async def test_composing_with_pipe_operator_does_not_change_either_flow() -> None:
    first = op.map(lambda x: x + 1)
    second = op.map(lambda x: x * 2)
    both = first | second
    assert await (pipe([1]) | both).collect() == [4]
    assert await (pipe([1]) | first).collect() == [2]
    assert await (pipe([1]) | second).collect() == [2]


async def test_building_from_the_same_pipeline_twice_does_not_interfere() -> None:
    base = pipe([1, 2, 3]).map(lambda x: x * 10)
    plus = base.map(lambda x: x + 1)
    minus = base.map(lambda x: x - 1)
    assert await plus.collect() == [11, 21, 31]
    assert await minus.collect() == [9, 19, 29]
    assert await base.collect() == [10, 20, 30]


async def test_the_same_flow_runs_on_two_sources() -> None:
    flow = Flow[int]().map(times_ten, concurrency=3, ordered=True).batch(2)
    with anyio.fail_after(5):
        assert await pipe([1, 2, 3]).through(flow).collect() == [[10, 20], [30]]
        assert await pipe(AsyncTracked([7, 8])).through(flow).collect() == [[70, 80]]


async def test_the_same_flow_runs_twice_at_the_same_time() -> None:
    """A Flow holds no run state: two concurrent runs each get their own."""
    gate = anyio.Event()

    async def gated(x: int) -> int:
        await gate.wait()
        return x

    flow = Flow[int]().map(gated, concurrency=2, ordered=True)
    results: dict[str, list[int]] = {}

    async def run(name: str, items: list[int]) -> None:
        results[name] = await pipe(items).through(flow).collect()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", [1, 2, 3])
            tg.start_soon(run, "b", [4, 5])
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert results == {"a": [1, 2, 3], "b": [4, 5]}


async def test_the_same_operator_runs_on_two_sources() -> None:
    double = F.map(times_ten)
    assert await F.collect(double([1, 2])) == [10, 20]
    assert await F.collect(double(_async_source([3]))) == [30]


# -- runs of a pipeline ------------------------------------------------------------------


async def test_a_pipeline_over_a_list_can_be_collected_twice() -> None:
    calls: list[int] = []

    async def record(x: int) -> int:
        calls.append(x)
        return x

    pipeline = pipe([1, 2, 3]).map(record, concurrency=2, ordered=True)
    with anyio.fail_after(5):
        assert await pipeline.collect() == [1, 2, 3]
        assert await pipeline.collect() == [1, 2, 3]
    assert sorted(calls) == [1, 1, 2, 2, 3, 3]  # each run called the function again


async def test_a_pipeline_over_a_generator_runs_once() -> None:
    def numbers() -> Iterator[int]:
        yield from (1, 2, 3)

    pipeline = pipe(numbers()).map(lambda x: x * 2)
    assert await pipeline.collect() == [2, 4, 6]
    assert await pipeline.collect() == []


async def test_a_pipeline_over_an_async_generator_runs_once() -> None:
    pipeline = pipe(_async_source([1, 2])).map(times_ten, concurrency=2)
    with anyio.fail_after(5):
        assert sorted(await pipeline.collect()) == [10, 20]
        assert await pipeline.collect() == []


async def test_building_a_pipeline_does_not_read_the_source() -> None:
    source = Tracked([1, 2, 3])
    pipeline = pipe(source).map(lambda x: x).filter(bool).batch(2) | op.map(len)
    assert isinstance(pipeline, Pipeline)
    assert source.pulled == 0
    assert await pipeline.collect() == [2, 1]
    assert source.pulled == 3


# -- identity and composition ------------------------------------------------------------


@pytest.mark.parametrize(
    "identity",
    [Flow(), Flow[int](), Flow[int]().through(Flow()), Flow() | Flow()],
    ids=["Flow()", "Flow[int]()", "through-empty", "empty-pipe-empty"],
)
async def test_a_flow_without_stages_is_the_identity(identity: Flow[Any, Any]) -> None:
    items = [3, None, "x", [1], 0]
    assert await pipe(items).through(identity).collect() == items
    assert await (pipe(items) | identity).collect() == items


async def test_an_empty_chain_is_the_identity() -> None:
    assert await F.collect(F.chain()([3, None, 0])) == [3, None, 0]


async def test_appending_an_empty_flow_changes_nothing() -> None:
    flow = op.map(lambda x: x + 1)
    assert await (pipe([1, 2]) | (flow | Flow())).collect() == [2, 3]
    assert await (pipe([1, 2]) | (Flow() | flow)).collect() == [2, 3]


async def test_pipe_or_flow_is_pipe_through_flow() -> None:
    flow = op.filter(lambda x: x % 2 == 1) | op.map(times_ten, concurrency=2, ordered=True)
    with anyio.fail_after(5):
        assert (
            await (pipe(range(7)) | flow).collect() == await pipe(range(7)).through(flow).collect()
        )
        assert await (pipe(range(7)) | flow).collect() == [10, 30, 50]


async def test_flow_or_flow_applies_the_left_flow_first() -> None:
    add_one = op.map(lambda x: x + 1)
    double = op.map(lambda x: x * 2)
    assert await (pipe([1, 2]) | (add_one | double)).collect() == [4, 6]
    assert await (pipe([1, 2]) | (double | add_one)).collect() == [3, 5]
    assert await (pipe([1, 2]) | add_one.through(double)).collect() == [4, 6]


async def test_flow_composition_is_associative() -> None:
    a = op.map(lambda x: x + 1)
    b = op.flat_map(lambda x: [x, x])
    c = op.batch(3)
    left = await (pipe(range(4)) | ((a | b) | c)).collect()
    right = await (pipe(range(4)) | (a | (b | c))).collect()
    assert left == right == [[1, 1, 2], [2, 3, 3], [4, 4]]


# -- for_each and drain ------------------------------------------------------------------


def _sync_seen(seen: list[int]) -> Any:
    def see(x: int) -> str:
        seen.append(x)
        return "ignored"

    return see


def _async_seen(seen: list[int]) -> Any:
    async def see(x: int) -> str:
        await anyio.lowlevel.checkpoint()
        seen.append(x)
        return "ignored"

    return see


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("make_fn", [_sync_seen, _async_seen], ids=["sync", "async"])
@pytest.mark.parametrize("front_end", ["pipeline", "functional"])
async def test_for_each_sees_every_item(front_end: str, make_fn: Any, concurrency: int) -> None:
    seen: list[int] = []
    fn = make_fn(seen)
    items = pipe(AsyncTracked(range(25))).filter(lambda x: x != 7)
    with anyio.fail_after(5):
        if front_end == "pipeline":
            outcome = await items.for_each(fn, concurrency=concurrency)
        else:
            outcome = await F.for_each(fn, items, concurrency=concurrency)
    assert outcome is None
    expected = [x for x in range(25) if x != 7]
    if concurrency == 1:
        assert seen == expected
    else:
        assert sorted(seen) == expected


async def test_for_each_overlaps_async_calls_up_to_its_concurrency() -> None:
    running = 0
    most = 0

    async def see(x: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        running -= 1

    with anyio.fail_after(5):
        await pipe(range(20)).for_each(see, concurrency=4)
    assert most == 4


async def test_for_each_returns_after_every_call_finished() -> None:
    finished: list[int] = []

    async def slow(x: int) -> None:
        for _ in range(10 - x):
            await anyio.lowlevel.checkpoint()
        finished.append(x)

    with anyio.fail_after(5):
        await F.for_each(slow, range(10), concurrency=10)
    assert sorted(finished) == list(range(10))


@pytest.mark.parametrize("front_end", ["pipeline", "functional", "functional-operator"])
async def test_drain_runs_side_effects_and_returns_none(front_end: str) -> None:
    effects: list[int] = []

    async def effect(x: int) -> int:
        effects.append(x)
        return x

    with anyio.fail_after(5):
        if front_end == "pipeline":
            outcome = await pipe(range(10)).map(effect, concurrency=3).drain()
        elif front_end == "functional":
            outcome = await F.drain(pipe(range(10)).map(effect, concurrency=3))
        else:
            outcome = await F.drain(F.map(effect, concurrency=3)(range(10)))
    assert outcome is None
    assert sorted(effects) == list(range(10))


async def test_functional_terminals_read_plain_iterables() -> None:
    seen: list[int] = []
    drained = Tracked([1, 2])
    assert await F.collect([1, 2]) == [1, 2]
    assert await F.collect(_async_source([3])) == [3]
    await F.drain(drained)
    assert drained.pulled == 2
    await F.for_each(seen.append, (x for x in [4, 5]))
    assert seen == [4, 5]

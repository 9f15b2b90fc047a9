"""Output order: input order at concurrency 1 and with ordered=True, completion order
otherwise; the reorder window of an ordered stage; errors in ordered mode.

Completion orders are forced with events (never with sleeps), and every test checks that
the forcing worked, so a test cannot pass because the calls happened to finish in order.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from flowlet import pipe
from support import AsyncTracked, StageError, Tracked


class Forced:
    """Makes calls finish in ``order``: the call for ``order[j]`` may finish only after
    the call for ``order[j - 1]`` has finished."""

    def __init__(self, order: list[int]) -> None:
        self.order = order
        self.finished: list[int] = []
        self._done = {x: anyio.Event() for x in order}
        self._previous = dict(zip(order[1:], order[:-1], strict=True))

    async def turn(self, x: int) -> None:
        if x in self._previous:
            await self._done[self._previous[x]].wait()

    def finish(self, x: int) -> None:
        self.finished.append(x)
        self._done[x].set()


def forced_map(forced: Forced) -> Callable[[int], Awaitable[int]]:
    async def times_ten(x: int) -> int:
        await forced.turn(x)
        forced.finish(x)
        return x * 10

    return times_ten


def forced_filter(forced: Forced) -> Callable[[int], Awaitable[bool]]:
    async def is_even(x: int) -> bool:
        await forced.turn(x)
        forced.finish(x)
        return x % 2 == 0

    return is_even


def forced_flat_map(forced: Forced) -> Callable[[int], Awaitable[list[int]]]:
    async def expand(x: int) -> list[int]:
        await forced.turn(x)
        forced.finish(x)
        return [x * 10, x * 10 + 1]

    return expand


def forced_async_generator(forced: Forced) -> Callable[[int], AsyncIterator[int]]:
    async def expand(x: int) -> AsyncIterator[int]:
        await forced.turn(x)
        yield x * 10
        yield x * 10 + 1
        forced.finish(x)

    return expand


KINDS: dict[str, tuple[Callable[[Forced], Callable[[int], Any]], Callable[[list[int]], list[int]]]]
KINDS = {
    # kind: (function maker, what the outputs for inputs in a given order are)
    "map": (forced_map, lambda xs: [x * 10 for x in xs]),
    "filter": (forced_filter, lambda xs: [x for x in xs if x % 2 == 0]),
    "flat_map": (forced_flat_map, lambda xs: [y for x in xs for y in (x * 10, x * 10 + 1)]),
}


def stage(pipeline: Any, kind: str, fn: Callable[[int], Any], **options: Any) -> Any:
    return getattr(pipeline, kind)(fn, **options)


# -- concurrency = 1 ---------------------------------------------------------------------


async def _slow_for_small(x: int) -> int:
    """Earlier items take more checkpoints: they would finish last if calls overlapped."""
    for _ in range(20 - x):
        await anyio.lowlevel.checkpoint()
    return x


async def _slow_keep(x: int) -> bool:
    return await _slow_for_small(x) % 3 != 0


async def _slow_expand(x: int) -> AsyncIterator[int]:
    await _slow_for_small(x)
    yield x
    await anyio.lowlevel.checkpoint()
    yield -x


EXPECTED_SEQUENTIAL = {
    "map": list(range(20)),
    "filter": [x for x in range(20) if x % 3 != 0],
    "flat_map": [y for x in range(20) for y in (x, -x)],
}


@pytest.mark.parametrize("options", [{}, {"buffer": 4}, {"ordered": True}], ids=repr)
@pytest.mark.parametrize(
    ("kind", "fn"),
    [("map", _slow_for_small), ("filter", _slow_keep), ("flat_map", _slow_expand)],
)
async def test_concurrency_one_keeps_input_order(
    kind: str, fn: Callable[[int], Any], options: dict[str, Any]
) -> None:
    with anyio.fail_after(5):
        result = await stage(pipe(AsyncTracked(range(20))), kind, fn, **options).collect()
    assert result == EXPECTED_SEQUENTIAL[kind]


async def test_concurrency_one_runs_one_call_at_a_time() -> None:
    running = 0
    most = 0

    async def track(x: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0)
        running -= 1
        return x

    with anyio.fail_after(5):
        assert await pipe(range(10)).map(track, buffer=5).collect() == list(range(10))
    assert most == 1


async def test_sync_function_at_high_concurrency_keeps_input_order() -> None:
    """A sync function never overlaps, so without a buffer its stage stays inline."""
    result = await pipe(AsyncTracked(range(30))).map(lambda x: -x, concurrency=8).collect()
    assert result == [-x for x in range(30)]


# -- unordered: completion order ---------------------------------------------------------

# order[j] < j + 4, so each call can start (concurrency 4) before its turn comes.
COMPLETION_ORDER = [2, 3, 0, 1, 6, 4, 7, 5]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_unordered_outputs_come_in_completion_order(kind: str) -> None:
    make_fn, outputs_for = KINDS[kind]
    forced = Forced(COMPLETION_ORDER)
    # A buffer as large as the output, so no expansion ever waits for room halfway.
    with anyio.fail_after(5):
        result = await stage(
            pipe(range(8)), kind, make_fn(forced), concurrency=4, buffer=16
        ).collect()
    assert forced.finished == COMPLETION_ORDER
    assert result == outputs_for(COMPLETION_ORDER)


OUTPUT = {"map": lambda x: x * 10, "filter": lambda x: x % 2 == 0, "flat_map": lambda x: [x, -x]}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_unordered_outputs_come_in_completion_order_one_by_one(kind: str) -> None:
    """The consumer sees each output as soon as its call finished, not later."""
    release = {x: anyio.Event() for x in range(4)}
    finished: list[int] = []

    async def gated(x: int) -> Any:
        await release[x].wait()
        finished.append(x)
        return OUTPUT[kind](x)

    expected = {
        "map": lambda x: [x * 10],
        "filter": lambda x: [x] if x % 2 == 0 else [],
        "flat_map": lambda x: [x, -x],
    }[kind]
    with anyio.fail_after(5):
        pipeline = stage(pipe(range(4)), kind, gated, concurrency=4)
        async with pipeline.stream() as items:
            for x in (2, 3, 0, 1):
                release[x].set()
                await anyio.wait_all_tasks_blocked()
                for output in expected(x):
                    assert await items.__anext__() == output
            with pytest.raises(StopAsyncIteration):
                await items.__anext__()
    assert finished == [2, 3, 0, 1]


async def test_unordered_flat_map_interleaves_expansions_as_their_items_are_produced() -> None:
    steps = [(2, 0), (0, 0), (1, 0), (2, 1), (0, 1), (0, 2), (1, 1), (2, 2)]
    turn = {step: anyio.Event() for step in steps}
    previous = dict(zip(steps[1:], steps[:-1], strict=True))

    async def expand(x: int) -> AsyncIterator[tuple[int, int]]:
        for j in range(3 if x != 1 else 2):
            if (x, j) in previous:
                await turn[previous[(x, j)]].wait()
            yield (x, j)
            turn[(x, j)].set()

    with anyio.fail_after(5):
        result = await pipe(range(3)).flat_map(expand, concurrency=3, buffer=16).collect()
    assert result == steps


# -- ordered=True: input order -----------------------------------------------------------

# Reversed within each group of four: item 3 finishes first, item 0 last, then 7 .. 4.
REVERSED = [3, 2, 1, 0, 7, 6, 5, 4]


@pytest.mark.parametrize("buffer", [None, 1, 8])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_ordered_outputs_come_in_input_order_when_completion_is_reversed(
    kind: str, buffer: int | None
) -> None:
    make_fn, outputs_for = KINDS[kind]
    forced = Forced(REVERSED)
    with anyio.fail_after(5):
        result = await stage(
            pipe(range(8)), kind, make_fn(forced), concurrency=4, ordered=True, buffer=buffer
        ).collect()
    assert forced.finished == REVERSED
    assert result == outputs_for(list(range(8)))


async def test_ordered_flat_map_concatenates_async_expansions_in_input_order() -> None:
    """The expansions run at once and finish in reverse; the outputs are still the
    expansions one after the other, in input order. (buffer=8 leaves room for the six
    items of the three later expansions while the first one is still running.)"""
    forced = Forced([3, 2, 1, 0])
    with anyio.fail_after(5):
        result = (
            await pipe(range(4))
            .flat_map(forced_async_generator(forced), concurrency=4, ordered=True, buffer=8)
            .collect()
        )
    assert forced.finished == [3, 2, 1, 0]
    assert result == [0, 1, 10, 11, 20, 21, 30, 31]


async def test_ordered_flat_map_keeps_empty_and_long_expansions_in_place() -> None:
    forced = Forced([3, 1, 2, 0])

    async def expand(x: int) -> list[int]:
        await forced.turn(x)
        forced.finish(x)
        return [x] * (x % 3)  # 0 -> [], 1 -> [1], 2 -> [2, 2], 3 -> []

    with anyio.fail_after(5):
        result = await pipe(range(4)).flat_map(expand, concurrency=4, ordered=True).collect()
    assert forced.finished == [3, 1, 2, 0]
    assert result == [1, 2, 2]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", list(KINDS))
async def test_ordered_outputs_keep_input_order_under_random_delays(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    delays = [rng.randrange(30) for _ in range(60)]
    finished: list[int] = []

    async def delayed(x: int) -> None:
        for _ in range(delays[x]):
            await anyio.lowlevel.checkpoint()
        finished.append(x)

    async def times_ten(x: int) -> int:
        await delayed(x)
        return x * 10

    async def is_even(x: int) -> bool:
        await delayed(x)
        return x % 2 == 0

    async def expand(x: int) -> AsyncIterator[int]:
        await delayed(x)
        yield x * 10
        await anyio.lowlevel.checkpoint()
        yield x * 10 + 1

    fn = {"map": times_ten, "filter": is_even, "flat_map": expand}[kind]
    with anyio.fail_after(10):
        result = await stage(pipe(range(60)), kind, fn, concurrency=6, ordered=True).collect()
    assert finished != sorted(finished)  # the calls did finish out of order
    assert result == KINDS[kind][1](list(range(60)))


# -- ordered=True: the reorder window ----------------------------------------------------


@pytest.mark.parametrize(
    ("concurrency", "buffer", "window"),
    [(4, None, 12), (4, 2, 6), (2, 1, 3), (3, 7, 10)],
)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("source_type", [Tracked, AsyncTracked])
async def test_ordered_stage_keeps_starting_calls_behind_a_slow_head_up_to_the_window(
    source_type: type[Tracked | AsyncTracked],
    kind: str,
    concurrency: int,
    buffer: int | None,
    window: int,
) -> None:
    head_release = anyio.Event()
    started: list[int] = []
    source = source_type(range(30))

    async def work(x: int) -> Any:
        started.append(x)
        if x == 0:
            await head_release.wait()
        return {"map": x, "filter": True, "flat_map": [x]}[kind]

    pipeline = stage(pipe(source), kind, work, concurrency=concurrency, ordered=True, buffer=buffer)
    result: list[int] = []

    async def consume() -> None:
        result.extend(await pipeline.collect())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            # The head is stuck; the calls behind it started and finished, up to the window.
            assert started == list(range(window))
            assert source.pulled == window
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
            assert started == list(range(window))  # and no further while the head waits
            head_release.set()
    assert result == list(range(30))
    assert sorted(started) == list(range(30))


async def test_ordered_results_behind_the_head_wait_for_it() -> None:
    head_release = anyio.Event()
    finished: list[int] = []
    delivered: list[int] = []

    async def work(x: int) -> int:
        if x == 0:
            await head_release.wait()
        finished.append(x)
        return x

    async def consume() -> None:
        async for x in pipe(range(20)).map(work, concurrency=4, ordered=True):
            delivered.append(x)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            # window = concurrency + default buffer (2 x concurrency) = 12 positions
            assert finished == list(range(1, 12))
            assert delivered == []  # finished results behind the head are held back
            head_release.set()
    assert delivered == list(range(20))


# -- ordered=True: errors ----------------------------------------------------------------


@pytest.mark.parametrize("consumer", ["async-for", "stream"])
@pytest.mark.parametrize("k", [0, 1, 5])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_ordered_error_at_item_k_never_delivers_a_later_item(
    kind: str, k: int, consumer: str
) -> None:
    """Item k fails only after the three items behind it have finished and the
    consumer has received everything before k: those later results are ready, and
    still none of them may be delivered."""
    boom = StageError(f"item {k} failed")
    later_finished = 0
    later_ready = anyio.Event()
    prefix_received = anyio.Event()
    expected_prefix = KINDS[kind][1](list(range(k)))
    if not expected_prefix:
        prefix_received.set()
    delivered: list[int] = []

    async def work(x: int) -> Any:
        nonlocal later_finished
        if x == k:
            await later_ready.wait()
            await prefix_received.wait()
            raise boom
        if x > k:
            later_finished += 1
            if later_finished == 3:
                later_ready.set()
        return {"map": x * 10, "filter": x % 2 == 0, "flat_map": [x * 10, x * 10 + 1]}[kind]

    def receive(item: int) -> None:
        delivered.append(item)
        if delivered == expected_prefix:
            prefix_received.set()

    pipeline = stage(pipe(range(20)), kind, work, concurrency=4, ordered=True)

    async def consume() -> None:
        if consumer == "stream":
            async with pipeline.stream() as items:
                async for item in items:
                    receive(item)
        else:
            async for item in pipeline:
                receive(item)

    with anyio.fail_after(5), pytest.raises(StageError) as caught:
        await consume()
    assert caught.value is boom
    assert later_ready.is_set()
    assert delivered == expected_prefix


@pytest.mark.parametrize("kind", list(KINDS))
async def test_ordered_error_at_item_k_fails_collect_without_partial_results(kind: str) -> None:
    boom = StageError("item 3 failed")
    later = anyio.Event()

    async def work(x: int) -> Any:
        if x == 3:
            await later.wait()
            raise boom
        if x == 5:
            later.set()
        return {"map": x, "filter": True, "flat_map": [x]}[kind]

    with anyio.fail_after(5), pytest.raises(StageError) as caught:
        await stage(pipe(range(20)), kind, work, concurrency=4, ordered=True).collect()
    assert caught.value is boom

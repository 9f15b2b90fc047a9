"""Errors: fail fast with the original exception, never a group; cancel what is in flight;
close the source; let BaseExceptions and cancellation through."""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from _concurrency_support import run_ahead, settle
from flowlet import Pipeline, in_thread, pipe
from support import AsyncTracked, ReadError, StageError, Tracked

N = 10
POSITIONS = [pytest.param(0, id="first"), pytest.param(5, id="middle"), pytest.param(9, id="last")]

SHAPES = {
    "inline": {},
    "c3": {"concurrency": 3},
    "c3-ordered": {"concurrency": 3, "ordered": True},
    "c1-buffer2": {"buffer": 2},
    "c3-ordered-buffer1": {"concurrency": 3, "ordered": True, "buffer": 1},
}
DECOUPLED_SHAPES = [s for s in SHAPES if s != "inline"]


def bound_of(shape: str) -> int:
    """Input items a stage of this shape may hold (for async functions)."""
    opts = SHAPES[shape]
    concurrency = opts.get("concurrency", 1)
    decoupled = concurrency > 1 or "buffer" in opts
    return run_ahead(concurrency, opts.get("buffer"), decoupled=decoupled)


class SyncSource(Tracked):
    """A tracked source that keeps the (first) exception it raised."""

    raised: BaseException | None = None

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except ReadError as exc:
            self.raised = self.raised or exc
            raise


class AsyncSource(AsyncTracked):
    raised: BaseException | None = None

    async def __anext__(self) -> Any:
        try:
            return await super().__anext__()
        except ReadError as exc:
            self.raised = self.raised or exc
            raise


def make_source(kind: str, **kwargs: Any) -> SyncSource | AsyncSource:
    return SyncSource(range(N), **kwargs) if kind == "sync" else AsyncSource(range(N), **kwargs)


def apply(p: Pipeline[int], kind: str, fn: Callable[[int], Any], **opts: Any) -> Pipeline[Any]:
    return getattr(p, kind)(fn, **opts)


def result_of(kind: str, x: int) -> Any:
    if kind == "map":
        return x
    if kind == "filter":
        return True
    return [x, x]


def failing(kind: str, fn_kind: str, fail: int, exc: BaseException) -> Callable[[int], Any]:
    """A stage function for ``kind`` that raises ``exc`` at item ``fail``."""

    def sync_fn(x: int) -> Any:
        if x == fail:
            raise exc
        return result_of(kind, x)

    async def async_fn(x: int) -> Any:
        await anyio.lowlevel.checkpoint()
        return sync_fn(x)

    return sync_fn if fn_kind == "sync" else async_fn


async def passing(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x


async def keep(x: int) -> bool:
    await anyio.lowlevel.checkpoint()
    return True


async def pair(x: int) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return [x, x]


PASSING = {"map": passing, "filter": keep, "flat_map": pair}


# -- the original exception, whatever fails, wherever ------------------------------------


@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("fail", POSITIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_failing_stage_function_raises_its_exception(
    kind: str, shape: str, fail: int, fn_kind: str
) -> None:
    err = StageError(f"item {fail} failed")
    source = make_source("async")
    p = apply(pipe(source), kind, failing(kind, fn_kind, fail, err), **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await p.collect()
    assert info.value is err
    assert type(info.value) is StageError  # not a group
    assert str(info.value) == f"item {fail} failed"
    assert source.closes == 1
    assert source.pulled <= fail + 1 + bound_of(shape)  # failed fast


@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize("fail", POSITIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_failing_source_read_raises_its_exception(
    kind: str, shape: str, fail: int, source_kind: str
) -> None:
    source = make_source(source_kind, fail_at=fail)
    p = apply(pipe(source), kind, PASSING[kind], **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(ReadError) as info:
        await p.collect()
    assert source.raised is not None
    assert info.value is source.raised
    assert type(info.value) is ReadError
    assert str(info.value) == f"read {fail} failed"
    assert source.closes == 1
    assert source.pulled == fail  # nothing read after the failure


class SyncExpansion(SyncSource):
    pass


class AsyncExpansion(AsyncSource):
    pass


def failing_expansion(
    expansion_kind: str, fail: int, raised: list[BaseException], opened: list[Any]
) -> Callable[[int], Any]:
    """A flat_map function whose expansion for item ``fail`` raises at its second read."""
    if expansion_kind == "async_generator":

        async def expand_gen(x: int) -> AsyncIterator[int]:
            yield x
            await anyio.lowlevel.checkpoint()
            if x == fail:
                exc = ReadError(f"expansion {x} failed")
                raised.append(exc)
                raise exc
            yield x

        return expand_gen

    def expand(x: int) -> Any:
        fail_at = 1 if x == fail else None
        if expansion_kind == "sync":
            expansion: Any = SyncExpansion([x, x], fail_at=fail_at)
        else:
            expansion = AsyncExpansion([x, x], fail_at=fail_at)
        opened.append(expansion)
        return expansion

    async def async_expand(x: int) -> Any:
        await anyio.lowlevel.checkpoint()
        return expand(x)

    return async_expand


@pytest.mark.parametrize("expansion_kind", ["sync", "async", "async_generator"])
@pytest.mark.parametrize("fail", POSITIONS)
@pytest.mark.parametrize("shape", SHAPES)
async def test_failing_expansion_read_raises_its_exception(
    shape: str, fail: int, expansion_kind: str
) -> None:
    raised: list[BaseException] = []
    opened: list[Any] = []
    source = make_source("async")
    p = pipe(source).flat_map(
        failing_expansion(expansion_kind, fail, raised, opened), **SHAPES[shape]
    )
    with anyio.fail_after(5), pytest.raises(ReadError) as info:
        await p.collect()
    raised += [e.raised for e in opened if e.raised is not None]
    assert len(raised) == 1
    assert info.value is raised[0]
    assert type(info.value) is ReadError
    assert str(info.value) in {"read 1 failed", f"expansion {fail} failed"}
    assert source.closes == 1
    assert [e.closes for e in opened] == [1] * len(opened)


# -- in-flight calls are cancelled -------------------------------------------------------


class Blocked:
    """Stage calls that block forever, except the one at ``fail``, which raises ``exc``
    once all the others are blocked."""

    def __init__(self, fail: int, exc: BaseException) -> None:
        self.fail = fail
        self.exc = exc
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def call(self, x: int) -> Any:
        self.started.append(x)
        if x == self.fail:
            await settle()
            raise self.exc
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(x)
            raise

    async def expansion(self, x: int) -> AsyncIterator[int]:
        yield x
        await self.call(x)
        yield x


def blocked_stage(p: Pipeline[int], kind: str, blocked: Blocked, **opts: Any) -> Pipeline[Any]:
    if kind == "flat_map_agen":
        return p.flat_map(blocked.expansion, **opts)
    return apply(p, kind, blocked.call, **opts)


IN_FLIGHT_CASES = [
    *(
        pytest.param(kind, shape, id=f"{kind}-{shape}")
        for kind in ("map", "filter", "flat_map")
        for shape in ("c3", "c3-ordered", "c3-ordered-buffer1")
    ),
    # With buffer=1, an ordered flat_map's later expansions wait for room before their
    # call starts: not three calls in flight.
    pytest.param("flat_map_agen", "c3", id="flat_map_agen-c3"),
    pytest.param("flat_map_agen", "c3-ordered", id="flat_map_agen-c3-ordered"),
]


@pytest.mark.parametrize("fail", [0, 1, 2])
@pytest.mark.parametrize(("kind", "shape"), IN_FLIGHT_CASES)
async def test_failure_cancels_the_calls_in_flight(kind: str, shape: str, fail: int) -> None:
    err = StageError("boom")
    blocked = Blocked(fail, err)
    source = Tracked(range(100))
    p = blocked_stage(pipe(source), kind, blocked, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await p.collect()
    assert info.value is err
    assert sorted(blocked.started) == [0, 1, 2]
    assert sorted(blocked.cancelled) == [x for x in (0, 1, 2) if x != fail]
    assert source.closes == 1


# -- every way of consuming -----------------------------------------------------------------


async def consume(p: Pipeline[Any], consumer: str) -> list[Any]:
    outputs: list[Any] = []
    if consumer == "collect":
        outputs = await p.collect()
    elif consumer == "drain":
        await p.drain()
    elif consumer == "for_each":
        await p.for_each(outputs.append)
    elif consumer == "for_each_c3":

        async def record(x: Any) -> None:
            await anyio.lowlevel.checkpoint()
            outputs.append(x)

        await p.for_each(record, concurrency=3)
    elif consumer == "async_for":
        async for x in p:
            outputs.append(x)
    else:
        assert consumer == "stream"
        async with p.stream() as items:
            async for x in items:
                outputs.append(x)
    return outputs


CONSUMERS = ["collect", "drain", "for_each", "for_each_c3", "async_for", "stream"]


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["map", "flat_map"])
async def test_stage_failure_surfaces_from_every_consumer(
    kind: str, shape: str, consumer: str
) -> None:
    err = StageError("item 5 failed")
    source = make_source("async")
    p = apply(pipe(source), kind, failing(kind, "async", 5, err), **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await consume(p, consumer)
    assert info.value is err
    assert type(info.value) is StageError
    # not chained onto the cancellation that stopped the other tasks
    assert info.value.__context__ is None
    await settle()
    assert source.closes == 1


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("shape", SHAPES)
async def test_source_failure_surfaces_from_every_consumer(shape: str, consumer: str) -> None:
    source = make_source("sync", fail_at=5)
    p = pipe(source).map(passing, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(ReadError) as info:
        await consume(p, consumer)
    assert info.value is source.raised
    assert info.value.__context__ is None
    await settle()
    assert source.closes == 1


def raise_while_handling(x: int) -> int:
    if x == 5:
        try:
            raise KeyError(x)
        except KeyError:
            raise StageError("item 5 failed")  # noqa: B904 (the implicit context is the point)
    return x


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("offload", ["inline", "in_thread"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_a_failure_keeps_the_context_it_was_raised_in(
    shape: str, offload: str, consumer: str
) -> None:
    """The exception the consumer sees carries the ``__context__`` it had where it was
    raised (here the KeyError it was raised while handling), not a cancellation of the
    run that it caused; a traceback shows what the user's code did and nothing else."""
    fn = in_thread(raise_while_handling) if offload == "in_thread" else raise_while_handling
    p = pipe(range(N)).map(fn, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await consume(p, consumer)
    assert type(info.value.__context__) is KeyError
    assert info.value.__context__.__context__ is None


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
async def test_failing_for_each_function_raises_its_exception(shape: str, concurrency: int) -> None:
    err = StageError("consumer failed at 5")
    source = make_source("async")

    async def record(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        if x == 5:
            raise err

    p = pipe(source).map(passing, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await p.for_each(record, concurrency=concurrency)
    assert info.value is err
    assert source.closes == 1


@pytest.mark.parametrize("consumer", ["async_for", "stream"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_outputs_before_the_failure_are_delivered_in_lockstep(
    shape: str, consumer: str
) -> None:
    """Inline and ordered stages deliver every output before the failing item's."""
    err = StageError("item 5 failed")
    outputs: list[int] = []
    p = pipe(range(N)).map(failing("map", "async", 5, err), **SHAPES[shape])

    async def take() -> None:
        if consumer == "async_for":
            async for x in p:
                outputs.append(x)
        else:
            async with p.stream() as items:
                async for x in items:
                    outputs.append(x)

    with anyio.fail_after(5), pytest.raises(StageError) as info:
        await take()
    assert info.value is err
    assert 5 not in outputs
    if shape == "inline":
        assert outputs == [0, 1, 2, 3, 4]
    elif shape != "c3":  # these keep input order
        assert outputs == list(range(len(outputs)))
        assert len(outputs) <= 5


# -- several failures -----------------------------------------------------------------------


@pytest.mark.parametrize("consumer", ["collect", "async_for", "stream"])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_two_failures_at_once_raise_the_first_one(
    kind: str, ordered: bool, consumer: str
) -> None:
    go = anyio.Event()
    raised: list[StageError] = []

    async def fail_together(x: int) -> Any:
        if x in (0, 1):
            await go.wait()
            exc = StageError(f"item {x} failed")
            raised.append(exc)
            raise exc
        await anyio.sleep_forever()

    async def release() -> None:
        await settle()
        go.set()

    p = apply(pipe(range(N)), kind, fail_together, concurrency=3, ordered=ordered)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            with pytest.raises(StageError) as info:
                await consume(p, consumer)
    assert len(raised) == 2  # both calls did fail
    assert info.value is raised[0]
    assert type(info.value) is StageError


# -- BaseExceptions -------------------------------------------------------------------------


class Abort(BaseException):
    """Stands for KeyboardInterrupt or SystemExit."""


@pytest.mark.parametrize("consumer", ["collect", "async_for", "stream", "drain"])
@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_base_exception_in_a_stage_propagates_as_itself(
    kind: str, shape: str, fn_kind: str, consumer: str
) -> None:
    abort = Abort("stop now")
    source = make_source("async")
    p = apply(pipe(source), kind, failing(kind, fn_kind, 4, abort), **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(Abort) as info:
        await consume(p, consumer)
    assert info.value is abort
    assert type(info.value) is Abort
    assert info.value.__context__ is None
    await settle()
    assert source.closes == 1


@pytest.mark.parametrize("consumer", ["collect", "async_for"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_base_exception_from_the_source_propagates_as_itself(
    shape: str, consumer: str
) -> None:
    abort = Abort("source interrupted")

    async def source() -> AsyncIterator[int]:
        yield 0
        yield 1
        raise abort

    p = pipe(source()).map(passing, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(Abort) as info:
        await consume(p, consumer)
    assert info.value is abort
    assert info.value.__context__ is None


# -- the consumer's own exception -------------------------------------------------------------


class BodyError(Exception):
    pass


class Stuck:
    """Items below ``free`` pass at once; the calls of later items block forever."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def call(self, x: int) -> int:
        self.started.append(x)
        if x < self.free:
            await anyio.lowlevel.checkpoint()
            return x
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(x)
            raise
        raise AssertionError("unreachable")


async def give_up_at_2(items: AsyncIterable[int], err: BaseException) -> None:
    """Iterate ``items`` and raise ``err`` from the loop body at item 2."""
    async for x in items:
        if x == 2:
            await settle()  # let the stage start the calls that get stuck
            raise err


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await anyio.sleep(0.001)


@pytest.mark.parametrize("shape", SHAPES)
async def test_exception_in_async_for_body_propagates_and_stops_the_pipeline(shape: str) -> None:
    err = BodyError("consumer gave up")
    source = AsyncTracked(range(100))
    stuck = Stuck(free=3)
    p = pipe(source).map(stuck.call, **SHAPES[shape])
    with anyio.fail_after(5):
        with pytest.raises(BodyError) as info:
            await give_up_at_2(p, err)
        assert info.value is err
        # The abandoned iterator is finalised by the event loop: wait for it.
        await wait_until(lambda: source.closes == 1)
        await settle()
    blocked = [x for x in stuck.started if x >= 3]
    assert len(blocked) == SHAPES[shape].get("concurrency", 1) * (shape != "inline")
    assert sorted(stuck.cancelled) == sorted(blocked)
    assert source.closes == 1


@pytest.mark.parametrize("shape", ["inline", "c3"])
async def test_exception_in_async_for_body_warns_nothing(shape: str) -> None:
    p = pipe(AsyncTracked(range(100))).map(passing, **SHAPES[shape])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with anyio.fail_after(5), pytest.raises(BodyError):
            await give_up_at_2(p, BodyError("consumer gave up"))
        gc.collect()
        await settle()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("shape", SHAPES)
async def test_exception_in_stream_body_propagates_and_stops_the_pipeline(shape: str) -> None:
    err = BodyError("consumer gave up")
    source = AsyncTracked(range(100))
    stuck = Stuck(free=3)
    p = pipe(source).map(stuck.call, **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(BodyError) as info:
        async with p.stream() as items:
            await give_up_at_2(items, err)
    assert info.value is err
    assert type(info.value) is BodyError
    assert source.closes == 1
    blocked = [x for x in stuck.started if x >= 3]
    assert sorted(stuck.cancelled) == sorted(blocked)


# -- cancellation from outside -------------------------------------------------------------


async def consume_until_cancelled(p: Pipeline[Any], consumer: str) -> None:
    await consume(p, consumer)
    raise AssertionError("the pipeline should have been cancelled")


@pytest.mark.parametrize("consumer", ["collect", "drain", "async_for", "stream"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_cancelling_an_outer_scope_cancels_everything(shape: str, consumer: str) -> None:
    source = AsyncTracked(range(100))
    stuck = Stuck(free=0)
    p = pipe(source).map(stuck.call, **SHAPES[shape])
    reached_after_scope = False

    async def cancel_when_stuck(scope: anyio.CancelScope) -> None:
        await settle()
        scope.cancel()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_when_stuck, scope)
                await consume_until_cancelled(p, consumer)
            reached_after_scope = True
    assert reached_after_scope
    assert scope.cancelled_caught
    assert source.closes == 1
    assert stuck.started
    assert sorted(stuck.cancelled) == sorted(stuck.started)
    assert len(stuck.started) == SHAPES[shape].get("concurrency", 1)


@pytest.mark.parametrize("consumer", ["collect", "drain", "async_for", "stream"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_move_on_after_around_a_pipeline_cancels_everything(
    shape: str, consumer: str
) -> None:
    source = AsyncTracked(range(100))
    stuck = Stuck(free=4)
    p = pipe(source).map(stuck.call, **SHAPES[shape])
    with anyio.fail_after(5):
        with anyio.move_on_after(0.05) as scope:
            await consume_until_cancelled(p, consumer)
        assert scope.cancelled_caught
    assert source.closes == 1
    blocked = [x for x in stuck.started if x >= 4]
    assert sorted(stuck.cancelled) == sorted(blocked)

"""Exceptions user code raises that mean something else to Python or to the event loop.

A ``CancelledError`` raised as a value is a failure, not a cancellation; ``StopIteration``
and ``StopAsyncIteration`` raised by a stage function, a source or a step are errors, not
the end of the stream. Each must reach the consumer promptly (no hang), clearly (the
object itself, or a ``RuntimeError`` naming who raised it), after the usual cleanup, and
never look like a stream that just ended early. On asyncio, uvloop and trio.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import flowlet.functional as F
from _concurrency_support import settle
from flowlet import Pipeline, in_thread, pipe
from support import AsyncTracked, Tracked

N = 10
FAIL = 3


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == ("asyncio", {"use_uvloop": True}):
        pytest.importorskip("uvloop")
    return request.param


SHAPES: dict[str, dict[str, Any]] = {
    "inline": {},
    "c4": {"concurrency": 4},
    "c4-ordered": {"concurrency": 4, "ordered": True},
    "buffer2": {"buffer": 2},
}


async def consume(p: Pipeline[Any], consumer: str) -> list[Any]:
    out: list[Any] = []
    if consumer == "collect":
        out = await p.collect()
    elif consumer == "drain":
        await p.map(out.append).drain()
    elif consumer == "for_each":
        await p.for_each(out.append, concurrency=2)
    elif consumer == "async_for":
        async for x in p:
            out.append(x)
    elif consumer == "stream":
        async with p.stream() as items:
            async for x in items:
                out.append(x)
    else:
        assert consumer == "F.collect"
        out = await F.collect(F.chain(F.map(_same))(p))
    return out


CONSUMERS = ["collect", "drain", "for_each", "async_for", "stream", "F.collect"]


def _same(x: Any) -> Any:
    return x


def raising(exc: BaseException, fn_kind: str, result: Callable[[int], Any]) -> Any:
    """A stage function raising ``exc`` at item FAIL, else returning ``result(x)``."""

    def sync_fn(x: int) -> Any:
        if x == FAIL:
            raise exc
        return result(x)

    async def async_fn(x: int) -> Any:
        await anyio.lowlevel.checkpoint()
        return sync_fn(x)

    return sync_fn if fn_kind == "sync" else async_fn


RESULTS: dict[str, Callable[[int], Any]] = {
    "map": lambda x: x,
    "filter": lambda x: True,
    "flat_map": lambda x: [x],
    "for_each": lambda x: None,
}


def stage(p: Pipeline[int], kind: str, fn: Any, **opts: Any) -> Pipeline[Any]:
    if kind == "for_each":  # a terminal: applied by consume() as a map that drops
        return p.map(fn, **opts)
    return getattr(p, kind)(fn, **opts)


# -- CancelledError raised as a value ---------------------------------------------------------


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
async def test_a_cancelled_error_raised_by_a_stage_is_a_failure(
    kind: str, shape: str, fn_kind: str, consumer: str
) -> None:
    """The issue's repro: on asyncio this hung (collect, drain, for_each, stream) or
    raised "stopped before it finished" (async for), in every decoupled shape."""
    raised = asyncio.CancelledError(f"{kind} gave up")
    source = AsyncTracked(range(N))
    p = stage(pipe(source), kind, raising(raised, fn_kind, RESULTS[kind]), **SHAPES[shape])
    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError) as caught:
        await consume(p, consumer)
    assert caught.value is raised
    assert str(caught.value) == f"{kind} gave up"
    await settle()
    assert source.closes == 1


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_cancelled_error_raised_by_the_source_is_a_failure(shape: str) -> None:
    raised = asyncio.CancelledError("source gave up")

    async def source() -> AsyncIterator[int]:
        yield 1
        await anyio.lowlevel.checkpoint()
        raise raised

    async def same(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError) as caught:
        await pipe(source()).map(same, **SHAPES[shape]).collect()
    assert caught.value is raised


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_cancelled_error_raised_by_for_each_is_a_failure(concurrency: int) -> None:
    raised = asyncio.CancelledError("sink gave up")

    async def sink(x: int) -> None:
        await anyio.lowlevel.checkpoint()
        if x == FAIL:
            raise raised

    source = Tracked(range(N))
    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError) as caught:
        await pipe(source).for_each(sink, concurrency=concurrency)
    assert caught.value is raised
    assert source.closes == 1


async def test_a_cancelled_error_from_every_worker_at_once_is_one_failure() -> None:
    errors: list[BaseException] = []

    async def all_fail(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        errors.append(exc := asyncio.CancelledError(f"worker {x}"))
        raise exc

    with anyio.fail_after(5), pytest.raises(asyncio.CancelledError) as caught:
        await pipe(range(N)).map(all_fail, concurrency=6).collect()
    assert caught.value in errors


@pytest.mark.parametrize("consumer", ["collect", "async_for", "stream"])
async def test_a_real_cancellation_of_the_caller_still_cancels(consumer: str) -> None:
    """The fix tells a CancelledError raised as a value from the run being cancelled:
    cancelling the caller's scope must still cancel the run, quietly."""
    started = anyio.Event()
    source = AsyncTracked(range(N))

    async def slow(x: int) -> int:
        started.set()
        await anyio.sleep_forever()
        return x

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with anyio.CancelScope() as scope:
                    tg.cancel_scope_ = scope  # type: ignore[attr-defined]
                    await consume(pipe(source).map(slow, concurrency=4), consumer)
                assert scope.cancelled_caught

            tg.start_soon(run)
            await started.wait()
            tg.cancel_scope_.cancel()  # type: ignore[attr-defined]
    await settle()
    assert source.closes == 1


# -- StopIteration and StopAsyncIteration raised by user code ----------------------------------


def _pipelines(fn: Any) -> dict[str, Callable[[], Pipeline[Any]]]:
    """Every place a stage function can sit: fused, inline async, absorbed after a node,
    inside a flat_map expansion, decoupled, in a thread."""

    async def async_source() -> AsyncIterator[int]:
        for i in range(N):
            yield i

    return {
        "fused": lambda: pipe(range(N)).map(fn),
        "over-async-source": lambda: pipe(async_source()).map(fn),
        "absorbed-after-async": lambda: pipe(async_source()).map(abs).filter(fn),
        "after-flat_map": lambda: pipe(range(N)).flat_map(lambda x: [x]).map(fn),
        "flat_map-function": lambda: pipe(range(N)).flat_map(lambda x: [fn(x)]),
        "before-buffered": lambda: pipe(range(N)).map(fn).map(abs, buffer=2),
        "buffered": lambda: pipe(range(N)).map(fn, buffer=2),
        "concurrent": lambda: pipe(range(N)).map(fn, concurrency=4),
        "ordered": lambda: pipe(range(N)).map(fn, concurrency=4, ordered=True),
        "after-concurrent": lambda: pipe(range(N)).map(_async_same, concurrency=3).map(fn),
    }


async def _async_same(x: Any) -> Any:
    await anyio.lowlevel.checkpoint()
    return x


PLACES = list(_pipelines(abs))


def _assert_stop_reported(exc: BaseException, raised: BaseException) -> None:
    """The consumer got the original, or a RuntimeError that says what was raised."""
    if exc is raised:
        return
    assert isinstance(exc, RuntimeError), repr(exc)
    assert exc.__cause__ is raised or type(raised).__name__ in str(exc), repr(exc)


@pytest.mark.parametrize("consumer", ["collect", "async_for"])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
async def test_a_stop_raised_by_a_stage_function_is_never_the_end(
    stop: type[BaseException], fn_kind: str, place: str, consumer: str
) -> None:
    """Found by the issue's fault injection: a StopAsyncIteration from an inline async
    map, or after a flat_map, or over an async source ended the stream silently, and an
    in_thread StopIteration hung on asyncio."""
    raised = stop(f"{stop.__name__} from the stage")
    fn = raising(raised, fn_kind, lambda x: x)
    if place == "flat_map-function" and fn_kind == "async":
        pytest.skip("a flat_map function returning [coroutine] is a different mistake")
    p = _pipelines(fn)[place]()
    got: list[Any] | None = None
    with anyio.fail_after(5):
        try:
            got = await consume(p, consumer)
        except (StopIteration, StopAsyncIteration, RuntimeError) as exc:
            _assert_stop_reported(exc, raised)
    assert got is None, f"the stream ended early without an error: {got}"


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
async def test_a_stop_raised_in_a_thread_is_an_error_not_a_hang(
    stop: type[BaseException], concurrency: int
) -> None:
    """asyncio cannot set a StopIteration on a future: the call's result was lost in the
    event loop, and a ``concurrency=1`` stage waited for ever."""

    def blocking(x: int) -> int:
        if x == FAIL:
            raise stop()
        return x

    with ThreadPoolExecutor(2) as pool:
        p = pipe(range(N)).map(in_thread(blocking, executor=pool), concurrency=concurrency)
        with anyio.fail_after(5), pytest.raises(RuntimeError, match=stop.__name__) as caught:
            await p.collect()
    assert isinstance(caught.value.__cause__, stop)
    assert "in_thread(" in str(caught.value)


@pytest.mark.parametrize("stop", [StopIteration, StopAsyncIteration])
async def test_a_stop_raised_by_a_sync_source_is_an_error(stop: type[BaseException]) -> None:
    class Source:
        def __init__(self) -> None:
            self.pulled = 0
            self.closes = 0

        def __iter__(self) -> Iterator[int]:
            return self

        def __next__(self) -> int:
            self.pulled += 1
            if self.pulled == FAIL and stop is StopAsyncIteration:
                raise StopAsyncIteration("not an end for a sync iterator")
            if self.pulled > N:
                raise StopIteration
            return self.pulled

        def close(self) -> None:
            self.closes += 1

    for build in _pipelines(_same).values():
        source = Source()
        p = build()
        p = Pipeline(source, p._stages)  # the same stages over this source
        with anyio.fail_after(5):
            if stop is StopIteration:  # a sync iterator's StopIteration is its end
                assert len(await p.collect()) == N
            else:
                with pytest.raises(RuntimeError, match="StopAsyncIteration"):
                    await p.collect()
        await settle()
        assert source.closes == 1


async def test_a_step_that_raises_stop_iteration_on_an_expansions_last_item_is_caught() -> None:
    """A map absorbed into a flat_map's expansion runs as a builtin ``map``, which takes a
    StopIteration on the expansion's last item for its end: that was silent."""

    def last_fails(x: int) -> int:
        if x == FAIL:
            raise StopIteration
        return x

    with anyio.fail_after(5), pytest.raises(RuntimeError) as caught:
        await pipe(range(N)).flat_map(lambda x: [x]).map(last_fails).collect()
    assert str(caught.value).startswith("map(test_a_step_that_raises")
    assert "raised StopIteration" in str(caught.value)


async def test_the_message_names_the_flat_map_function() -> None:
    def explode(x: int) -> list[int]:
        raise StopIteration

    with anyio.fail_after(5), pytest.raises(RuntimeError) as caught:
        await pipe(range(N)).flat_map(explode).collect()
    assert str(caught.value) == (
        f"flat_map({explode.__qualname__}) raised StopIteration, which would have "
        "silently ended the stream early; raise another exception instead"
    )
    assert type(caught.value.__cause__) is StopIteration


# -- mistakes a newcomer makes ----------------------------------------------------------------


async def _fetch(x: int) -> int:
    return x


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_in_thread_returning_a_coroutine_says_what_to_write(concurrency: int) -> None:
    p = pipe([1, 2]).map(in_thread(lambda x: _fetch(x)), concurrency=concurrency)
    with anyio.fail_after(5), pytest.raises(TypeError) as caught:
        await p.collect()
    message = str(caught.value)
    assert message.startswith("in_thread(")
    assert "returned coroutine" in message
    assert "Pass the async function to the stage itself (`.map(fetch)`)" in message
    gc.collect()  # and no "coroutine was never awaited" warning (warnings are errors)


def test_iterating_a_pipeline_synchronously_says_what_to_write() -> None:
    p = pipe([1, 2])
    for attempt in (lambda: list(p), lambda: [x for x in p], lambda: iter(p)):  # noqa: C416
        with pytest.raises(TypeError, match=r"write `async for x in pipeline`"):
            attempt()  # type: ignore[no-untyped-call]


async def test_awaiting_a_pipeline_says_what_to_write() -> None:
    with pytest.raises(TypeError, match=r"write `await pipeline\.collect\(\)`"):
        await pipe([1, 2])  # type: ignore[misc]


async def test_a_flat_map_may_return_a_pipeline() -> None:
    """A Pipeline is async iterable (data), though it now has ``__await__``."""
    assert await pipe([1, 2]).flat_map(lambda x: pipe([x, x])).collect() == [1, 1, 2, 2]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_for_each_errors_name_for_each(concurrency: int) -> None:
    def sink(x: int) -> None:
        raise StopIteration

    with anyio.fail_after(5), pytest.raises(RuntimeError, match=r"^for_each\(") as caught:
        await pipe([1]).for_each(sink, concurrency=concurrency)
    assert "sink" in str(caught.value)


# -- what a close failure after `break` logs --------------------------------------------------


async def test_a_close_failure_after_break_is_logged_without_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On trio the logged error carried a BaseExceptionGroup of the run's cancellations
    as its context; on asyncio a "During handling of GeneratorExit"."""

    class Source(Tracked):
        def close(self) -> None:
            super().close()
            raise OSError("disk gone")

    for p in (pipe(Source(range(N))), pipe(Source(range(N))).map(_async_same, concurrency=2)):
        with caplog.at_level(logging.ERROR, logger="flowlet"):
            async for _ in p:
                break
            gc.collect()
            await settle()
        records = [r for r in caplog.records if r.name == "flowlet"]
        assert len(records) == 1, records
        assert records[0].exc_info is not None
        logged = records[0].exc_info[1]
        assert isinstance(logged, OSError)
        assert logged.__context__ is None
        caplog.clear()


if sys.version_info >= (3, 11):

    async def test_an_inline_cancelled_error_with_workers_downstream_is_a_failure() -> None:
        """In the consumer's task: on 3.11+ ``Task.cancelling()`` tells the two apart."""
        raised = asyncio.CancelledError("inline")

        def inline(x: int) -> int:
            if x == FAIL:
                raise raised
            return x

        with anyio.fail_after(5), pytest.raises(asyncio.CancelledError) as caught:
            await pipe(range(N)).map(_async_same, concurrency=3).map(inline).collect()
        assert caught.value is raised

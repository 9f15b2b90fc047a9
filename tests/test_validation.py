"""Bad input fails when the pipeline is built, with a message naming the argument and
the value, in every front end (Pipeline, Flow, op, functional); functions that are
not what they claim to be fail at their first call with a TypeError."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import flowlet.functional as F
from flowlet import Flow, op, pipe
from support import AsyncTracked


class RecordingSource:
    """A source that records whether anything started reading it."""

    def __init__(self) -> None:
        self.iterated = False

    def __iter__(self) -> Iterator[int]:
        self.iterated = True
        return iter([1, 2, 3])


def _never_called(x: object) -> object:
    raise AssertionError("the stage function ran although building should have failed")


# Each front end: build one stage of `kind` with `args` and `options`. `source` is only
# used by the Pipeline front end (the others have no source to read).
FRONT_ENDS: dict[str, Callable[[RecordingSource, str, tuple[Any, ...], dict[str, Any]], Any]] = {
    "Pipeline": lambda source, kind, args, options: getattr(pipe(source), kind)(*args, **options),
    "Pipeline-later-stage": lambda source, kind, args, options: getattr(
        pipe(source).map(_never_called), kind
    )(*args, **options),
    "Flow": lambda source, kind, args, options: getattr(Flow(), kind)(*args, **options),
    "Flow[int]": lambda source, kind, args, options: getattr(Flow[int](), kind)(*args, **options),
    "op": lambda source, kind, args, options: getattr(op, kind)(*args, **options),
    "F": lambda source, kind, args, options: getattr(F, kind)(*args, **options),
}

FUNCTION_KINDS = ["map", "filter", "flat_map"]

BAD_COUNTS = [
    pytest.param(0, "0", id="zero"),
    pytest.param(-1, "-1", id="negative"),
    pytest.param(True, "True", id="True"),
    pytest.param(False, "False", id="False"),
    pytest.param(1.5, "1.5", id="float"),
    pytest.param(2.0, "2.0", id="integral-float"),
    pytest.param("2", "'2'", id="string"),
]


def build_fails(
    front_end: str,
    kind: str,
    args: tuple[Any, ...],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """Building must raise ``error`` with exactly ``message``, and read nothing."""
    source = RecordingSource()
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        FRONT_ENDS[front_end](source, kind, args, options)
    assert not source.iterated


# -- concurrency, buffer, size -----------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [*BAD_COUNTS, pytest.param(None, "None", id="None")])
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_concurrency_must_be_an_int_of_at_least_one(
    front_end: str, kind: str, value: object, shown: str
) -> None:
    build_fails(
        front_end,
        kind,
        (_never_called,),
        {"concurrency": value},
        ValueError,
        f"concurrency must be an int >= 1, got {shown}",
    )


def test_concurrency_message_is_exactly_as_documented() -> None:
    with pytest.raises(ValueError, match=r"^concurrency must be an int >= 1, got 0$"):
        pipe([1]).map(_never_called, concurrency=0)


@pytest.mark.parametrize(("value", "shown"), BAD_COUNTS)
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_buffer_must_be_an_int_of_at_least_one(
    front_end: str, kind: str, value: object, shown: str
) -> None:
    build_fails(
        front_end,
        kind,
        (_never_called,),
        {"buffer": value},
        ValueError,
        f"buffer must be an int >= 1, got {shown}",
    )


@pytest.mark.parametrize(("value", "shown"), [*BAD_COUNTS, pytest.param(None, "None", id="None")])
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_batch_size_must_be_an_int_of_at_least_one(
    front_end: str, value: object, shown: str
) -> None:
    message = f"size must be an int >= 1, got {shown}"
    build_fails(front_end, "batch", (value,), {}, ValueError, message)


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 1},
        {"concurrency": 7, "buffer": 1},
        {"concurrency": 1, "buffer": None},
        {"concurrency": 2, "ordered": True, "buffer": 100},
        {"ordered": False},
    ],
    ids=repr,
)
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_good_options_are_accepted_without_running_anything(
    front_end: str, kind: str, options: dict[str, Any]
) -> None:
    source = RecordingSource()
    FRONT_ENDS[front_end](source, kind, (_never_called,), options)
    assert not source.iterated


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_batch_of_one_is_accepted(front_end: str) -> None:
    FRONT_ENDS[front_end](RecordingSource(), "batch", (1,), {})


# -- ordered -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(1, "1", id="one"),
        pytest.param(0, "0", id="zero"),
        pytest.param("yes", "'yes'", id="string"),
        pytest.param("False", "'False'", id="string-False"),
        pytest.param(None, "None", id="None"),
    ],
)
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_ordered_must_be_a_bool(front_end: str, kind: str, value: object, shown: str) -> None:
    build_fails(
        front_end,
        kind,
        (_never_called,),
        {"concurrency": 2, "ordered": value},
        TypeError,
        f"ordered must be a bool, got {shown}",
    )


# -- the function ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(3, "3", id="int"),
        pytest.param(None, "None", id="None"),
        pytest.param("len", "'len'", id="string"),
        pytest.param([len], "[<built-in function len>]", id="list"),
    ],
)
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_the_function_must_be_callable(
    front_end: str, kind: str, value: object, shown: str
) -> None:
    build_fails(
        front_end, kind, (value,), {}, TypeError, f"{kind}() function must be callable, got {shown}"
    )


# -- terminals ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), BAD_COUNTS)
@pytest.mark.parametrize("front_end", ["Pipeline", "F"])
async def test_for_each_concurrency_must_be_an_int_of_at_least_one(
    front_end: str, value: object, shown: str
) -> None:
    source = RecordingSource()
    message = f"^{re.escape(f'concurrency must be an int >= 1, got {shown}')}$"
    run = (
        pipe(source).for_each(_never_called, concurrency=value)  # type: ignore[arg-type]
        if front_end == "Pipeline"
        else F.for_each(_never_called, source, concurrency=value)  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match=message):
        await run
    assert not source.iterated


# -- sources -----------------------------------------------------------------------------


class NotASource:
    def __repr__(self) -> str:
        return "NotASource()"


NOT_SOURCES = [
    pytest.param(42, "int 42", id="int"),
    pytest.param(None, "NoneType None", id="None"),
    pytest.param(1.5, "float 1.5", id="float"),
    pytest.param(NotASource(), "NotASource NotASource()", id="object"),
]


def _source_message(shown: str) -> str:
    text = f"pipe() needs an iterable or an async iterable as its source, got {shown}"
    return f"^{re.escape(text)}$"


@pytest.mark.parametrize(("value", "shown"), NOT_SOURCES)
def test_pipe_rejects_a_source_that_is_not_iterable(value: object, shown: str) -> None:
    with pytest.raises(TypeError, match=_source_message(shown)):
        pipe(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "shown"), NOT_SOURCES)
def test_an_operator_rejects_a_source_that_is_not_iterable(value: object, shown: str) -> None:
    with pytest.raises(TypeError, match=_source_message(shown)):
        F.map(_never_called)(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "shown"), NOT_SOURCES)
@pytest.mark.parametrize("terminal", ["collect", "drain", "for_each"])
async def test_functional_terminals_reject_a_source_that_is_not_iterable(
    terminal: str, value: object, shown: str
) -> None:
    run = (
        F.for_each(_never_called, value)  # type: ignore[arg-type]
        if terminal == "for_each"
        else getattr(F, terminal)(value)
    )
    with pytest.raises(TypeError, match=_source_message(shown)):
        await run


# -- composing ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["through", "or"])
@pytest.mark.parametrize("base", ["Pipeline", "Flow"])
def test_through_and_or_take_only_a_flow(base: str, how: str) -> None:
    source = RecordingSource()
    left: Any = pipe(source) if base == "Pipeline" else Flow()
    not_a_flow = F.map(_never_called)  # an Operator, a likely mix-up
    apply = left.through if how == "through" else left.__or__
    with pytest.raises(TypeError, match=r"^expected a Flow, got Operator Operator\(Flow\("):
        apply(not_a_flow)
    assert not source.iterated


def test_chain_takes_only_operators() -> None:
    with pytest.raises(
        TypeError, match=r"^chain\(\) takes operators such as F\.map\(\.\.\.\), got Flow Flow\("
    ):
        F.chain(F.map(_never_called), op.map(_never_called))  # type: ignore[call-overload]


# -- a plain function that returns a coroutine -------------------------------------------

made: list[Any] = []


async def _fetch(x: int) -> int:
    return x


def _make_coroutine(x: int) -> Any:
    coroutine = _fetch(x)
    made.append(coroutine)
    return coroutine


# Module-level lambdas, so that the stage is described as `map(<lambda>)`.
PLAIN_RETURNING_COROUTINE = {
    "map": lambda x: _make_coroutine(x),
    "filter": lambda x: _make_coroutine(x),
    "flat_map": lambda x: _make_coroutine(x),
}

RUN_OPTIONS = [
    pytest.param({}, id="inline"),
    pytest.param({"concurrency": 4}, id="concurrency-4"),
    pytest.param({"buffer": 2}, id="buffer"),
    pytest.param({"concurrency": 4, "buffer": 2}, id="concurrency-4-buffer"),
    pytest.param({"concurrency": 4, "ordered": True, "buffer": 2}, id="ordered-buffer"),
]


@pytest.fixture
def fresh_made() -> Iterator[list[Any]]:
    made.clear()
    yield made
    made.clear()


@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize("options", RUN_OPTIONS)
@pytest.mark.parametrize("kind", FUNCTION_KINDS)
async def test_a_plain_function_returning_a_coroutine_is_a_type_error(
    kind: str, options: dict[str, Any], source_kind: str, fresh_made: list[Any]
) -> None:
    """No "coroutine was never awaited" warning may follow: warnings are errors here,
    and the coroutines are checked to be closed."""
    source = range(10) if source_kind == "sync" else AsyncTracked(range(10))
    pipeline = getattr(pipe(source), kind)(PLAIN_RETURNING_COROUTINE[kind], **options)
    message = (
        rf"^{kind}\(<lambda>\) returned coroutine <coroutine object _fetch at 0x[0-9a-f]+>, "
        r"but its function is not `async def`, so flowlet calls it as a plain function\. "
        r"Make it async \(`async def f\(x\): return await fetch\(x\)`\) or pass the "
        r"coroutine function itself \(functools\.partial works\)$"
    )
    with anyio.fail_after(5), pytest.raises(TypeError, match=message):
        await pipeline.collect()
    assert fresh_made  # the function was called ...
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in fresh_made)


async def test_a_plain_function_returning_a_coroutine_fails_at_its_first_call(
    fresh_made: list[Any],
) -> None:
    outputs: list[Any] = []

    async def consume() -> None:
        async for item in pipe(range(10)).map(PLAIN_RETURNING_COROUTINE["map"]):
            outputs.append(item)  # pragma: no cover

    with pytest.raises(TypeError, match=r"is not `async def`"):
        await consume()
    assert outputs == []
    assert len(fresh_made) == 1
    assert inspect.getcoroutinestate(fresh_made[0]) == inspect.CORO_CLOSED


async def test_a_functional_operator_rejects_a_plain_function_returning_a_coroutine(
    fresh_made: list[Any],
) -> None:
    with pytest.raises(TypeError, match=r"^map\(<lambda>\) returned coroutine "):
        await F.collect(F.map(PLAIN_RETURNING_COROUTINE["map"], concurrency=3)([1, 2]))
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in fresh_made)


async def _async_identity(x: int) -> int:
    return x


def _expand_nothing_first(x: int) -> list[int]:
    return [] if x == 0 else [x]


# A step whose first items never reach it: the check must wait for the first item that
# does (items dropped in front of it, or expansions that are empty).
LATE_FIRST_ITEM = {
    "after a filter dropping the first items, over an async node": lambda p: p.map(
        _async_identity
    ).filter(lambda x: x >= 3),
    "after an empty first expansion": lambda p: p.flat_map(_expand_nothing_first),
    "after a filter dropping the first expansion": lambda p: p.flat_map(lambda x: [x]).filter(
        lambda x: x >= 3
    ),
    "after an async expansion, then an empty one": lambda p: p.flat_map(
        lambda x: AsyncTracked([x]) if x == 0 else [] if x == 1 else [x]
    ),
}


@pytest.mark.parametrize("consumer", ["collect", "async_for"])
@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize("front", list(LATE_FIRST_ITEM))
async def test_a_step_returning_a_coroutine_is_caught_at_its_own_first_item(
    front: str, source_kind: str, consumer: str, fresh_made: list[Any]
) -> None:
    source = range(10) if source_kind == "sync" else AsyncTracked(range(10))
    pipeline = LATE_FIRST_ITEM[front](pipe(source)).map(PLAIN_RETURNING_COROUTINE["map"])
    outputs: list[Any] = []

    async def consume() -> None:
        if consumer == "collect":
            outputs.extend(await pipeline.collect())
        else:
            async for item in pipeline:
                outputs.append(item)  # pragma: no cover

    with anyio.fail_after(5), pytest.raises(TypeError, match=r"is not `async def`"):
        await consume()
    assert outputs == []
    assert len(fresh_made) == 1
    assert inspect.getcoroutinestate(fresh_made[0]) == inspect.CORO_CLOSED


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_for_each_rejects_a_plain_function_returning_a_coroutine(
    concurrency: int, fresh_made: list[Any]
) -> None:
    run = pipe(range(5)).for_each(PLAIN_RETURNING_COROUTINE["map"], concurrency=concurrency)
    with anyio.fail_after(5), pytest.raises(TypeError, match=r"is not `async def`"):
        await run
    assert fresh_made
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in fresh_made)


# -- flat_map returning something that is not iterable -----------------------------------


def five(x: int) -> int:
    return 5


async def async_five(x: int) -> int:
    return 5


def nothing(x: int) -> None:
    return None


@pytest.mark.parametrize("source_kind", ["sync", "async"])
@pytest.mark.parametrize("options", RUN_OPTIONS)
@pytest.mark.parametrize(
    ("fn", "shown"),
    [
        (five, "five) must return an iterable or an async iterable, got int 5"),
        (async_five, "async_five) must return an iterable or an async iterable, got int 5"),
        (nothing, "nothing) must return an iterable or an async iterable, got NoneType None"),
    ],
    ids=["sync-int", "async-int", "sync-None"],
)
async def test_flat_map_returning_a_non_iterable_is_a_type_error_naming_the_stage(
    fn: Callable[[int], Any], shown: str, options: dict[str, Any], source_kind: str
) -> None:
    source = range(10) if source_kind == "sync" else AsyncTracked(range(10))
    with anyio.fail_after(5), pytest.raises(TypeError, match=f"^{re.escape('flat_map(' + shown)}$"):
        await pipe(source).flat_map(fn, **options).collect()

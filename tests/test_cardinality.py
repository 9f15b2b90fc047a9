"""How many outputs each stage makes per input, checked against plain Python.

map is 1 -> 1, filter 1 -> 0..1, flat_map 1 -> 0..N, batch N -> 1; every stage runs over
sync and async sources, with sync and async functions, inline and decoupled.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import pytest

from flowlet import pipe
from support import AsyncTracked, Tracked

# -- sources -----------------------------------------------------------------------------


async def _agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await anyio.lowlevel.checkpoint()
        yield item


def _generator(items: list[Any]) -> Iterator[Any]:
    yield from items


SOURCES: dict[str, Callable[[list[Any]], Any]] = {
    "list": list,
    "generator": _generator,
    "tracked": Tracked,
    "async-generator": _agen,
    "async-tracked": AsyncTracked,
}


@pytest.fixture(params=["generator", "async-tracked"])
def make_source(request: pytest.FixtureRequest) -> Callable[[Iterable[Any]], Any]:
    """A sync and an async source (for the big parameter grids)."""
    maker = SOURCES[request.param]
    return lambda items: maker(list(items))


@pytest.fixture(params=list(SOURCES))
def any_source(request: pytest.FixtureRequest) -> Callable[[Iterable[Any]], Any]:
    """Every kind of source."""
    maker = SOURCES[request.param]
    return lambda items: maker(list(items))


# -- stage options -----------------------------------------------------------------------

MODES: dict[str, dict[str, Any]] = {
    "inline": {},
    "concurrent": {"concurrency": 4},
    "ordered": {"concurrency": 4, "ordered": True},
    "buffered": {"buffer": 2},
    "ordered-buffered": {"concurrency": 3, "ordered": True, "buffer": 1},
}


def keeps_order(mode: str, fn_overlaps: bool) -> bool:
    """Whether outputs must come in input order: everything except an unordered stage
    whose calls can overlap (an async function with concurrency > 1)."""
    return not (mode == "concurrent" and fn_overlaps)


def assert_outputs(result: list[Any], expected: list[Any], *, exact: bool) -> None:
    if exact:
        assert result == expected
    else:
        assert len(result) == len(expected)
        assert sorted(result, key=repr) == sorted(expected, key=repr)


ITEMS = list(range(23))

# -- map ---------------------------------------------------------------------------------


def triple_or_none(x: int) -> int | None:
    return None if x % 5 == 0 else x * 3


async def async_triple_or_none(x: int) -> int | None:
    await anyio.lowlevel.checkpoint()
    return triple_or_none(x)


async def _scaled(factor: int, x: int) -> int | None:
    await anyio.lowlevel.checkpoint()
    return None if x % 5 == 0 else x * factor


class AsyncCallable:
    async def __call__(self, x: int) -> int | None:
        await anyio.lowlevel.checkpoint()
        return triple_or_none(x)


class SyncCallable:
    def __call__(self, x: int) -> int | None:
        return triple_or_none(x)


MAP_FUNCTIONS: dict[str, tuple[Callable[[int], Any], bool]] = {
    "def": (triple_or_none, False),
    "lambda": (lambda x: triple_or_none(x), False),
    "sync-callable-object": (SyncCallable(), False),
    "async-def": (async_triple_or_none, True),
    "partial-of-async-def": (functools.partial(_scaled, 3), True),
    "async-callable-object": (AsyncCallable(), True),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fn_name", list(MAP_FUNCTIONS))
async def test_map_makes_exactly_one_output_per_input(
    make_source: Callable[[Iterable[Any]], Any], fn_name: str, mode: str
) -> None:
    fn, overlaps = MAP_FUNCTIONS[fn_name]
    with anyio.fail_after(5):
        result = await pipe(make_source(ITEMS)).map(fn, **MODES[mode]).collect()
    expected = [triple_or_none(x) for x in ITEMS]
    assert None in expected  # None outputs are data and must survive
    assert_outputs(result, expected, exact=keeps_order(mode, overlaps))


@pytest.mark.parametrize("mode", list(MODES))
async def test_map_over_an_empty_source_makes_nothing(
    any_source: Callable[[Iterable[Any]], Any], mode: str
) -> None:
    calls: list[int] = []

    async def record(x: int) -> int:
        calls.append(x)
        return x

    with anyio.fail_after(5):
        assert await pipe(any_source([])).map(record, **MODES[mode]).collect() == []
    assert calls == []


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 48, 49, 1000, 4097])
async def test_sync_map_chain_is_exact_for_many_lengths(length: int) -> None:
    """Sync stages over a sync source are pulled in growing chunks; no chunk boundary
    may lose or repeat an item."""
    result = await pipe(range(length)).map(lambda x: x + 1).filter(lambda x: x % 3).collect()
    assert result == [x + 1 for x in range(length) if (x + 1) % 3]


# -- filter ------------------------------------------------------------------------------

FALSY_AND_NONE: list[Any] = [None, 0, "", [], (), 1, "a", [0], None, False, 0.0, 7, {}]


def _keep_all(x: object) -> bool:
    return True


async def _async_keep_all(x: object) -> bool:
    await anyio.lowlevel.checkpoint()
    return True


def _is_none(x: object) -> bool:
    return x is None


async def _async_is_none(x: object) -> bool:
    await anyio.lowlevel.checkpoint()
    return x is None


def _identity(x: object) -> object:
    return x


async def _async_identity(x: object) -> object:
    await anyio.lowlevel.checkpoint()
    return x


def _non_bool_truthiness(x: object) -> object:
    # Truthy and falsy values that are not bools: "yes", [], 0, (1,)
    return {None: "yes", 0: [], "": 0, 1: (1,)}.get(x, "") if isinstance(x, (int, str)) else []


async def _async_non_bool_truthiness(x: object) -> object:
    await anyio.lowlevel.checkpoint()
    return _non_bool_truthiness(x)


PREDICATES: dict[str, tuple[Callable[[Any], object], Callable[[Any], object], bool]] = {
    # name: (predicate given to flowlet, plain reference, calls can overlap)
    "keep-all": (_keep_all, _keep_all, False),
    "async-keep-all": (_async_keep_all, _keep_all, True),
    "is-none": (_is_none, _is_none, False),
    "async-is-none": (_async_is_none, _is_none, True),
    "identity": (_identity, _identity, False),
    "async-identity": (_async_identity, _identity, True),
    "non-bool": (_non_bool_truthiness, _non_bool_truthiness, False),
    "async-non-bool": (_async_non_bool_truthiness, _non_bool_truthiness, True),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("pred_name", list(PREDICATES))
async def test_filter_keeps_exactly_the_items_its_predicate_is_truthy_for(
    make_source: Callable[[Iterable[Any]], Any], pred_name: str, mode: str
) -> None:
    pred, reference, overlaps = PREDICATES[pred_name]
    with anyio.fail_after(5):
        result = await pipe(make_source(FALSY_AND_NONE)).filter(pred, **MODES[mode]).collect()
    expected = [x for x in FALSY_AND_NONE if reference(x)]
    assert_outputs(result, expected, exact=keeps_order(mode, overlaps))


async def test_filter_keeps_none_items_when_told_to() -> None:
    assert await pipe([None, 1, None]).filter(lambda x: True).collect() == [None, 1, None]


async def test_filter_returns_the_item_not_the_predicate_result() -> None:
    result = await pipe([0, 1, 2, 3]).filter(lambda x: "yes" if x % 2 else "").collect()
    assert result == [1, 3]


async def test_filter_that_drops_everything_makes_nothing() -> None:
    async def never(x: int) -> bool:
        return False

    assert await pipe(range(50)).filter(never, concurrency=4).collect() == []


# -- flat_map ----------------------------------------------------------------------------


def expansion(x: int) -> list[tuple[int, int]]:
    """0..3 outputs per input (some inputs expand to nothing)."""
    return [(x, j) for j in range(x % 4)]


async def _async_iter(values: list[Any]) -> AsyncIterator[Any]:
    for value in values:
        await anyio.lowlevel.checkpoint()
        yield value


class AsyncOnlyIterable:
    """An async iterable that is not an async iterator (``__aiter__`` makes one)."""

    def __init__(self, values: list[Any]) -> None:
        self._values = values

    def __aiter__(self) -> AsyncIterator[Any]:
        return _async_iter(self._values)


def fm_list(x: int) -> list[tuple[int, int]]:
    return expansion(x)


def fm_tuple(x: int) -> tuple[tuple[int, int], ...]:
    return tuple(expansion(x))


def fm_generator(x: int) -> Iterator[tuple[int, int]]:
    yield from expansion(x)


def fm_generator_expression(x: int) -> Iterator[tuple[int, int]]:
    return (pair for pair in expansion(x))


async def fm_async_list(x: int) -> list[tuple[int, int]]:
    await anyio.lowlevel.checkpoint()
    return expansion(x)


async def fm_async_returns_async_generator(x: int) -> AsyncIterator[tuple[int, int]]:
    await anyio.lowlevel.checkpoint()
    return _async_iter(expansion(x))


async def fm_async_returns_async_iterable(x: int) -> AsyncOnlyIterable:
    await anyio.lowlevel.checkpoint()
    return AsyncOnlyIterable(expansion(x))


async def fm_async_generator_function(x: int) -> AsyncIterator[tuple[int, int]]:
    for pair in expansion(x):
        await anyio.lowlevel.checkpoint()
        yield pair


async def _offset_async_generator(offset: int, x: int) -> AsyncIterator[tuple[int, int]]:
    for a, b in expansion(x):
        await anyio.lowlevel.checkpoint()
        yield (a, b + offset)


def fm_sync_returns_async_generator(x: int) -> AsyncIterator[tuple[int, int]]:
    return _async_iter(expansion(x))


class AsyncGeneratorCallable:
    async def __call__(self, x: int) -> AsyncIterator[tuple[int, int]]:
        for pair in expansion(x):
            yield pair


FLAT_MAP_FUNCTIONS: dict[str, tuple[Callable[[int], Any], bool]] = {
    # name: (function, whether its calls or expansions can overlap at concurrency > 1)
    "sync-list": (fm_list, False),
    "sync-tuple": (fm_tuple, False),
    "sync-generator-function": (fm_generator, False),
    "sync-generator-expression": (fm_generator_expression, False),
    "sync-returns-async-generator": (fm_sync_returns_async_generator, False),
    "async-def-returns-list": (fm_async_list, True),
    "async-def-returns-async-generator": (fm_async_returns_async_generator, True),
    "async-def-returns-async-iterable": (fm_async_returns_async_iterable, True),
    "async-generator-function": (fm_async_generator_function, True),
    "partial-of-async-generator-function": (functools.partial(_offset_async_generator, 0), True),
    "async-generator-callable-object": (AsyncGeneratorCallable(), True),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fn_name", list(FLAT_MAP_FUNCTIONS))
async def test_flat_map_makes_every_expansion_item_and_nothing_else(
    make_source: Callable[[Iterable[Any]], Any], fn_name: str, mode: str
) -> None:
    fn, overlaps = FLAT_MAP_FUNCTIONS[fn_name]
    with anyio.fail_after(5):
        result = await pipe(make_source(ITEMS)).flat_map(fn, **MODES[mode]).collect()
    expected = [pair for x in ITEMS for pair in expansion(x)]
    assert_outputs(result, expected, exact=keeps_order(mode, overlaps))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fn_name", list(FLAT_MAP_FUNCTIONS))
async def test_flat_map_where_every_expansion_is_empty_makes_nothing(
    fn_name: str, mode: str
) -> None:
    fn, _ = FLAT_MAP_FUNCTIONS[fn_name]
    # Items that are multiples of 4 expand to nothing.
    with anyio.fail_after(5):
        result = await pipe([0, 4, 8, 12]).flat_map(fn, **MODES[mode]).collect()
    assert result == []


@pytest.mark.parametrize("mode", list(MODES))
async def test_flat_map_passes_none_items_of_an_expansion_through(mode: str) -> None:
    async def nones(x: int) -> list[None]:
        return [None] * x

    with anyio.fail_after(5):
        result = await pipe([0, 1, 2, 3]).flat_map(nones, **MODES[mode]).collect()
    assert result == [None] * 6


def _shape_shifting_expansion(x: int) -> Any:
    """A plain function whose results change kind from item to item: list, empty list,
    tuple, generator, async generator (so the consumer meets a sync expansion after an
    async one and the other way round), and a range."""

    async def agen() -> AsyncIterator[int]:
        for y in (x, -x):
            await anyio.lowlevel.checkpoint()
            yield y

    kind = x % 6
    if kind == 0:
        return [x, -x]
    if kind == 1:
        return []
    if kind == 2:
        return (x, -x)
    if kind == 3:
        return (y for y in (x, -x))
    if kind == 4:
        return agen()
    return range(x, x + 2)


def _shape_shifting_model(x: int) -> list[int]:
    kind = x % 6
    return [] if kind == 1 else list(range(x, x + 2)) if kind == 5 else [x, -x]


@pytest.mark.parametrize("steps", ["none", "filter-map"])
@pytest.mark.parametrize("consumer", ["collect", "async_for", "stream"])
async def test_flat_map_expansions_may_change_kind_from_item_to_item(
    make_source: Callable[[Iterable[Any]], Any], consumer: str, steps: str
) -> None:
    items = list(range(40))
    p = pipe(make_source(items)).flat_map(_shape_shifting_expansion)
    expected = [y for x in items for y in _shape_shifting_model(x)]
    if steps == "filter-map":
        p = p.filter(lambda y: y % 3 != 0).map(lambda y: y * 10)
        expected = [y * 10 for y in expected if y % 3 != 0]
    with anyio.fail_after(5):
        if consumer == "collect":
            result = await p.collect()
        elif consumer == "async_for":
            result = [y async for y in p]
        else:
            async with p.stream() as ys:
                result = [y async for y in ys]
    assert result == expected


async def test_flat_map_of_strings_expands_into_characters() -> None:
    assert await pipe(["ab", "", "c"]).flat_map(lambda s: s).collect() == ["a", "b", "c"]


# -- batch -------------------------------------------------------------------------------


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@pytest.mark.parametrize(
    ("length", "size"),
    [
        pytest.param(6, 3, id="exact-groups"),
        pytest.param(7, 3, id="short-last-group"),
        pytest.param(2, 5, id="size-larger-than-input"),
        pytest.param(5, 5, id="size-equal-to-input"),
        pytest.param(0, 3, id="empty-source"),
        pytest.param(4, 1, id="size-one"),
        pytest.param(100, 7, id="many-groups"),
    ],
)
async def test_batch_groups_items_like_slicing(
    any_source: Callable[[Iterable[Any]], Any], length: int, size: int
) -> None:
    items = list(range(length))
    with anyio.fail_after(5):
        result = await pipe(any_source(items)).batch(size).collect()
    assert result == chunks(items, size)
    assert all(type(group) is list for group in result)


async def test_batch_makes_a_new_list_for_every_group() -> None:
    result = await pipe(range(6)).batch(2).collect()
    result[0].append("changed")
    assert result[1:] == [[2, 3], [4, 5]]


async def test_batch_keeps_none_items() -> None:
    assert await pipe([None, None, None]).batch(2).collect() == [[None, None], [None]]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("size", [1, 3, 4, 30])
async def test_batch_after_a_map_of_any_kind(
    make_source: Callable[[Iterable[Any]], Any], mode: str, size: int
) -> None:
    with anyio.fail_after(5):
        result = (
            await pipe(make_source(ITEMS))
            .map(async_triple_or_none, **MODES[mode])
            .batch(size)
            .collect()
        )
    expected_items = [triple_or_none(x) for x in ITEMS]
    assert [len(group) for group in result] == [len(g) for g in chunks(expected_items, size)]
    flat = [x for group in result for x in group]
    if keeps_order(mode, fn_overlaps=True):
        assert result == chunks(expected_items, size)
    else:
        assert sorted(flat, key=repr) == sorted(expected_items, key=repr)


async def test_batch_of_batches() -> None:
    result = await pipe(range(10)).batch(2).batch(2).collect()
    assert result == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]]]


# -- chains ------------------------------------------------------------------------------


def reference_chain(items: list[int]) -> list[int]:
    tripled = [triple_or_none(x) for x in items]
    kept = [x for x in tripled if x is None or x % 2 == 0]
    expanded = [y for x in kept for y in ([None] if x is None else [x, x + 1])]
    return [len(group) * 1000 + sum(v or 0 for v in group) for group in chunks(expanded, 4)]


def _keep_none_or_even(x: int | None) -> bool:
    return x is None or x % 2 == 0


async def _async_keep_none_or_even(x: int | None) -> bool:
    await anyio.lowlevel.checkpoint()
    return _keep_none_or_even(x)


def _expand(x: int | None) -> list[int | None]:
    return [None] if x is None else [x, x + 1]


async def _async_expand(x: int | None) -> AsyncIterator[int | None]:
    for y in _expand(x):
        await anyio.lowlevel.checkpoint()
        yield y


def _summarise(group: list[int | None]) -> int:
    return len(group) * 1000 + sum(v or 0 for v in group)


async def _async_summarise(group: list[int | None]) -> int:
    await anyio.lowlevel.checkpoint()
    return _summarise(group)


CHAIN_FUNCTIONS = {
    "sync": (triple_or_none, _keep_none_or_even, _expand, _summarise),
    "async": (async_triple_or_none, _async_keep_none_or_even, _async_expand, _async_summarise),
    "mixed": (async_triple_or_none, _keep_none_or_even, _async_expand, _summarise),
}

# Modes whose outputs keep input order; the unordered one is checked separately below.
ORDERED_MODES = [m for m in MODES if m != "concurrent"]


@pytest.mark.parametrize("mode", ORDERED_MODES)
@pytest.mark.parametrize("kinds", list(CHAIN_FUNCTIONS))
async def test_chain_of_every_stage_matches_plain_python(
    any_source: Callable[[Iterable[Any]], Any], kinds: str, mode: str
) -> None:
    triple, keep, expand, summarise = CHAIN_FUNCTIONS[kinds]
    options = MODES[mode]
    with anyio.fail_after(5):
        result = (
            await pipe(any_source(ITEMS))
            .map(triple, **options)
            .filter(keep, **options)
            .flat_map(expand, **options)
            .batch(4)
            .map(summarise, **options)
            .collect()
        )
    assert result == reference_chain(ITEMS)


@pytest.mark.parametrize("kinds", list(CHAIN_FUNCTIONS))
async def test_unordered_concurrent_chain_makes_the_same_multiset(
    make_source: Callable[[Iterable[Any]], Any], kinds: str
) -> None:
    triple, keep, expand, _ = CHAIN_FUNCTIONS[kinds]
    with anyio.fail_after(5):
        result = (
            await pipe(make_source(ITEMS))
            .map(triple, concurrency=4)
            .filter(keep, concurrency=3)
            .flat_map(expand, concurrency=2)
            .collect()
        )
    tripled = [triple_or_none(x) for x in ITEMS]
    expected = [y for x in tripled if _keep_none_or_even(x) for y in _expand(x)]
    assert_outputs(result, expected, exact=False)


async def test_mixed_inline_and_decoupled_chain_matches_plain_python() -> None:
    with anyio.fail_after(5):
        result = (
            await pipe(AsyncTracked(range(40)))
            .map(lambda x: x - 20)
            .filter(_async_keep_none_or_even, concurrency=4, ordered=True)
            .flat_map(fm_sync_returns_async_generator)
            .batch(3)
            .map(len, buffer=3)
            .filter(lambda n: n == 3)
            .collect()
        )
    expanded = [p for x in range(40) if (x - 20) % 2 == 0 for p in expansion(x - 20)]
    assert result == [3] * (len(expanded) // 3)


# -- source kinds ------------------------------------------------------------------------


class BothKinds:
    """An object that is both iterable and async iterable: the async side must win."""

    def __iter__(self) -> Iterator[str]:
        return iter(["sync"])

    def __aiter__(self) -> AsyncIterator[str]:
        return _async_iter(["async", "async"])


async def test_a_source_with_both_protocols_is_read_asynchronously() -> None:
    assert await pipe(BothKinds()).map(str.upper).collect() == ["ASYNC", "ASYNC"]


async def test_an_async_iterable_that_is_not_an_iterator_is_a_source() -> None:
    assert await pipe(AsyncOnlyIterable([1, 2])).map(lambda x: x * 2).collect() == [2, 4]


@pytest.mark.parametrize("mode", list(MODES))
async def test_exception_objects_are_data_not_errors(mode: str) -> None:
    async def as_errors(x: int) -> list[BaseException]:
        return [ValueError(x), StopIteration(x), StopAsyncIteration(x)]

    with anyio.fail_after(5):
        result = await pipe([1, 2]).flat_map(as_errors, **MODES[mode]).collect()
    assert sorted(type(e).__name__ for e in result) == sorted(
        ["ValueError", "StopIteration", "StopAsyncIteration"] * 2
    )


async def test_concurrency_larger_than_the_input_makes_every_output_once() -> None:
    with anyio.fail_after(5):
        result = await pipe(range(3)).map(async_triple_or_none, concurrency=64).collect()
    assert sorted(result, key=repr) == sorted([None, 3, 6], key=repr)


async def test_a_source_of_none_items() -> None:
    result = await pipe([None] * 5).map(_async_identity, concurrency=3).collect()
    assert result == [None] * 5


# -- a stage function raising StopIteration ----------------------------------------------


def stopping_at_two(stop: StopIteration) -> Callable[[int], int]:
    def stop_at_two(x: int) -> int:
        if x == 2:
            raise stop
        return x

    return stop_at_two


STOPPING_PIPELINES: dict[str, Callable[[Any, Callable[[int], int]], Any]] = {
    "map": lambda source, fn: pipe(source).map(fn),
    "filter": lambda source, fn: pipe(source).filter(fn),
    "map-then-batch": lambda source, fn: pipe(source).map(fn).batch(2),
    "map-then-concurrent-map": lambda source, fn: (
        pipe(source).map(fn).map(_async_identity, concurrency=2)
    ),
    "buffered-map": lambda source, fn: pipe(source).map(fn, buffer=1),
    "flat_map": lambda source, fn: pipe(source).flat_map(lambda x: [fn(x)]),
}


async def _consume(pipeline: Any, consumer: str) -> list[Any]:
    if consumer == "collect":
        return list(await pipeline.collect())
    return [x async for x in pipeline]


@pytest.mark.parametrize("consumer", ["collect", "async-for"])
@pytest.mark.parametrize(
    ("name", "source_kind"),
    [
        ("map", "sync"),
        ("filter", "sync"),
        ("map-then-batch", "sync"),
        ("map-then-concurrent-map", "sync"),
        ("buffered-map", "sync"),
        ("flat_map", "sync"),
        *[(name, "async") for name in STOPPING_PIPELINES],
    ],
)
async def test_a_stage_function_raising_stop_iteration_fails_the_run(
    name: str, source_kind: str, consumer: str
) -> None:
    """StopIteration from a stage function is an error like any other: it must not be
    mistaken for the end of the stream (which would silently drop items 2 and 3).
    Python turns it into a RuntimeError when it leaves a coroutine, so either is fine,
    as long as it carries the original."""
    stop = StopIteration("the stage function raised StopIteration")
    source = [1, 2, 3] if source_kind == "sync" else AsyncTracked([1, 2, 3])
    pipeline = STOPPING_PIPELINES[name](source, stopping_at_two(stop))
    with anyio.fail_after(5), pytest.raises((StopIteration, RuntimeError)) as caught:
        await _consume(pipeline, consumer)
    if caught.value is stop or caught.value.__cause__ is stop:
        return
    # Inside a fused builtin map/filter the StopIteration itself is swallowed by `map`;
    # the engine notices the source had not ended and says what happened instead.
    assert isinstance(caught.value, RuntimeError)
    assert "raised StopIteration" in str(caught.value)

"""Iterator ownership, as a table: every stage shape x iterator kind x ending x consumer.

The contract under test:

* Each stage closes what it reads - its upstream, and every iterator a ``flat_map``
  function returns - exactly once, on every exit: exhaustion, consumer close, read
  failure, stage failure, cancellation.
* A failing close never replaces a read or stage failure: the consumer gets the read or
  stage exception object itself (never a wrapper or an ExceptionGroup).
* If nothing else failed, the close failure is what the consumer sees: from collect, from
  the end of ``async for``, from ``aclose()`` of an abandoned iterator, from the exit of
  ``stream()``.
* Cancellation from outside is absorbed by the scope that cancelled; nothing leaks.
* No combination hangs (every case runs under ``anyio.fail_after``).

Each row builds one pipeline over an instrumented source, consumes it in one way, and
then checks: every iterator the pipeline opened (the source and each expansion created)
was closed exactly once, no stage call is still in flight, and the consumer saw exactly
the expected exception. Rows that make no sense are dropped by :func:`sensible`, which
says why.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _lifecycle_support import AsyncSource, Calls, Errors, Source, settle
from flowlet import Pipeline, pipe
from support import CloseError, ReadError, StageError

N = 8
"""Items in a finite source."""

DRAIN_FAIL_FROM = 2
"""Draining consumers: failures hit items >= 2 (some items are delivered first)."""

ABANDON_FAIL_FROM = 0
"""Abandoning consumers take one item: failures hit every item, so the first pull fails
deterministically (a later failure may or may not be reached before the close)."""

ROW_HANG_GUARD = 3
"""Seconds before a row counts as hung (rows take milliseconds)."""

DEADLINE = 0.02
"""move_on_after endings: seconds before the deadline (the source is infinite then)."""


# -- stage shapes --------------------------------------------------------------------------


def _plus(item: int) -> int:
    return item + 100


def _even(item: int) -> bool:
    return item % 2 == 0


@dataclass(frozen=True)
class Shape:
    name: str
    build: Callable[[Pipeline[int], Calls], Pipeline[Any]]
    expected: Callable[[list[int]], list[Any]]
    has_function: bool = True
    flat: bool = False
    exact_order: bool = True
    """Outputs come in a fixed order (inline or ordered stages)."""
    decoupled: bool = False
    """Has worker tasks, which may run ahead of (and fail before) the consumer's pulls."""

    def __str__(self) -> str:
        return self.name


def _flat(items: list[int]) -> list[int]:
    return [10 * item + i for item in items for i in range(2)]


def _batches(items: list[int]) -> list[list[int]]:
    return [items[i : i + 2] for i in range(0, len(items), 2)]


SHAPES = [
    Shape("plain", lambda p, c: p, lambda xs: xs, has_function=False),
    # concurrency 1: inline, in lockstep
    Shape("map-sync", lambda p, c: p.map(c.sync(_plus)), lambda xs: [_plus(x) for x in xs]),
    Shape("map-async", lambda p, c: p.map(c.async_(_plus)), lambda xs: [_plus(x) for x in xs]),
    Shape("filter-sync", lambda p, c: p.filter(c.sync(_even)), lambda xs: list(filter(_even, xs))),
    Shape(
        "filter-async", lambda p, c: p.filter(c.async_(_even)), lambda xs: list(filter(_even, xs))
    ),
    Shape("flat_map-sync", lambda p, c: p.flat_map(c.sync(c.expand)), _flat, flat=True),
    Shape("flat_map-async", lambda p, c: p.flat_map(c.async_(c.expand)), _flat, flat=True),
    Shape("batch2", lambda p, c: p.batch(2), _batches, has_function=False),
    # decoupled: worker tasks and an outbox
    Shape(
        "map-c2",
        lambda p, c: p.map(c.async_(_plus), concurrency=2),
        lambda xs: [_plus(x) for x in xs],
        exact_order=False,
        decoupled=True,
    ),
    Shape(
        "filter-c2",
        lambda p, c: p.filter(c.async_(_even), concurrency=2),
        lambda xs: list(filter(_even, xs)),
        exact_order=False,
        decoupled=True,
    ),
    Shape(
        "flat_map-c2",
        lambda p, c: p.flat_map(c.async_(c.expand), concurrency=2),
        _flat,
        flat=True,
        exact_order=False,
        decoupled=True,
    ),
    Shape(
        "map-sync-buffer1",
        lambda p, c: p.map(c.sync(_plus), buffer=1),
        lambda xs: [_plus(x) for x in xs],
        decoupled=True,
    ),
    Shape(
        "map-c2-ordered",
        lambda p, c: p.map(c.async_(_plus), concurrency=2, ordered=True),
        lambda xs: [_plus(x) for x in xs],
        decoupled=True,
    ),
    Shape(
        "filter-c2-ordered",
        lambda p, c: p.filter(c.async_(_even), concurrency=2, ordered=True),
        lambda xs: list(filter(_even, xs)),
        decoupled=True,
    ),
    Shape(
        "flat_map-c2-ordered",
        lambda p, c: p.flat_map(c.async_(c.expand), concurrency=2, ordered=True),
        _flat,
        flat=True,
        decoupled=True,
    ),
    Shape(
        "map-c2-then-filter-c2",
        lambda p, c: p.map(c.async_(_plus), concurrency=2).filter(c.async_(_even), concurrency=2),
        lambda xs: [_plus(x) for x in xs if _even(x)],
        exact_order=False,
        decoupled=True,
    ),
]


# -- endings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    failure: str | None = None
    """What fails first: "read" (the source), "stage" (the function), "expansion_read"."""
    close_fails: str | None = None
    """Whose close also fails: "source" or "expansion"."""
    cancel: str | None = None
    """How an outer scope cancels the consumer: "from_source" (the source cancels it when
    reading item 1), "from_body" (the consumer's loop body), "deadline" (move_on_after)."""

    def __str__(self) -> str:
        if self.cancel:
            return f"cancel_{self.cancel}"
        parts = [f"{self.failure}_fails"] if self.failure else []
        if self.close_fails:
            parts.append(f"{self.close_fails}_close_fails")
        return "+".join(parts) or "exhausted"

    @property
    def expected(self) -> str | None:
        """Which exception the consumer must see: a read or stage failure wins over a
        close failure; a close failure is seen when it is the only one."""
        if self.failure == "expansion_read":
            return "read"
        if self.failure is not None:
            return self.failure
        if self.close_fails is not None:
            return "close"
        return None


ENDINGS = [
    Ending(failure, close)
    for failure, close in itertools.product(
        [None, "read", "stage", "expansion_read"], [None, "source", "expansion"]
    )
    # An expansion whose close fails stops the run when the first expansion is exhausted,
    # before a later source or stage failure could happen: only pair it with a failure of
    # the same expansion.
    if close != "expansion" or failure in (None, "expansion_read")
] + [Ending(cancel=how) for how in ("from_source", "from_body", "deadline")]


# -- consumers -----------------------------------------------------------------------------


@dataclass
class Context:
    got: list[Any] = field(default_factory=list)
    body: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
    step: str = "pull"
    """What an abandoning consumer was doing: "pull", or "close" (aclose() or the exit of
    the stream() block) once it had its item."""


async def _nothing() -> None:
    return None


async def by_collect(p: Pipeline[Any], ctx: Context) -> None:
    ctx.got.extend(await p.collect())


async def by_async_for(p: Pipeline[Any], ctx: Context) -> None:
    async for item in p:
        ctx.got.append(item)
        await ctx.body()


async def by_stream(p: Pipeline[Any], ctx: Context) -> None:
    async with p.stream() as items:
        async for item in items:
            ctx.got.append(item)
            await ctx.body()


async def by_aclose(p: Pipeline[Any], ctx: Context) -> None:
    iterator: Any = aiter(p)
    try:
        ctx.got.append(await anext(iterator))
    except BaseException:
        await iterator.aclose()
        raise
    ctx.step = "close"
    await iterator.aclose()


async def by_break_and_drop(p: Pipeline[Any], ctx: Context) -> None:
    async for item in p:
        ctx.got.append(item)
        break


async def by_stream_break(p: Pipeline[Any], ctx: Context) -> None:
    async with p.stream() as items:
        async for item in items:
            ctx.got.append(item)
            ctx.step = "close"
            break


@dataclass(frozen=True)
class Consumer:
    name: str
    run: Callable[[Pipeline[Any], Context], Awaitable[None]]
    drains: bool
    """Reads to the end (else: takes one item and leaves)."""
    has_body: bool = True
    left_to_gc: bool = False
    """Leaves the iterator to the event loop's finaliser (no explicit close)."""
    bare_async_for: bool = False
    """An exception escaping the loop body leaves the iterator to the finaliser."""

    def __str__(self) -> str:
        return self.name


CONSUMERS = [
    Consumer("collect", by_collect, drains=True, has_body=False),
    Consumer("async_for", by_async_for, drains=True, bare_async_for=True),
    Consumer("stream", by_stream, drains=True),
    Consumer("take1_aclose", by_aclose, drains=False),
    Consumer("take1_break_gc", by_break_and_drop, drains=False, left_to_gc=True),
    Consumer("stream_take1", by_stream_break, drains=False),
]


# -- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    shape: Shape
    source: str
    expansion: str | None
    ending: Ending
    consumer: Consumer

    def __str__(self) -> str:
        source = f"{self.source}-src" + (f"-{self.expansion}-exp" if self.expansion else "")
        return f"{self.shape}/{source}/{self.ending}/{self.consumer}"


def sensible(case: Case) -> bool:
    shape, ending, consumer = case.shape, case.ending, case.consumer
    if (case.expansion is not None) != shape.flat:
        return False  # expansion kinds are a dimension of flat_map shapes only
    if ending.failure == "stage" and not shape.has_function:
        return False  # no stage function to fail
    if "expansion" in f"{ending.failure}{ending.close_fails}" and not shape.flat:
        return False  # no expansions
    if ending.cancel is not None:
        # Cancellation is its own way out: combine it with the draining consumers only
        # (they run until the scope cancels them), and from_body needs a loop body.
        return consumer.drains and (ending.cancel != "from_body" or consumer.has_body)
    # A close failing in the event loop's finaliser (after a plain break) has nobody to
    # go to; with a failure at the first pull the close happens before the break.
    return not (consumer.left_to_gc and ending.failure is None and ending.close_fails)


CASES = [
    case
    for case in itertools.starmap(
        Case,
        itertools.product(SHAPES, ["sync", "async"], [None, "sync", "async"], ENDINGS, CONSUMERS),
    )
    if sensible(case)
]


# -- running one row -----------------------------------------------------------------------


@dataclass
class Outcome:
    caught: BaseException | None
    ctx: Context
    scope: anyio.CancelScope
    source: Source | AsyncSource
    calls: Calls
    errors: Errors


async def run_case(case: Case) -> Outcome:
    ending, consumer = case.ending, case.consumer
    fail_from = DRAIN_FAIL_FROM if consumer.drains else ABANDON_FAIL_FROM
    errors: Errors = []
    scope = anyio.CancelScope() if ending.cancel != "deadline" else anyio.move_on_after(DEADLINE)

    def cancel_at_read_1(index: int) -> None:
        if index == 1:
            scope.cancel()

    kind = Source if case.source == "sync" else AsyncSource
    source = kind(
        itertools.cycle(range(N)) if ending.cancel else range(N),
        fail_at=fail_from if ending.failure == "read" else None,
        fail_close=ending.close_fails == "source",
        errors=errors,
        on_read=cancel_at_read_1 if ending.cancel == "from_source" else None,
    )
    calls = Calls(
        errors=errors,
        fail_from=fail_from if ending.failure == "stage" else None,
        expansion_kind=case.expansion or "sync",
        expansion_fail_from=fail_from if ending.failure == "expansion_read" else None,
        expansion_fail_at=1 if consumer.drains else 0,
        expansion_fail_close_from=fail_from if ending.close_fails == "expansion" else None,
    )
    pipeline = case.shape.build(pipe(source), calls)

    async def cancel_in_body() -> None:
        scope.cancel()
        await anyio.lowlevel.checkpoint()

    ctx = Context(body=cancel_in_body if ending.cancel == "from_body" else _nothing)
    caught: BaseException | None = None
    # The contract makes cleanup deterministic everywhere except where the iterator is
    # left to the event loop: after a plain break, and after an exception (here the
    # cancellation) escaped the loop body of a bare `async for`.
    settled = consumer.left_to_gc or (ending.cancel == "from_body" and consumer.bare_async_for)
    with scope:
        try:
            await consumer.run(pipeline, ctx)
        except Exception as exc:
            caught = exc
    if settled:
        opened = [source, *calls.expansions]
        await settle(lambda: all(it.closes for it in opened) and not calls.in_flight, generation=1)
    return Outcome(caught, ctx, scope, source, calls, errors)


def verify(case: Case, outcome: Outcome) -> None:
    source, calls = outcome.source, outcome.calls
    assert source.opened
    assert source.closes == 1, "the source"
    assert [e.closes for e in calls.expansions] == [1] * len(calls.expansions), "expansions"
    assert calls.in_flight == 0, "stage calls still in flight"

    expected = case.ending.expected
    if expected is None:
        assert outcome.caught is None
    else:
        expected_type = {"read": ReadError, "stage": StageError, "close": CloseError}[expected]
        assert type(outcome.caught) is expected_type, repr(outcome.caught)
        raised = [exc for what, exc in outcome.errors if what == expected]
        assert any(outcome.caught is exc for exc in raised), "not the object that was raised"
        if expected == "close" and not case.consumer.drains and not case.shape.decoupled:
            # Nothing runs ahead of an inline pipeline: the close reports it.
            assert outcome.ctx.step == "close"

    if case.ending.cancel is not None:
        assert outcome.scope.cancelled_caught
    elif expected is None:
        got, want = outcome.ctx.got, case.shape.expected(list(range(N)))
        if not case.consumer.drains:
            assert len(got) == 1
            assert got[0] in want
        elif case.shape.exact_order:
            assert got == want
        else:
            assert sorted(got) == sorted(want)


KNOWN_BUGS: list[tuple[Callable[[Case], bool], str]] = []
"""(rows it matches, reason): rows showing a known engine bug, run as a strict xfail
group of their own. Fixed so far: async for over two decoupled stages raised
RuntimeError("the pipeline was stopped before it finished") instead of the source's
close failure (fixed in b2288e9)."""


def _known_bug(case: Case) -> str | None:
    return next((reason for matches, reason in KNOWN_BUGS if matches(case)), None)


# One test per (shape, expansion kind, ending); it runs the rows for both source kinds
# and every consumer, and reports every failing row. (A test per row would make this file
# take minutes: thousands of pytest items, each paying for an event loop and a full
# garbage collection.)
# Rows that show a known engine bug form a group of their own, marked xfail.
GROUPS: dict[tuple[Shape, str | None, Ending, str | None], list[Case]] = {}
for _case in CASES:
    _key = (_case.shape, _case.expansion, _case.ending, _known_bug(_case))
    GROUPS.setdefault(_key, []).append(_case)


def _group(key: tuple[Shape, str | None, Ending, str | None], rows: list[Case]) -> Any:
    shape, expansion, ending, bug = key
    name = f"{shape}{f'-{expansion}-exp' if expansion else ''}/{ending}"
    if bug is None:
        return pytest.param(rows, id=name)
    marks = pytest.mark.xfail(strict=True, reason=bug)
    return pytest.param(rows, id=f"{name}/known-bug", marks=marks)


@pytest.mark.parametrize("rows", [_group(key, rows) for key, rows in GROUPS.items()])
async def test_every_opened_iterator_is_closed_once_and_the_right_error_wins(
    rows: list[Case],
) -> None:
    failures = []
    opened: list[tuple[Case, Source | AsyncSource]] = []
    for case in rows:
        try:
            with anyio.fail_after(ROW_HANG_GUARD):
                outcome = await run_case(case)
            opened += [(case, it) for it in (outcome.source, *outcome.calls.expansions)]
            verify(case, outcome)
        except Exception as exc:
            failures.append(f"{case}: {type(exc).__name__}: {exc}")
    # Rows settle with a cheap collection of young objects; a full one now must not
    # finalise anything that closes an iterator a second time.
    await settle(lambda: False, rounds=5)
    failures += [f"{case}: closed again later" for case, it in opened if it.closes > 1]
    assert not failures, "\n".join(failures)


def test_the_table_covers_every_dimension() -> None:
    """Guards the filter: a typo in :func:`sensible` must not silently drop a dimension."""
    seen = {
        (str(case.shape), case.source, case.expansion, str(case.ending), str(case.consumer))
        for case in CASES
    }
    for dimension in range(5):
        values = {row[dimension] for row in seen}
        assert len(values) > 1
    assert {str(s) for s in SHAPES} == {row[0] for row in seen}
    assert {str(e) for e in ENDINGS} == {row[3] for row in seen}
    assert {str(c) for c in CONSUMERS} == {row[4] for row in seen}
    assert len(CASES) == len({str(case) for case in CASES})

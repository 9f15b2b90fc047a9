"""Stage functions as the engine calls them, and the checks made on their results."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio

from .._errors import STOPS, awaitable_error, is_awaitable_result, stop_error

Fn = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Call:
    """A stage function and what its result means.

    ``verdict`` calls (a filter's) decide whether the item goes on; the others' results
    go on in its place (or, for ``flat_map``, are expanded). ``awaits``: calling ``fn``
    returns an awaitable, decided once when the stage is built. ``name`` is the stage
    as messages show it (``map(fetch)``).
    """

    fn: Fn
    name: str
    awaits: bool = False
    verdict: bool = False
    timeout: float | None = None
    """Seconds each await of the call's own code may take (the call, and each read of
    an async expansion it returns); ``fn`` is already wrapped for the call."""


def timed_out(name: str, seconds: float) -> TimeoutError:
    return TimeoutError(f"{name} took longer than its timeout of {seconds:g} s")


def with_timeout(fn: Fn, seconds: float, name: str) -> Fn:
    """The async ``fn``, cancelled and failing with :func:`timed_out` once it has run
    ``seconds`` (on the event loop's clock). A TimeoutError that ``fn`` raises itself
    goes on as it is."""

    async def timed(item: Any) -> Any:
        with anyio.CancelScope(deadline=anyio.current_time() + seconds):
            return await fn(item)
        raise timed_out(name, seconds)  # only reached when the deadline cancelled it

    return timed


class TimedExpansion:
    """An async expansion whose every read must finish within ``seconds``. (Cancelling
    the read ends the expansion; that is fine here: the run fails at once.)"""

    __slots__ = ("_expansion", "_name", "_seconds")

    def __init__(self, expansion: AsyncIterator[Any], seconds: float, name: str) -> None:
        self._expansion = expansion
        self._seconds = seconds
        self._name = name

    def __aiter__(self) -> TimedExpansion:
        return self

    async def __anext__(self) -> Any:
        with anyio.CancelScope(deadline=anyio.current_time() + self._seconds):
            return await self._expansion.__anext__()
        raise timed_out(self._name, self._seconds)

    async def aclose(self) -> None:
        aclose = getattr(self._expansion, "aclose", None)
        if aclose is not None:
            await aclose()


def checked_first_call(call: Call) -> Fn:
    """``call.fn``, failing clearly if it returns an awaitable or raises StopIteration.

    Whether a function is async is decided when the stage is built, from ``async def``.
    A plain function that returns a coroutine (``lambda url: fetch(url)``) would
    otherwise send unawaited coroutines downstream; checking its first result catches
    that at the first item without a per-item cost.
    """
    fn = call.fn

    def first_call(item: Any) -> Any:
        try:
            result = fn(item)
        except STOPS as exc:  # would end only the first-item segment of a chain
            raise stop_error(exc, call.name) from exc
        if is_awaitable_result(result):
            reject_awaitable(result, call.name)
        return result

    return first_call


class FirstChecked:
    """``fn``, whose first result is checked as :func:`checked_first_call` does, for
    the C iterators (``takewhile``, ``accumulate``...) that hold on to one callable:
    it costs a Python call per item, where :func:`checked_first_call` costs nothing."""

    __slots__ = ("_checked", "_fn", "_name")

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self._fn = fn
        self._name = name
        self._checked = False

    def __call__(self, *args: Any) -> Any:
        result = self._fn(*args)
        if not self._checked:
            if is_awaitable_result(result):
                reject_awaitable(result, self._name)
            self._checked = True
        return result


def reject_awaitable(result: object, name: str) -> NoReturn:
    raise awaitable_error(
        result,
        name,
        "but its function is not `async def`, so flowlet calls it as a plain function. "
        "Make it async (`async def f(x): return await fetch(x)`) or pass the coroutine "
        "function itself (functools.partial works)",
    )


def over(call: Call, fn: Fn, upstream: Iterator[Any]) -> Iterator[Any]:
    """``fn`` applied to ``upstream`` as ``call`` means it: the builtin ``filter`` for a
    verdict, ``map`` otherwise (``fn`` is ``call.fn`` or a checked copy of it)."""
    return filter(fn, upstream) if call.verdict else map(fn, upstream)


SYNC_CALLS = "a sync stage function or the source"
"""Who raised, when a StopAsyncIteration comes out of a fused sync chain."""

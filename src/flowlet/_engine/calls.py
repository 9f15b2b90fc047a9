"""Stage functions as the engine calls them, and the checks made on their results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

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

"""One-stage :class:`~flowlet.Flow` builders for the ``|`` style.

    from flowlet import op, pipe

    extract = op.flat_map(find_links) | op.filter(is_internal) | op.map(normalize)
    links = await (pipe(pages) | extract).collect()

Each function takes the same arguments as the :class:`~flowlet.Pipeline` method of the
same name and returns a one-stage Flow; ``|`` composes them. The input type of a stage
comes from the function's annotation, so prefer typed ``def`` functions over lambdas
here (a type checker cannot infer a lambda's parameter type through ``|``).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, TypeGuard, overload

from typing_extensions import TypeIs

from ._flow import Flow
from ._types import T, U

__all__ = ["batch", "filter", "flat_map", "map"]


@overload
def map(
    fn: Callable[[T], Awaitable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def map(
    fn: Callable[[T], U],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
def map(
    fn: Callable[[Any], Any],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[Any, Any]:
    """A one-stage Flow: :meth:`flowlet.Pipeline.map`."""
    return Flow().map(fn, concurrency=concurrency, ordered=ordered, buffer=buffer)


@overload
def filter(
    pred: Callable[[T], TypeIs[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def filter(
    pred: Callable[[T], TypeGuard[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def filter(
    pred: Callable[[T], object],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, T]: ...
def filter(
    pred: Callable[[Any], object],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[Any, Any]:
    """A one-stage Flow: :meth:`flowlet.Pipeline.filter`."""
    return Flow().filter(pred, concurrency=concurrency, ordered=ordered, buffer=buffer)


@overload
def flat_map(
    fn: Callable[[T], Awaitable[Iterable[U]]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], Awaitable[AsyncIterable[U]]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], AsyncIterable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], Iterable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[T, U]: ...
def flat_map(
    fn: Callable[[Any], Any],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Flow[Any, Any]:
    """A one-stage Flow: :meth:`flowlet.Pipeline.flat_map`."""
    return Flow().flat_map(fn, concurrency=concurrency, ordered=ordered, buffer=buffer)


def batch(size: int, /) -> Flow[Any, list[Any]]:
    """A one-stage Flow: :meth:`flowlet.Pipeline.batch`.

    Typed ``Flow[Any, list[Any]]``: the stage has no function to take the item type
    from. Write ``Flow[int]().batch(n)`` where the element type matters.
    """
    return Flow().batch(size)

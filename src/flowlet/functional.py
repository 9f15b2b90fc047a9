"""Curried operators for a functional style.

    import flowlet.functional as F

    process = F.chain(F.map(fetch, concurrency=20), F.flat_map(links), F.filter(ok))
    items = await F.collect(process(urls))

``F.map(fn, ...)`` returns an :class:`Operator`: call it on any iterable or async
iterable to get an async iterator. ``F.chain`` composes operators left to right.
Operators take the same arguments as the :class:`~flowlet.Pipeline` methods of the
same name and run on the same engine; an operator is reusable, and each call runs
its stages afresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeGuard, TypeVar, cast, overload

from typing_extensions import TypeIs

from . import op as _op
from ._flow import Flow
from ._pipeline import pipe
from ._types import In, Out, Source, T, U

__all__ = [
    "Operator",
    "batch",
    "chain",
    "collect",
    "drain",
    "filter",
    "flat_map",
    "for_each",
    "map",
]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")
E = TypeVar("E")
G = TypeVar("G")


class Operator(Generic[In, Out]):
    """A reusable transformer from a source of ``In`` to an async iterator of ``Out``."""

    __slots__ = ("flow",)

    flow: Flow[In, Out]
    """The stages this operator applies, as a :class:`~flowlet.Flow`."""

    def __init__(self, flow: Flow[In, Out]) -> None:
        self.flow = flow

    def __call__(self, source: Source[In], /) -> AsyncIterator[Out]:
        return pipe(source).through(self.flow).__aiter__()

    def __repr__(self) -> str:
        return f"Operator({self.flow!r})"


@overload
def map(
    fn: Callable[[T], Awaitable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def map(
    fn: Callable[[T], U],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
def map(
    fn: Callable[[Any], Any],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[Any, Any]:
    """An operator applying :meth:`flowlet.Pipeline.map`."""
    return Operator(_op.map(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))


@overload
def filter(
    pred: Callable[[T], TypeIs[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def filter(
    pred: Callable[[T], TypeGuard[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def filter(
    pred: Callable[[T], object],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, T]: ...
def filter(
    pred: Callable[[Any], object],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[Any, Any]:
    """An operator applying :meth:`flowlet.Pipeline.filter`."""
    return Operator(_op.filter(pred, concurrency=concurrency, ordered=ordered, buffer=buffer))


@overload
def flat_map(
    fn: Callable[[T], Awaitable[Iterable[U]]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], Awaitable[AsyncIterable[U]]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], AsyncIterable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
@overload
def flat_map(
    fn: Callable[[T], Iterable[U]],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[T, U]: ...
def flat_map(
    fn: Callable[[Any], Any],
    /,
    *,
    concurrency: int = 1,
    ordered: bool = False,
    buffer: int | None = None,
) -> Operator[Any, Any]:
    """An operator applying :meth:`flowlet.Pipeline.flat_map`."""
    return Operator(_op.flat_map(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))


def batch(size: int, /) -> Operator[Any, list[Any]]:
    """An operator applying :meth:`flowlet.Pipeline.batch`."""
    return Operator(_op.batch(size))


@overload
def chain() -> Operator[Any, Any]: ...
@overload
def chain(op1: Operator[A, B], /) -> Operator[A, B]: ...
@overload
def chain(op1: Operator[A, B], op2: Operator[B, C], /) -> Operator[A, C]: ...
@overload
def chain(op1: Operator[A, B], op2: Operator[B, C], op3: Operator[C, D], /) -> Operator[A, D]: ...
@overload
def chain(
    op1: Operator[A, B], op2: Operator[B, C], op3: Operator[C, D], op4: Operator[D, E], /
) -> Operator[A, E]: ...
@overload
def chain(
    op1: Operator[A, B],
    op2: Operator[B, C],
    op3: Operator[C, D],
    op4: Operator[D, E],
    op5: Operator[E, G],
    /,
) -> Operator[A, G]: ...
@overload
def chain(
    op1: Operator[Any, Any],
    op2: Operator[Any, Any],
    op3: Operator[Any, Any],
    op4: Operator[Any, Any],
    op5: Operator[Any, Any],
    op6: Operator[Any, Any],
    /,
    *ops: Operator[Any, Any],
) -> Operator[Any, Any]: ...
def chain(*ops: Operator[Any, Any]) -> Operator[Any, Any]:
    """Compose operators left to right into one; ``chain()`` is the identity.

    Typed for up to five operators; longer chains type as ``Operator[Any, Any]``
    (compose named sub-chains to keep the types).
    """
    flow: Flow[Any, Any] = Flow()
    for operator in ops:
        if not isinstance(cast(object, operator), Operator):
            raise TypeError(
                f"chain() takes operators such as F.map(...), got {type(operator).__name__}"
                f" {operator!r}"
            )
        flow = flow | operator.flow
    return Operator(flow)


async def collect(source: Source[T], /) -> list[T]:
    """Read ``source`` (an iterable, async iterable, or an operator's output) to the
    end and return its items as a list."""
    return await pipe(source).collect()


async def drain(source: Source[Any], /) -> None:
    """Read ``source`` to the end, discarding its items."""
    await pipe(source).drain()


async def for_each(
    fn: Callable[[T], Awaitable[object] | object], source: Source[T], /, *, concurrency: int = 1
) -> None:
    """Call ``fn`` on every item of ``source``, up to ``concurrency`` calls at once."""
    await pipe(source).for_each(fn, concurrency=concurrency)

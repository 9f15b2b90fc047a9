"""``Flow[In, Out]``: a sourceless, immutable, reusable sequence of stages."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeGuard, overload

from typing_extensions import Self, TypeIs

from ._engine.plan import Stage
from ._operators.batch import BatchStage
from ._operators.calls import FilterStage, FlatMapStage, MapStage
from ._types import In, Out, U


class Flow(Generic[In, Out]):
    """A pipeline fragment without a source: stages to apply to any stream.

    ``Flow[int]()`` starts an empty fragment taking ``int``; each stage method returns
    a new, longer fragment (a Flow is never changed in place, so it can be shared and
    reused). Apply it with ``pipe(source).through(flow)`` or ``pipe(source) | flow``;
    compose two with ``first | second`` or ``first.through(second)``.

    The stage methods are the same as :class:`~flowlet.Pipeline`'s and take the same
    arguments; see there for what each one does.
    """

    __slots__ = ("_stages",)

    def __init__(self) -> None:
        self._stages: tuple[Stage, ...] = ()

    @classmethod
    def _of(cls, stages: tuple[Stage, ...]) -> Self:
        flow = cls()
        flow._stages = stages
        return flow

    def _then(self, *stages: Stage) -> Flow[Any, Any]:
        return Flow._of(self._stages + stages)

    @overload
    def map(
        self,
        fn: Callable[[Out], Awaitable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def map(
        self,
        fn: Callable[[Out], U],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    def map(
        self,
        fn: Callable[[Out], Any],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, Any]:
        """Add a 1 → 1 stage; see :meth:`flowlet.Pipeline.map`."""
        return self._then(MapStage(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))

    @overload
    def filter(
        self,
        pred: Callable[[Out], TypeIs[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def filter(
        self,
        pred: Callable[[Out], TypeGuard[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def filter(
        self,
        pred: Callable[[Out], object],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, Out]: ...
    def filter(
        self,
        pred: Callable[[Out], object],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, Any]:
        """Add a 1 → 0..1 stage; see :meth:`flowlet.Pipeline.filter`."""
        return self._then(
            FilterStage(pred, concurrency=concurrency, ordered=ordered, buffer=buffer)
        )

    @overload
    def flat_map(
        self,
        fn: Callable[[Out], Awaitable[Iterable[U]]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[Out], Awaitable[AsyncIterable[U]]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[Out], AsyncIterable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[Out], Iterable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, U]: ...
    def flat_map(
        self,
        fn: Callable[[Out], Any],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Flow[In, Any]:
        """Add a 1 → 0..N stage; see :meth:`flowlet.Pipeline.flat_map`."""
        return self._then(FlatMapStage(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))

    def batch(self, size: int, /) -> Flow[In, list[Out]]:
        """Group items into lists of ``size``; see :meth:`flowlet.Pipeline.batch`."""
        return self._then(BatchStage(size))

    def through(self, flow: Flow[Out, U], /) -> Flow[In, U]:
        """Append another fragment's stages: ``a.through(b)`` is ``a | b``."""
        return self._then(*stages_of(flow))

    def __or__(self, flow: Flow[Out, U], /) -> Flow[In, U]:
        return self.through(flow)

    def __repr__(self) -> str:
        return f"Flow({' | '.join(s.describe() for s in self._stages) or 'identity'})"


def stages_of(flow: object) -> tuple[Stage, ...]:
    """The stages of ``flow``, for ``through`` and ``|`` in every front end.

    :raises TypeError: ``flow`` is not a Flow (callers may not be type-checked).
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"expected a Flow, got {type(flow).__name__} {flow!r}")
    return flow._stages  # pyright: ignore[reportPrivateUsage]

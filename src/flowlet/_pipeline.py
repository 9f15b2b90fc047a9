"""``pipe(source)`` and ``Pipeline[T]``: a source plus stages, run by a terminal."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeGuard, overload

from typing_extensions import TypeIs

from ._engine import drive as _drive
from ._engine import iterate as _iterate
from ._engine.plan import Stage
from ._flow import Flow, stages_of
from ._operators.batch import BatchStage
from ._operators.calls import FilterStage, FlatMapStage, ForEachStage, MapStage
from ._types import Source, T, T_co, U
from ._validate import check_source


def pipe(source: Source[T], /) -> Pipeline[T]:
    """Start a pipeline reading ``source``, an iterable or an async iterable.

    Nothing runs yet: the source is read lazily, item by item, once a terminal
    (``collect``, ``drain``, ``for_each``) or an ``async for`` consumes the pipeline.
    Each run opens the source again, so a list can be run twice and a generator
    only once.

    :raises TypeError: ``source`` is neither iterable nor async iterable.
    """
    check_source(source)
    return Pipeline(source, ())


class Pipeline(Generic[T_co]):
    """A source and the stages that transform it; immutable and lazy.

    Each stage method returns a new pipeline. Stages at ``concurrency=1`` (the
    default) run in lockstep with the consumer: the next item is pulled from upstream
    only once the current one was passed on. A stage with ``concurrency=N`` runs up to
    N calls at once and holds at most ``concurrency + buffer`` input items ahead of its
    consumer (backpressure). See ``docs/concurrency.md``.

    Errors fail fast: the first exception (from a stage, the source, or a close that
    failed) cancels all in-flight work, every iterator the pipeline opened is closed,
    and the consumer gets that exception itself, never an ``ExceptionGroup``.
    """

    __slots__ = ("_source", "_stages")

    def __init__(self, source: Source[Any], stages: tuple[Stage, ...]) -> None:
        self._source = source
        self._stages = stages

    def _then(self, *stages: Stage) -> Pipeline[Any]:
        return Pipeline(self._source, self._stages + stages)

    # -- stages ----------------------------------------------------------------------

    @overload
    def map(
        self,
        fn: Callable[[T_co], Awaitable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def map(
        self,
        fn: Callable[[T_co], U],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    def map(
        self,
        fn: Callable[[T_co], Any],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[Any]:
        """Transform each item with ``fn`` (1 → 1). ``fn`` may be sync or ``async def``.

        :param concurrency: how many calls may run at once (an int >= 1). Calls of an
            async function overlap; a sync function runs on the event loop one call at
            a time whatever this says (wrap blocking work in :func:`in_thread`).
        :param ordered: with ``concurrency > 1``, emit results in input order instead
            of completion order. New calls keep starting while the oldest is slow,
            until ``concurrency + buffer`` inputs are in flight or waiting.
        :param buffer: how many finished results may wait for the consumer (default:
            ``2 * concurrency``); the stage then holds at most ``concurrency + buffer``
            input items. Setting it also decouples a ``concurrency=1`` stage from its
            consumer: it then works ahead by up to ``1 + buffer`` items.
        :raises ValueError: ``concurrency`` or ``buffer`` is not an int >= 1.
        :raises TypeError: ``fn`` is not callable, ``ordered`` is not a bool.
        """
        return self._then(MapStage(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))

    @overload
    def filter(
        self,
        pred: Callable[[T_co], TypeIs[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def filter(
        self,
        pred: Callable[[T_co], TypeGuard[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def filter(
        self,
        pred: Callable[[T_co], object],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[T_co]: ...
    def filter(
        self,
        pred: Callable[[T_co], object],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[Any]:
        """Keep the items for which ``pred`` (sync or async) is truthy (1 → 0..1).

        ``None`` is ordinary data: nothing is dropped unless ``pred`` says so. The
        options mean what they mean for :meth:`map`.
        """
        return self._then(
            FilterStage(pred, concurrency=concurrency, ordered=ordered, buffer=buffer)
        )

    @overload
    def flat_map(
        self,
        fn: Callable[[T_co], Awaitable[Iterable[U]]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[T_co], Awaitable[AsyncIterable[U]]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[T_co], AsyncIterable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def flat_map(
        self,
        fn: Callable[[T_co], Iterable[U]],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[U]: ...
    def flat_map(
        self,
        fn: Callable[[T_co], Any],
        /,
        *,
        concurrency: int = 1,
        ordered: bool = False,
        buffer: int | None = None,
    ) -> Pipeline[Any]:
        """Expand each item into zero or more items (1 → 0..N).

        ``fn`` may be sync, ``async def``, or an async generator function, and may
        return an iterable or an async iterable. Each expansion is streamed: its items
        flow downstream as they are produced, and it is closed as soon as it is
        exhausted or the pipeline stops. With ``concurrency > 1`` (async functions)
        several expansions run at once and their items interleave, unless ``ordered``;
        ``buffer`` bounds the items waiting for the consumer.
        """
        return self._then(FlatMapStage(fn, concurrency=concurrency, ordered=ordered, buffer=buffer))

    def batch(self, size: int, /) -> Pipeline[list[T_co]]:
        """Group items into lists of ``size`` (N → 1); the last list may be shorter.

        :raises ValueError: ``size`` is not an int >= 1.
        """
        return self._then(BatchStage(size))

    def through(self, flow: Flow[T_co, U], /) -> Pipeline[U]:
        """Apply a reusable :class:`Flow`; ``pipeline | flow`` is the same thing."""
        return self._then(*stages_of(flow))

    def __or__(self, flow: Flow[T_co, U], /) -> Pipeline[U]:
        return self.through(flow)

    # -- consuming -------------------------------------------------------------------

    async def collect(self) -> list[T_co]:
        """Run the pipeline to the end and return every output, in delivery order.

        Never returns on an infinite source: use ``async for`` or :meth:`drain` there.
        """
        out: list[Any] = []
        await _drive.execute(self._source, self._stages, _drive.Sink(out.extend, out.append))
        return out

    async def drain(self) -> None:
        """Run the pipeline to the end for its side effects, discarding the outputs."""
        await _drive.execute(self._source, self._stages, _drive.DISCARD)

    async def for_each(
        self, fn: Callable[[T_co], Awaitable[object] | object], /, *, concurrency: int = 1
    ) -> None:
        """Call ``fn`` (sync or async) on every output, up to ``concurrency`` at once,
        and return when the pipeline is exhausted and every call has finished."""
        await self._then(ForEachStage(fn, concurrency=concurrency)).drain()

    def __aiter__(self) -> AsyncGenerator[T_co, None]:  # noqa: PYI058 - has aclose()
        """Iterate with ``async for``. Breaking out of the loop, an exception in its
        body, ``aclose()`` and garbage collection all stop in-flight work and close
        the source promptly; use :meth:`stream` to make that happen deterministically
        at a point you choose."""
        return _iterate.iterate(self._source, self._stages)

    def stream(self) -> AbstractAsyncContextManager[AsyncIterator[T_co]]:
        """``async with pipeline.stream() as items: async for x in items: ...``

        Every task and iterator of the run lives inside the block: leaving it, by any
        route, cancels in-flight calls and closes the source before the block exits.
        """
        return _drive.stream(self._source, self._stages)

    if not TYPE_CHECKING:  # mistakes a type checker reports itself; say what to write

        def __iter__(self) -> NoReturn:
            raise TypeError(
                "a Pipeline is iterated asynchronously: write `async for x in pipeline` "
                "or `await pipeline.collect()`"
            )

        def __await__(self) -> NoReturn:
            raise TypeError(
                "a Pipeline is not awaitable: write `await pipeline.collect()` for its "
                "items, or `await pipeline.drain()` to run it for its side effects"
            )

    def __repr__(self) -> str:
        steps = "".join(f".{s.describe()}" for s in self._stages)
        return f"pipe({type(self._source).__name__}){steps}"

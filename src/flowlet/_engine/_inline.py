"""Inline stages: the ones that run in lockstep inside whoever pulls from them.

Two shapes:

* :class:`SyncChain` - a run of sync stages over a sync source, built from the builtin
  ``map``/``filter`` and ``itertools.islice``, so that the per-item work happens in C.
  Pulling one item pulls exactly the source items it needs, no more.
* async nodes (:class:`AsyncMap`, :class:`AsyncFilter`, :class:`AsyncFlatMap`,
  :class:`AsyncBatch`) - one small async iterator per stage, for async functions,
  async upstreams and ``flat_map`` expansions.

Ownership: a node never closes anything on its own when it fails; its owner (the next
node, a stage's workers, or the terminal) calls :meth:`aclose` exactly once on every
exit, and that closes the node's expansion and then its upstream.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import chain, islice
from typing import Any, NoReturn

from .._stages import Kind, Stage
from ._closing import close_all, close_any, close_sync

END: Any = object()
"""Returned by readers instead of raising StopIteration / StopAsyncIteration."""


class SyncChain:
    """Inline sync stages over a sync source, as one lazy iterator (:attr:`iterator`)."""

    __slots__ = ("_source", "iterator")

    def __init__(self, source: Iterator[Any]) -> None:
        self._source = source
        self.iterator: Iterator[Any] = source

    def can_take(self, stage: Stage) -> bool:
        if stage.kind is Kind.BATCH:
            return True
        return stage.kind in (Kind.MAP, Kind.FILTER) and not stage.awaits

    def take(self, stage: Stage) -> None:
        """Append ``stage`` (which :meth:`can_take`) to the chain.

        The first item goes through a checked copy of the function (see
        :func:`checked_first_call`), the rest through the function itself; both read the
        same upstream lazily, so the chain stays in lockstep.
        """
        upstream = self.iterator
        if stage.kind is Kind.BATCH:
            self.iterator = _batches(upstream, stage.size)
            return
        assert stage.fn is not None
        first: Iterator[Any]
        if stage.kind is Kind.MAP:
            first = map(checked_first_call(stage), islice(upstream, 1))
            self.iterator = chain(first, map(stage.fn, upstream))
        else:
            first = filter(checked_first_call(stage), islice(upstream, 1))
            self.iterator = chain(first, filter(stage.fn, upstream))

    def close(self) -> None:
        close_sync(self._source)

    async def aclose(self) -> None:
        self.close()


def _batches(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while True:
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        yield chunk
        if len(chunk) < size:  # the upstream is exhausted; do not ask it again
            return


def checked_first_call(stage: Stage) -> Callable[[Any], Any]:
    """``stage.fn``, failing clearly if it returns an awaitable.

    Whether a function is async is decided when the stage is built, from ``async def``.
    A plain function that returns a coroutine (``lambda url: fetch(url)``) would
    otherwise send unawaited coroutines downstream; checking its first result catches
    that at the first item without a per-item cost.
    """
    fn = stage.fn
    assert fn is not None

    def first_call(item: Any) -> Any:
        result = fn(item)
        if inspect.isawaitable(result):
            reject_awaitable(result, stage)
        return result

    return first_call


def reject_awaitable(result: object, stage: Stage) -> NoReturn:
    close = getattr(result, "close", None)
    if close is not None:
        close()  # a coroutine we will never await: no "never awaited" warning
    raise TypeError(
        f"{stage.describe()} returned {type(result).__name__} {result!r}, but its function "
        "is not `async def`, so flowlet calls it as a plain function. Make it async "
        "(`async def f(x): return await fetch(x)`) or pass the coroutine function itself "
        "(functools.partial works)"
    )


def sync_reader(chain: SyncChain) -> Callable[[], Any]:
    """``read()`` for a sync upstream: the next item, or :data:`END`."""
    iterator = chain.iterator
    return lambda: next(iterator, END)


def open_expansion(result: Any, stage: Stage) -> tuple[Any, bool]:
    """The iterator to stream from a ``flat_map`` result, and whether it is async."""
    if inspect.isawaitable(result):
        reject_awaitable(result, stage)
    if hasattr(result, "__aiter__"):
        return result.__aiter__(), True
    if hasattr(result, "__iter__"):
        return iter(result), False
    raise TypeError(
        f"{stage.describe()} must return an iterable or an async iterable, "
        f"got {type(result).__name__} {result!r}"
    )


class _Node:
    """Base of the async nodes: an async iterator that owns its upstream."""

    __slots__ = ("_ended", "_next_async", "_next_sync", "_up")

    def __init__(self, upstream: Any) -> None:
        self._up = upstream
        self._ended = False
        if isinstance(upstream, SyncChain):
            self._next_sync: Callable[[], Any] | None = sync_reader(upstream)
            self._next_async: Callable[[], Any] | None = None
        else:
            self._next_sync = None
            self._next_async = upstream.__anext__

    def __aiter__(self) -> AsyncIterator[Any]:
        return self  # type: ignore[return-value]

    async def _read(self) -> Any:
        """The next upstream item, or :data:`END` (then again :data:`END` forever)."""
        if self._ended:
            return END
        if self._next_sync is not None:
            item = self._next_sync()
            if item is END:
                self._ended = True
            return item
        assert self._next_async is not None
        try:
            return await self._next_async()
        except StopAsyncIteration:
            self._ended = True
            return END

    async def aclose(self) -> None:
        await close_any(self._up)


class AsyncMap(_Node):
    __slots__ = ("_awaits", "_fn", "_stage")

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._awaits = stage.awaits
        self._fn = stage.fn if stage.awaits else _once_then(checked_first_call(stage), self)

    def _use(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    async def __anext__(self) -> Any:
        item = await self._read()
        if item is END:
            raise StopAsyncIteration
        result = self._fn(item)  # type: ignore[misc]
        return await result if self._awaits else result


class AsyncFilter(AsyncMap):
    __slots__ = ()

    async def __anext__(self) -> Any:
        fn, awaits = self._fn, self._awaits
        while True:
            item = await self._read()
            if item is END:
                raise StopAsyncIteration
            keep = fn(item)  # type: ignore[misc]
            if await keep if awaits else keep:
                return item


class AsyncBatch(_Node):
    __slots__ = ("_size",)

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._size = stage.size

    async def __anext__(self) -> list[Any]:
        batch: list[Any] = []
        while len(batch) < self._size:
            item = await self._read()
            if item is END:
                break
            batch.append(item)
        if not batch:
            raise StopAsyncIteration
        return batch


class AsyncFlatMap(_Node):
    """Streams each expansion lazily; closes each one exactly once, when it is
    exhausted or when the node is closed."""

    __slots__ = ("_expansion", "_expansion_is_async", "_stage")

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._expansion: Any = None
        self._expansion_is_async = False

    async def __anext__(self) -> Any:
        while True:
            expansion = self._expansion
            if expansion is not None:
                if self._expansion_is_async:
                    try:
                        return await expansion.__anext__()
                    except StopAsyncIteration:
                        pass
                else:
                    item = next(expansion, END)
                    if item is not END:
                        return item
                self._expansion = None  # before closing: a failing close is not retried
                await close_any(expansion)
            item = await self._read()
            if item is END:
                raise StopAsyncIteration
            result = self._stage.fn(item)  # type: ignore[misc]
            if self._stage.awaits:
                result = await result
            self._expansion, self._expansion_is_async = open_expansion(result, self._stage)

    async def aclose(self) -> None:
        expansion, self._expansion = self._expansion, None
        await close_all(x for x in (expansion, self._up) if x is not None)


def _once_then(first: Callable[[Any], Any], node: AsyncMap) -> Callable[[Any], Any]:
    """Call ``first`` once, then make ``node`` call the stage function directly."""

    def call(item: Any) -> Any:
        node._use(node._stage.fn)  # type: ignore[arg-type]
        return first(item)

    return call


NODE_TYPES: dict[Kind, Callable[[Any, Stage], _Node]] = {
    Kind.MAP: AsyncMap,
    Kind.FILTER: AsyncFilter,
    Kind.FLAT_MAP: AsyncFlatMap,
    Kind.BATCH: AsyncBatch,
}

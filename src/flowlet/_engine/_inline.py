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

    def check_ended(self) -> None:
        """Call when :attr:`iterator` ends: raise if the source had not ended."""
        check_ended(self.iterator, self._source)

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


def check_ended(chain: Iterator[Any], source: Iterator[Any]) -> None:
    """``chain`` (builtin map/filter over ``source``) just ended: make sure ``source`` did.

    A stage function that raises StopIteration inside a builtin ``map`` looks exactly
    like the end of the stream and would silently drop the rest of it (generators and
    coroutines turn it into RuntimeError, PEP 479; ``map`` does not). Asking the source
    once more costs nothing per item and catches it.
    """
    if chain is not source and next(source, END) is not END:
        raise RuntimeError(
            "a map or filter function raised StopIteration, which would have silently "
            "ended the stream early; raise another exception instead"
        )


def sync_reader(chain: SyncChain) -> Callable[[], Any]:
    """``read()`` for a sync upstream: the next item, or :data:`END`."""
    iterator = chain.iterator

    def read() -> Any:
        item = next(iterator, END)
        if item is END:
            chain.check_ended()
        return item

    return read


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


SKIP: Any = object()
"""Returned by a node's trailing steps for an item a filter dropped."""


def compile_steps(stages: list[Stage], *, checked: bool) -> Callable[[Any], Any]:
    """One function applying trailing sync map/filter ``stages`` to an item (or SKIP).

    Composed from the last stage back, so a stage costs one call (a map that ends the
    list costs nothing but its own function). ``checked``: check each function's
    result for an awaitable (:func:`checked_first_call`), for the first item.
    """
    apply: Callable[[Any], Any] | None = None
    for stage in reversed(stages):
        fn: Callable[[Any], Any] = checked_first_call(stage) if checked else stage.fn  # type: ignore[assignment]
        apply = _map_step(fn, apply) if stage.kind is Kind.MAP else _filter_step(fn, apply)
    assert apply is not None
    return apply


def _map_step(fn: Callable[[Any], Any], then: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if then is None:
        return fn
    return lambda item: then(fn(item))


def _filter_step(
    fn: Callable[[Any], Any], then: Callable[[Any], Any] | None
) -> Callable[[Any], Any]:
    if then is None:
        return lambda item: item if fn(item) else SKIP
    return lambda item: then(item) if fn(item) else SKIP


class Node:
    """Base of the async nodes: an async iterator that owns its upstream.

    Sync map/filter stages that follow a node are absorbed into it (:meth:`absorb`) and
    applied to each item it produces, instead of costing a node each.
    """

    __slots__ = ("_ended", "_next_async", "_next_sync", "_post", "_post_stages", "_up")

    def __init__(self, upstream: Any) -> None:
        self._up = upstream
        self._ended = False
        self._post: Callable[[Any], Any] | None = None
        self._post_stages: list[Stage] = []
        if isinstance(upstream, SyncChain):
            self._next_sync: Callable[[], Any] | None = sync_reader(upstream)
            self._next_async: Callable[[], Any] | None = None
        else:
            self._next_sync = None
            self._next_async = upstream.__anext__

    def __aiter__(self) -> AsyncIterator[Any]:
        return self  # type: ignore[return-value]

    @staticmethod
    def can_absorb(stage: Stage) -> bool:
        return stage.kind in (Kind.MAP, Kind.FILTER) and not stage.awaits and not stage.decoupled

    def absorb(self, stage: Stage) -> None:
        self._post_stages.append(stage)
        checked = compile_steps(self._post_stages, checked=True)
        plain = compile_steps(self._post_stages, checked=False)

        def first(item: Any) -> Any:  # checks the first item, then steps aside
            self._post = plain
            return checked(item)

        self._post = first

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

    async def next_chunk(self) -> list[Any]:
        """Some next items, at least one; ``[]`` at the end (for bulk consumers)."""
        try:
            return [await self.__anext__()]  # type: ignore[attr-defined]
        except StopAsyncIteration:
            return []


class Passthrough(Node):
    """An async upstream as it is, plus absorbed steps (async source, sync stages)."""

    __slots__ = ()

    async def __anext__(self) -> Any:
        next_sync = self._next_sync
        while True:
            if next_sync is None:
                item = await self._next_async()  # type: ignore[misc]
            elif (item := next_sync()) is END:
                raise StopAsyncIteration
            post = self._post
            if post is None or (item := post(item)) is not SKIP:
                return item


class AsyncMap(Node):
    __slots__ = ("_awaits", "_fn", "_stage")

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._awaits = stage.awaits
        self._fn = stage.fn if stage.awaits else _once_then(checked_first_call(stage), self)

    def _use(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    async def __anext__(self) -> Any:
        next_sync, awaits = self._next_sync, self._awaits
        while True:
            if next_sync is None:
                item = await self._next_async()  # type: ignore[misc]
            elif (item := next_sync()) is END:
                raise StopAsyncIteration
            result = self._fn(item)  # type: ignore[misc]
            if awaits:
                result = await result
            post = self._post
            if post is None or (result := post(result)) is not SKIP:
                return result


class AsyncFilter(AsyncMap):
    __slots__ = ()

    async def __anext__(self) -> Any:
        next_sync, awaits = self._next_sync, self._awaits
        while True:
            if next_sync is None:
                item = await self._next_async()  # type: ignore[misc]
            elif (item := next_sync()) is END:
                raise StopAsyncIteration
            keep = self._fn(item)  # type: ignore[misc]
            if awaits:
                keep = await keep
            if not keep:
                continue
            post = self._post
            if post is None or (item := post(item)) is not SKIP:
                return item


class AsyncBatch(Node):
    __slots__ = ("_size",)

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._size = stage.size

    async def __anext__(self) -> Any:
        post = self._post
        while True:
            batch: list[Any] = []
            while len(batch) < self._size:
                item = await self._read()
                if item is END:
                    break
                batch.append(item)
            if not batch:
                raise StopAsyncIteration
            if post is None:
                return batch
            if (result := post(batch)) is not SKIP:
                return result


class AsyncFlatMap(Node):
    """Streams each expansion lazily; closes each one exactly once, when it is
    exhausted or when the node is closed. Absorbed steps run inside sync expansions
    as builtin map/filter, so they cost no extra call per item."""

    __slots__ = ("_checked", "_expansion", "_expansion_is_async", "_source", "_stage")

    CHUNK = 1024  # items a bulk consumer takes from a sync expansion at once

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._expansion: Any = None  # what we read: the expansion, or a chain over it
        self._source: Any = None  # the expansion itself: what we close
        self._expansion_is_async = False
        self._checked = False  # have the absorbed steps had their first-call check?

    async def __anext__(self) -> Any:
        while True:
            expansion = self._expansion
            if expansion is not None:
                if self._expansion_is_async:
                    post = self._post
                    try:
                        while True:
                            item = await expansion.__anext__()
                            if post is None or (item := post(item)) is not SKIP:
                                return item
                    except StopAsyncIteration:
                        pass
                else:
                    item = next(expansion, END)
                    if item is not END:
                        return item
                    check_ended(expansion, self._source)
                source, self._expansion, self._source = self._source, None, None
                await close_any(source)  # fields cleared first: a failing close is not retried
            item = await self._read()
            if item is END:
                raise StopAsyncIteration
            result = self._stage.fn(item)  # type: ignore[misc]
            if self._stage.awaits:
                result = await result
            self._open(result)

    async def next_chunk(self) -> list[Any]:
        # Bulk path for terminals: a sync expansion is taken a chunk at a time, in C.
        while True:
            expansion = self._expansion
            if expansion is None or self._expansion_is_async:
                return await super().next_chunk()
            chunk: list[Any] = list(islice(expansion, self.CHUNK))
            if chunk:
                return chunk
            check_ended(expansion, self._source)
            source, self._expansion, self._source = self._source, None, None
            await close_any(source)
            item = await self._read()
            if item is END:
                return []
            result = self._stage.fn(item)  # type: ignore[misc]
            if self._stage.awaits:
                result = await result
            self._open(result)

    def _open(self, result: Any) -> None:
        source, is_async = open_expansion(result, self._stage)
        self._source, self._expansion_is_async = source, is_async
        self._expansion = source
        if is_async or not self._post_stages:
            return
        if not self._checked:  # the first expansion goes through the checked chain
            self._checked = True
            chain = SyncChain(source)
            for stage in self._post_stages:
                chain.take(stage)
            self._expansion = chain.iterator
            return
        for stage in self._post_stages:
            fn: Callable[[Any], Any] = stage.fn  # type: ignore[assignment]
            apply = map if stage.kind is Kind.MAP else filter
            self._expansion = apply(fn, self._expansion)

    async def aclose(self) -> None:
        source, self._expansion, self._source = self._source, None, None
        await close_all(x for x in (source, self._up) if x is not None)


def _once_then(first: Callable[[Any], Any], node: AsyncMap) -> Callable[[Any], Any]:
    """Call ``first`` once, then make ``node`` call the stage function directly."""

    def call(item: Any) -> Any:
        node._use(node._stage.fn)  # type: ignore[arg-type]
        return first(item)

    return call


NODE_TYPES: dict[Kind, Callable[[Any, Stage], Node]] = {
    Kind.MAP: AsyncMap,
    Kind.FILTER: AsyncFilter,
    Kind.FLAT_MAP: AsyncFlatMap,
    Kind.BATCH: AsyncBatch,
}

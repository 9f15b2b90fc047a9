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
import time
from collections.abc import AsyncIterator, Callable, Iterator
from itertools import chain, islice
from typing import Any, NoReturn

from .._backend import current_backend
from .._stages import Kind, Stage
from ._closing import close_all, close_any, close_sync

END: Any = object()
"""Returned by readers instead of raising StopIteration / StopAsyncIteration."""

PACE_INTERVAL = 0.002
"""Seconds a loop that never suspends may keep the event loop to itself (about)."""


PAUSE: Any = object()
"""Returned by :func:`sync_reader` when a sync chain asks its reader to let the event
loop run before reading on (see :class:`Probe`)."""


class Pause(Exception):
    """Raised through a :class:`SyncChain` when it has run for a pacing interval."""


class Pacer:
    """Says when a loop that may never suspend on its own (an async iterator over a sync
    source, a filter dropping a long run of items) should let the event loop run:
    about every :data:`PACE_INTERVAL`.

    Reading the clock per item would cost more than a fast stage, so callers count
    items down from :attr:`countdown` and call :meth:`expired` when it reaches zero.
    The count adapts to the item rate, aiming at a few clock reads per interval: slow
    items (a sync function taking milliseconds) are checked one by one, fast ones in
    runs of up to a thousand.
    """

    __slots__ = ("_checked", "_deadline", "_every", "countdown")

    def __init__(self) -> None:
        self._every = self.countdown = 1  # grows fast for fast items
        self._checked = time.perf_counter()
        self._deadline = self._checked + PACE_INTERVAL

    def tick(self) -> bool:
        """Count one item; True when the caller should let the event loop run now."""
        self.countdown -= 1
        return not self.countdown and self.expired()

    def expired(self) -> bool:
        """The countdown reached zero: reload it; True if the interval has passed."""
        now = time.perf_counter()
        elapsed, self._checked = now - self._checked, now
        if elapsed > PACE_INTERVAL / 4 and self._every > 1:
            self._every //= 2
        elif elapsed < PACE_INTERVAL / 16 and self._every < 1024:
            self._every *= 2
        self.countdown = self._every
        if now < self._deadline:
            return False
        self._deadline = now + PACE_INTERVAL
        return True


class Probe:
    """The bottom of a :class:`SyncChain`: reads the source in windows, with a look at
    the clock and at the source's end between two windows.

    The chain reads ``chain.from_iterable([islice(source, n), probe, islice(source, n),
    probe, ...])``: items flow through C code, and once per window the probe (Python)
    delivers one item itself. On the way it does two jobs the builtin ``map`` and
    ``filter`` above cannot:

    * pacing - a filter that drops a long run of items (or a big batch) pulls many
      source items for one output. Once :data:`PACE_INTERVAL` has passed, the probe
      raises :class:`Pause` up through the chain; ``chain``, ``map`` and ``filter`` let
      an exception through and carry on when called again, so whoever reads the chain
      catches it, lets the event loop run, and reads on. Window sizes adapt (see
      :class:`Pacer`) so slow stages are looked at item by item;
    * StopIteration - a map or filter function raising StopIteration looks like the end
      of the stream to ``map``; :attr:`ended` tells the real end from that.
    """

    __slots__ = ("_next", "_pacer", "_spent", "ended")

    def __init__(self, source: Iterator[Any]) -> None:
        self._next = source.__next__
        self._pacer = Pacer()
        self._spent = True
        self.ended = False

    @property
    def window(self) -> int:
        return self._pacer.countdown

    def __iter__(self) -> Probe:
        self._spent = False  # each appearance between two windows delivers one item
        return self

    def __next__(self) -> Any:
        if self._spent:
            raise StopIteration
        if self._pacer.expired():
            raise Pause  # nothing read: the next call reads the item
        self._spent = True
        try:
            return self._next()
        except StopIteration:
            self.ended = True
            raise


def _windows(source: Iterator[Any], probe: Probe) -> Iterator[Iterator[Any]]:
    while not probe.ended:
        yield islice(source, probe.window)
        yield probe


async def let_loop_run() -> None:
    """A checkpoint for the rare pauses of inline nodes (every PACE_INTERVAL at most)."""
    await current_backend().checkpoint()


class SyncChain:
    """Inline sync stages over a sync source, as one lazy iterator (:attr:`iterator`).

    Built from builtins so that the per-item work runs in C: ``map``/``filter`` per
    stage, over the source read in windows (see :class:`Probe`). The first item of each stage goes
    through a checked copy of its function (:func:`checked_first_call`), the rest
    through the function itself; both read the same upstream lazily, so the chain
    stays in lockstep.

    Reading :attr:`iterator` may raise :class:`Pause` (let the event loop run, then read
    again); when it ends, call :meth:`check_ended`.
    """

    __slots__ = ("_iterator", "_probe", "_source", "_stages")

    def __init__(self, source: Iterator[Any]) -> None:
        self._source = source
        self._stages: list[Stage] = []
        self._iterator: Iterator[Any] | None = None
        self._probe: Probe | None = None

    def can_take(self, stage: Stage) -> bool:
        if self._iterator is not None:
            return False  # already being read
        if stage.kind is Kind.BATCH:
            return True
        return stage.kind in (Kind.MAP, Kind.FILTER) and not stage.awaits

    def take(self, stage: Stage) -> None:
        """Append ``stage`` (which :meth:`can_take`) to the chain."""
        self._stages.append(stage)

    @property
    def iterator(self) -> Iterator[Any]:
        """The chain, built at first use."""
        if self._iterator is None:
            self._iterator = self._build()
        return self._iterator

    def _build(self) -> Iterator[Any]:
        if not self._stages:
            return self._source
        self._probe = Probe(self._source)
        iterator: Iterator[Any] = chain.from_iterable(_windows(self._source, self._probe))
        for stage in self._stages:
            iterator = _apply(stage, iterator)
        return iterator

    def check_ended(self) -> None:
        """Call when :attr:`iterator` ended: raise if a stage function raised
        StopIteration (generators and coroutines turn that into RuntimeError, PEP 479;
        the builtin ``map`` does not, and would silently end the stream instead)."""
        if self._probe is not None and not self._probe.ended:
            raise RuntimeError(
                "a map or filter function raised StopIteration, which would have silently "
                "ended the stream early; raise another exception instead"
            )

    def close(self) -> None:
        close_sync(self._source)

    async def aclose(self) -> None:
        self.close()


def _apply(stage: Stage, upstream: Iterator[Any]) -> Iterator[Any]:
    if stage.kind is Kind.BATCH:
        return Batches(upstream, stage.size)
    assert stage.fn is not None
    if stage.kind is Kind.MAP:
        return chain(map(checked_first_call(stage), islice(upstream, 1)), map(stage.fn, upstream))
    return chain(filter(checked_first_call(stage), islice(upstream, 1)), filter(stage.fn, upstream))


class Batches:
    """``batch(size)`` over a sync iterator. A class rather than a generator so that a
    :class:`Pause` from below leaves the batch being filled intact."""

    __slots__ = ("_chunk", "_done", "_iterator", "_size")

    def __init__(self, iterator: Iterator[Any], size: int) -> None:
        self._iterator = iterator
        self._size = size
        self._chunk: list[Any] = []
        self._done = False

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> list[Any]:
        if self._done:
            raise StopIteration
        chunk = self._chunk
        chunk.extend(islice(self._iterator, self._size - len(chunk)))  # keeps what it got
        if len(chunk) < self._size:
            self._done = True  # the upstream ended; do not ask it again
            if not chunk:
                raise StopIteration
        self._chunk = []
        return chunk


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
        try:
            result = fn(item)
        except StopIteration as exc:  # would end only the first-item segment of the chain
            raise RuntimeError(f"{stage.describe()} raised StopIteration") from exc
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
    """``read()`` for a sync upstream: the next item, :data:`END`, or :data:`PAUSE`
    (let the event loop run, then read again)."""
    iterator = chain.iterator
    failed = False

    def read() -> Any:
        nonlocal failed
        if failed:  # the run is failing: other workers must not read a broken source
            return END
        try:
            item = next(iterator, END)
        except Pause:
            return PAUSE
        except BaseException:
            failed = True
            raise
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

    __slots__ = ("_drops", "_ended", "_next_async", "_next_sync", "_post", "_post_stages", "_up")

    def __init__(self, upstream: Any) -> None:
        self._up = upstream
        self._ended = False
        self._drops = Pacer()  # paces loops that drop items (and so never return)
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

    async def _dropped(self) -> None:
        """An item was filtered out: the loop goes on without returning; pace it."""
        if self._drops.tick():
            await let_loop_run()

    async def _read(self) -> Any:
        """The next upstream item, or :data:`END` (then again :data:`END` forever)."""
        if self._ended:
            return END
        if self._next_sync is not None:
            while (item := self._next_sync()) is PAUSE:
                await let_loop_run()
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
            elif item is PAUSE:
                await let_loop_run()
                continue
            post = self._post
            if post is None or (item := post(item)) is not SKIP:
                return item
            await self._dropped()


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
            elif item is PAUSE:
                await let_loop_run()
                continue
            result = self._fn(item)  # type: ignore[misc]
            if awaits:
                result = await result
            post = self._post
            if post is None or (result := post(result)) is not SKIP:
                return result
            await self._dropped()


class AsyncFilter(AsyncMap):
    __slots__ = ()

    async def __anext__(self) -> Any:
        next_sync, awaits = self._next_sync, self._awaits
        while True:
            if next_sync is None:
                item = await self._next_async()  # type: ignore[misc]
            elif (item := next_sync()) is END:
                raise StopAsyncIteration
            elif item is PAUSE:
                await let_loop_run()
                continue
            keep = self._fn(item)  # type: ignore[misc]
            if awaits:
                keep = await keep
            if keep:
                post = self._post
                if post is None or (item := post(item)) is not SKIP:
                    return item
            await self._dropped()


class AsyncBatch(Node):
    __slots__ = ("_size",)

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._size = stage.size

    async def __anext__(self) -> Any:
        while True:
            batch: list[Any] = []
            while len(batch) < self._size:
                item = await self._read()
                if item is END:
                    break
                batch.append(item)
            if not batch:
                raise StopAsyncIteration
            post = self._post
            if post is None:
                return batch
            if (result := post(batch)) is not SKIP:
                return result
            await self._dropped()


class AsyncFlatMap(Node):
    """Streams each expansion lazily; closes each one exactly once, when it is
    exhausted or when the node is closed. Absorbed steps run inside sync expansions
    as a :class:`SyncChain` (builtin map/filter), costing no extra call per item."""

    __slots__ = ("_chain", "_expansion", "_expansion_is_async", "_source", "_stage")

    CHUNK = 1024  # items a bulk consumer takes from a sync expansion at once

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._source: Any = None  # the expansion: what we close
        self._chain: SyncChain | None = None  # the absorbed steps over a sync expansion
        self._expansion: Any = None  # what we read: the source, or the chain over it
        self._expansion_is_async = False

    async def __anext__(self) -> Any:
        while True:
            expansion = self._expansion
            if expansion is None:
                item = await self._read()
                if item is END:
                    raise StopAsyncIteration
                await self._expand(item)
            elif self._expansion_is_async:
                post = self._post
                try:
                    while True:
                        item = await expansion.__anext__()
                        if post is None or (item := post(item)) is not SKIP:
                            return item
                        await self._dropped()
                except StopAsyncIteration:
                    await self._finish_expansion()
            else:
                try:
                    item = next(expansion, END)
                except Pause:
                    await let_loop_run()
                    continue
                if item is not END:
                    return item
                await self._finish_expansion()

    async def next_chunk(self) -> list[Any]:
        # Bulk path for terminals: a sync expansion is taken a chunk at a time, in C.
        while True:
            expansion = self._expansion
            if expansion is None:
                item = await self._read()
                if item is END:
                    return []
                await self._expand(item)
                continue
            if self._expansion_is_async:
                return await super().next_chunk()
            chunk: list[Any] = []
            try:
                chunk.extend(islice(expansion, self.CHUNK))
            except Pause:
                if chunk:
                    return chunk
                await let_loop_run()
                continue
            if chunk:
                return chunk
            await self._finish_expansion()

    async def _expand(self, item: Any) -> None:
        result = self._stage.fn(item)  # type: ignore[misc]
        if self._stage.awaits:
            result = await result
        source, is_async = open_expansion(result, self._stage)
        self._source = self._expansion = source
        self._expansion_is_async = is_async
        if not is_async and self._post_stages:
            self._chain = SyncChain(source)
            for stage in self._post_stages:
                self._chain.take(stage)
            self._expansion = self._chain.iterator

    async def _finish_expansion(self) -> None:
        chain, source = self._chain, self._source
        # Cleared first: a failing close is not retried by aclose().
        self._expansion = self._source = self._chain = None
        try:
            if chain is not None:
                chain.check_ended()
        finally:
            await close_any(source)
        await self._dropped()  # a run of empty expansions returns nothing: pace it

    async def aclose(self) -> None:
        source, self._expansion, self._source, self._chain = self._source, None, None, None
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

"""Inline async nodes: one small async iterator per stage.

For async functions, async upstreams and ``flat_map`` (whose expansions may be sync or
async). Sync ``map``/``filter`` stages that follow a node are absorbed into it rather
than costing a node each.

Ownership: a node never closes anything on its own when it fails; its owner (the next
node, a stage's workers, or the terminal) calls :meth:`Node.aclose` exactly once on
every exit, and that closes the node's expansion and then its upstream.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from itertools import chain, islice
from typing import Any

from .._errors import STOPS, code_of, innermost_code, one_of, stop_error, swallowed_stop_error
from .._stages import Kind, Stage
from .closing import close_all, close_any, close_sync
from .markers import END, PAUSE, SKIP
from .sync_chain import (
    Pacer,
    SyncChain,
    checked_first_call,
    let_loop_run,
    reject_awaitable,
    sync_reader,
)

_PLAIN_SEQUENCES = frozenset({list, tuple, range, str, bytes, set, frozenset, dict})


def open_expansion(result: Any, stage: Stage) -> tuple[Any, bool]:
    """The iterator to stream from a ``flat_map`` result, and whether it is async."""
    if type(result) in _PLAIN_SEQUENCES:  # the common case, checked cheaply
        return iter(result), False
    if hasattr(result, "__aiter__"):  # before the awaitable check: a Pipeline is both
        return result.__aiter__(), True
    if inspect.isawaitable(result):
        reject_awaitable(result, stage)
    if hasattr(result, "__iter__"):
        return iter(result), False
    raise TypeError(
        f"{stage.describe()} must return an iterable or an async iterable, "
        f"got {type(result).__name__} {result!r}"
    )


def compile_steps(stages: list[Stage], unchecked: set[int] | None = None) -> Callable[[Any], Any]:
    """One function applying trailing sync map/filter ``stages`` to an item (or SKIP).

    Composed from the last stage back, so a stage costs one call (a map that ends the
    list costs nothing but its own function). With ``unchecked`` (indexes into
    ``stages``), those stages' functions are checked for returning an awaitable
    (:func:`checked_first_call`), and an index leaves the set once its function has
    been checked.
    """
    apply: Callable[[Any], Any] | None = None
    for index in reversed(range(len(stages))):
        stage = stages[index]
        fn: Callable[[Any], Any] = stage.fn  # type: ignore[assignment]
        if unchecked is not None and index in unchecked:
            fn = checking(stage, index, unchecked)
        apply = _map_step(fn, apply) if stage.kind is Kind.MAP else _filter_step(fn, apply)
    assert apply is not None
    return apply


def checking(stage: Stage, index: int, unchecked: set[int]) -> Callable[[Any], Any]:
    """``stage.fn`` through :func:`checked_first_call`; a call that passes the check
    removes ``index`` from ``unchecked``.

    A stage's first item is not the pipeline's first: a filter in front may drop items,
    and an expansion may be empty. So whoever applies the steps keeps the checked copies
    until every index has left the set, not just for one item.
    """
    check = checked_first_call(stage)

    def first_calls(item: Any) -> Any:
        result = check(item)
        unchecked.discard(index)
        return result

    return first_calls


def stack_steps(stages: list[Stage], upstream: Any, unchecked: set[int]) -> Any:
    """``stages`` over the sync iterator ``upstream`` as builtin ``map``/``filter``;
    the first item each still unchecked stage sees goes through :func:`checking`."""
    for index, stage in enumerate(stages):
        apply = map if stage.kind is Kind.MAP else filter
        if index in unchecked:
            first = checking(stage, index, unchecked)
            upstream = chain(apply(first, islice(upstream, 1)), apply(stage.fn, upstream))  # type: ignore[arg-type]
        else:
            upstream = apply(stage.fn, upstream)  # type: ignore[arg-type]
    return upstream


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
        unchecked = set(range(len(self._post_stages)))
        checked = compile_steps(self._post_stages, unchecked)
        plain = compile_steps(self._post_stages)

        def first_items(item: Any) -> Any:  # until every step has been checked
            result = checked(item)
            if not unchecked:
                self._post = plain
            return result

        self._post = first_items

    def _own_stages(self) -> list[Stage]:
        return []

    def _user_stop(self, exc: BaseException) -> RuntimeError:
        """A StopIteration or StopAsyncIteration raised by code this node runs (its
        function, absorbed steps, a sync expansion or a bare sync source): the error to
        raise instead of letting it end this node's stream."""
        stages = self._own_stages() + self._post_stages
        raised_by = innermost_code(exc)
        for stage in stages:
            if raised_by is not None and raised_by is code_of(stage.fn):
                return stop_error(exc, stage.describe())
        names = [stage.describe() for stage in stages]
        if isinstance(self._up, SyncChain) and not self._up.has_stages:
            names.append("the source")
        if isinstance(self, AsyncFlatMap):
            names.append("an expansion")
        return stop_error(exc, one_of(names))

    async def _dropped(self) -> None:
        """An item was filtered out: the loop goes on without returning; pace it."""
        if self._drops.tick():
            await let_loop_run()

    async def _read(self) -> Any:
        """The next upstream item, or :data:`END` (then again :data:`END` forever)."""
        if self._ended:
            return END
        if self._next_sync is not None:
            try:
                while (item := self._next_sync()) is PAUSE:
                    await let_loop_run()
            except StopAsyncIteration as exc:  # from a bare sync source: not our end
                raise self._user_stop(exc) from exc
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
        # User code raising StopIteration or StopAsyncIteration must not end this
        # stream: the try catches those, and the real end is raised outside it.
        next_sync = self._next_sync
        try:
            while True:
                if next_sync is None:
                    try:
                        item = await self._next_async()  # type: ignore[misc]
                    except StopAsyncIteration:
                        break
                elif (item := next_sync()) is END:
                    break
                elif item is PAUSE:
                    await let_loop_run()
                    continue
                post = self._post
                if post is None or (item := post(item)) is not SKIP:
                    return item
                await self._dropped()
        except STOPS as exc:
            raise self._user_stop(exc) from exc
        raise StopAsyncIteration


class AsyncMap(Node):
    """An inline ``map`` or ``filter`` stage (async function, or async upstream)."""

    __slots__ = ("_awaits", "_fn", "_is_filter", "_stage")

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._awaits = stage.awaits
        self._is_filter = stage.kind is Kind.FILTER
        self._fn = stage.fn if stage.awaits else _once_then(checked_first_call(stage), self)

    def _use(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn

    def _own_stages(self) -> list[Stage]:
        return [self._stage]

    async def __anext__(self) -> Any:
        next_sync, awaits, is_filter = self._next_sync, self._awaits, self._is_filter
        try:  # as in Passthrough: user code's StopIteration is not our end
            while True:
                if next_sync is None:
                    try:
                        item = await self._next_async()  # type: ignore[misc]
                    except StopAsyncIteration:
                        break
                elif (item := next_sync()) is END:
                    break
                elif item is PAUSE:
                    await let_loop_run()
                    continue
                result = self._fn(item)  # type: ignore[misc]
                if awaits:
                    result = await result
                if is_filter:
                    if not result:
                        await self._dropped()
                        continue
                    result = item
                post = self._post
                if post is None or (result := post(result)) is not SKIP:
                    return result
                await self._dropped()
        except STOPS as exc:
            raise self._user_stop(exc) from exc
        raise StopAsyncIteration


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
            try:
                result = post(batch)
            except STOPS as exc:
                raise self._user_stop(exc) from exc
            if result is not SKIP:
                return result
            await self._dropped()


class AsyncFlatMap(Node):
    """Streams each expansion lazily; closes each one exactly once, when it is
    exhausted or when the node is closed.

    Absorbed steps run inside sync expansions as builtin ``map``/``filter`` (the first
    expansion through checked copies, see :func:`checked_first_call`). A bulk consumer
    over a sync upstream with a sync function gets whole runs of expansions in one call
    (:meth:`next_chunk`): the per-expansion work is then a few calls, not coroutines.
    """

    __slots__ = (
        "_expansion",
        "_expansion_is_async",
        "_handed_out",
        "_mark",
        "_source",
        "_stage",
        "_steps",
        "_unchecked",
    )

    CHUNK = 1024  # items a bulk consumer takes at once

    def __init__(self, upstream: Any, stage: Stage) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._source: Any = None  # the expansion: what we close
        self._expansion: Any = None  # what we read: the source, or steps over it
        self._expansion_is_async = False
        # the absorbed steps as (map or filter, fn), once each has had its first-call
        # check; until then the indexes of those that have not
        self._steps: list[tuple[Any, Any]] | None = None
        self._unchecked: set[int] | None = None
        self._handed_out = False  # is the open sync expansion being drained by next_run's caller?
        self._mark = _EndMark()

    def _own_stages(self) -> list[Stage]:
        return [self._stage]

    async def __anext__(self) -> Any:
        try:  # as in Passthrough: user code's StopIteration is not our end
            while True:
                expansion = self._expansion
                if expansion is None:
                    item = await self._read()
                    if item is END:
                        break
                    result = self._stage.fn(item)  # type: ignore[misc]
                    self._start(await result if self._stage.awaits else result)
                elif self._expansion_is_async:
                    post = self._post
                    while True:
                        try:
                            item = await expansion.__anext__()
                        except StopAsyncIteration:
                            break
                        if post is None or (item := post(item)) is not SKIP:
                            return item
                        await self._dropped()
                    source, self._expansion, self._source = self._source, None, None
                    await close_any(source)  # cleared first: a failing close is not retried
                    await self._dropped()  # empty expansions that never suspend: pace them
                else:
                    item = next(expansion, END)
                    if item is not END:
                        return item
                    self._finish_sync()
                    await self._dropped()  # a run of empty expansions returns nothing
        except STOPS as exc:
            raise self._user_stop(exc) from exc
        raise StopAsyncIteration

    async def next_chunk(self) -> list[Any]:
        if self._next_sync is None or self._stage.awaits or self._expansion_is_async:
            return await super().next_chunk()
        # All sync: take whole expansions, and run through many of them, per call.
        read, fn, limit, pacer = self._next_sync, self._stage.fn, self.CHUNK, self._drops
        chunk: list[Any] = []
        try:  # in this frame: a StopIteration leaving it would become a RuntimeError
            while len(chunk) < limit:
                if self._expansion is not None:
                    chunk.extend(islice(self._expansion, limit - len(chunk)))
                    if len(chunk) >= limit:
                        break  # the expansion may go on
                    self._finish_sync()
                if pacer.tick():
                    if chunk:
                        break
                    await let_loop_run()
                item = read()
                if item is END:
                    break
                if item is PAUSE:
                    if chunk:
                        break
                    await let_loop_run()
                    continue
                if self._start(fn(item)):  # type: ignore[misc]
                    break  # an async expansion: the general path takes it
        except STOPS as exc:
            raise self._user_stop(exc) from exc
        if chunk or self._expansion is None:
            return chunk  # [] only at the end
        return await super().next_chunk()  # an async expansion began: the general path

    def next_sync_run(self) -> Any:
        """:meth:`next_run` without a coroutine, for the common case where nothing needs
        awaiting: the next sync expansion, END, PAUSE (let the loop run, then ask
        again), or None: await :meth:`next_run` instead. The caller paces the runs.

        A StopIteration or StopAsyncIteration raised while the caller drains a run it
        was given is the caller's to translate (:meth:`user_stop`)."""
        try:
            return self._next_sync_run()
        except STOPS as exc:
            raise self._user_stop(exc) from exc

    def user_stop(self, exc: BaseException) -> RuntimeError:
        """What to raise for a StopIteration or StopAsyncIteration that came out of a
        run handed out by :meth:`next_sync_run` or :meth:`next_run`."""
        return self._user_stop(exc)

    def _next_sync_run(self) -> Any:
        if self._handed_out:
            self._handed_out = False
            self._finish_sync()
        read_sync = self._next_sync
        if read_sync is None or self._stage.awaits or self._expansion is not None:
            return None
        item = read_sync()
        if item is END or item is PAUSE:
            return item
        result = self._stage.fn(item)  # type: ignore[misc]
        steps = self._steps
        if steps is not None and type(result) in _PLAIN_SEQUENCES:
            # _start's common case, inline: a list or the like, the steps already checked
            expansion = self._source = iter(result)
            if steps:
                self._mark.ended = False
                expansion = chain(expansion, self._mark)
                for apply, fn in steps:
                    expansion = apply(fn, expansion)
            self._expansion = expansion
            self._expansion_is_async = False
        elif self._start(result):
            return None  # an async expansion: next_run takes it
        self._handed_out = True
        return self._expansion

    async def next_run(self) -> Any:
        """The next items as a lazy sync iterator, or END: a sync expansion as it is
        (the caller drains it, item by item, as its consumer asks), or one item of an
        async expansion. Asking again finishes the previous run."""
        try:  # in this frame: a StopIteration leaving it would become a RuntimeError
            if self._handed_out:  # the caller drained the sync expansion it was given
                self._handed_out = False
                self._finish_sync()
                if self._drops.tick():  # a run of empty expansions returns nothing: pace it
                    await let_loop_run()
            read_sync = self._next_sync
            while self._expansion is None:
                if read_sync is None:
                    item = await self._read()
                elif (item := read_sync()) is PAUSE:
                    await let_loop_run()
                    continue
                if item is END:
                    return END
                result = self._stage.fn(item)  # type: ignore[misc]
                self._start(await result if self._stage.awaits else result)
        except STOPS as exc:
            raise self._user_stop(exc) from exc
        if not self._expansion_is_async:
            self._handed_out = True
            return self._expansion
        try:
            return (await self.__anext__(),)  # an async expansion: one item at a time
        except StopAsyncIteration:
            return END

    def _start(self, result: Any) -> bool:
        """Open the expansion of ``result``; True if it is async."""
        source, is_async = open_expansion(result, self._stage)
        self._source = self._expansion = source
        self._expansion_is_async = is_async
        if is_async:
            return True
        if self._unchecked is None:  # the first sync expansion: all steps unchecked
            self._unchecked = set(range(len(self._post_stages)))
        if self._steps is None and not self._unchecked:
            # every step has been checked (or there are none): plain builtins from now
            # on, and next_sync_run may open expansions itself
            stages = self._post_stages
            self._steps = [(map if st.kind is Kind.MAP else filter, st.fn) for st in stages]
        if not self._post_stages:
            return False
        self._mark.ended = False  # sees the real end (see _finish_sync)
        bottom = chain(source, self._mark)
        if self._steps is not None:
            for apply, fn in self._steps:
                bottom = apply(fn, bottom)
            self._expansion = bottom
        else:  # some step has not seen an item yet (empty expansions, dropped items)
            self._expansion = stack_steps(self._post_stages, bottom, self._unchecked)
        return False

    def _finish_sync(self) -> None:
        """A sync expansion ended: close it (once), and make sure it really ended."""
        expansion, source = self._expansion, self._source
        self._expansion = self._source = None  # cleared first: a failing close is not retried
        try:
            # A step raising StopIteration inside the builtin map/filter ends the
            # expansion early, as if it had ended; only the mark chained after the
            # expansion sees its real end.
            if expansion is not source and not self._mark.ended:
                names = [stage.describe() for stage in self._post_stages]
                effect = f"cut short an expansion of {self._stage.describe()}"
                raise swallowed_stop_error(names, effect)
        finally:
            close_sync(source)

    async def aclose(self) -> None:
        source, self._expansion, self._source = self._source, None, None
        await close_all(x for x in (source, self._up) if x is not None)


class _EndMark:
    """Chained after a sync expansion that absorbed steps read: reached (and so
    :attr:`ended` set) only when the expansion itself ended, not when a step raised
    StopIteration, which ends the builtin ``map``/``filter`` above it just the same."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    def __iter__(self) -> _EndMark:
        return self

    def __next__(self) -> Any:
        self.ended = True
        raise StopIteration


def _once_then(first: Callable[[Any], Any], node: AsyncMap) -> Callable[[Any], Any]:
    """Call ``first`` once, then make ``node`` call the stage function directly."""

    def call(item: Any) -> Any:
        node._use(node._stage.fn)  # type: ignore[arg-type]
        return first(item)

    return call


NODE_TYPES: dict[Kind, Callable[[Any, Stage], Node]] = {
    Kind.MAP: AsyncMap,
    Kind.FILTER: AsyncMap,
    Kind.FLAT_MAP: AsyncFlatMap,
    Kind.BATCH: AsyncBatch,
}

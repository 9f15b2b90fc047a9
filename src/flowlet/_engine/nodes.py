"""Inline async nodes: one small async iterator per stage.

For async functions, async upstreams and ``flat_map`` (whose expansions may be sync or
async). Sync ``map``/``filter`` stages that follow a node are absorbed into it rather
than costing a node each.

Ownership: a node never closes anything on its own when it fails; its owner (the next
node, a stage's workers, or the terminal) calls :meth:`Node.aclose` exactly once on
every exit, and that closes the node's expansion and then its upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from .._errors import STOPS, code_of, innermost_code, one_of, stop_error
from .calls import Call, checked_first_call
from .closing import close_any
from .markers import END, PAUSE, SKIP
from .pacing import Pacer, let_loop_run
from .sync_chain import SyncChain, sync_reader


def compile_steps(stages: list[Call], unchecked: set[int] | None = None) -> Callable[[Any], Any]:
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
        fn = stage.fn
        if unchecked is not None and index in unchecked:
            fn = checking(stage, index, unchecked)
        apply = _filter_step(fn, apply) if stage.verdict else _map_step(fn, apply)
    assert apply is not None
    return apply


def checking(stage: Call, index: int, unchecked: set[int]) -> Callable[[Any], Any]:
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
        self._post_stages: list[Call] = []
        if isinstance(upstream, SyncChain):
            self._next_sync: Callable[[], Any] | None = sync_reader(upstream)
            self._next_async: Callable[[], Any] | None = None
        else:
            self._next_sync = None
            self._next_async = upstream.__anext__

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    def absorb(self, stage: Call) -> None:
        """Apply the sync map or filter ``stage`` to every item this node produces."""
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

    def _own_stages(self) -> list[Call]:
        return []

    def _user_stop(self, exc: BaseException) -> RuntimeError:
        """A StopIteration or StopAsyncIteration raised by code this node runs (its
        function, absorbed steps, a sync expansion or a bare sync source): the error to
        raise instead of letting it end this node's stream."""
        stages = self._own_stages() + self._post_stages
        raised_by = innermost_code(exc)
        for stage in stages:
            if raised_by is not None and raised_by is code_of(stage.fn):
                return stop_error(exc, stage.name)
        names = [stage.name for stage in stages]
        if isinstance(self._up, SyncChain) and not self._up.has_stages:
            names.append("the source")
        names.extend(self._other_culprits())
        return stop_error(exc, one_of(names))

    def _other_culprits(self) -> list[str]:
        """Who else may have raised, besides the stage functions and a bare source."""
        return []

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

    async def __anext__(self) -> Any:
        raise NotImplementedError

    async def aclose(self) -> None:
        await close_any(self._up)

    async def next_chunk(self) -> list[Any]:
        """Some next items, at least one; ``[]`` at the end (for bulk consumers)."""
        try:
            return [await self.__anext__()]
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

    def __init__(self, upstream: Any, stage: Call) -> None:
        super().__init__(upstream)
        self._stage = stage
        self._awaits = stage.awaits
        self._is_filter = stage.verdict
        self._fn = stage.fn if stage.awaits else self._first_call(checked_first_call(stage))

    def _first_call(self, first: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Call ``first`` once, then the stage function directly."""

        def call(item: Any) -> Any:
            self._fn = self._stage.fn
            return first(item)

        return call

    def _own_stages(self) -> list[Call]:
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
                result = self._fn(item)
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

    def __init__(self, upstream: Any, size: int) -> None:
        super().__init__(upstream)
        self._size = size

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

"""The inline ``flat_map`` node: each expansion streamed lazily, closed exactly once.

Absorbed sync steps (maps and filters after the ``flat_map``) run inside sync
expansions as the builtin ``map``/``filter``; bulk consumers and ``async for`` take
whole runs of sync expansions at a time (see :class:`AsyncFlatMap`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any

from .._errors import STOPS, swallowed_stop_error
from .calls import Call, TimedExpansion, over, reject_awaitable
from .closing import close_all, close_any, close_sync
from .markers import END, PAUSE, SKIP
from .nodes import Node, checking
from .pacing import let_loop_run

_PLAIN_SEQUENCES = frozenset({list, tuple, range, str, bytes, set, frozenset, dict})


def open_expansion(result: Any, call: Call) -> tuple[Any, bool]:
    """The iterator to stream from a ``flat_map`` result, and whether it is async."""
    if type(result) in _PLAIN_SEQUENCES:  # the common case, checked cheaply
        return iter(result), False
    if hasattr(result, "__aiter__"):  # before the awaitable check: a Pipeline is both
        expansion = result.__aiter__()
        if call.timeout is not None:
            expansion = TimedExpansion(expansion, call.timeout, call.name)
        return expansion, True
    if inspect.isawaitable(result):
        reject_awaitable(result, call.name)
    if hasattr(result, "__iter__"):
        return iter(result), False
    raise TypeError(
        f"{call.name} must return an iterable or an async iterable, "
        f"got {type(result).__name__} {result!r}"
    )


def stack_steps(stages: list[Call], upstream: Iterator[Any], unchecked: set[int]) -> Iterator[Any]:
    """``stages`` over the sync iterator ``upstream`` as builtin ``map``/``filter``;
    the first item each still unchecked stage sees goes through :func:`checking`."""
    for index, stage in enumerate(stages):
        if index in unchecked:
            first = checking(stage, index, unchecked)
            upstream = chain(
                over(stage, first, islice(upstream, 1)), over(stage, stage.fn, upstream)
            )
        else:
            upstream = over(stage, stage.fn, upstream)
    return upstream


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

    def __init__(self, upstream: Any, stage: Call) -> None:
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

    def _own_stages(self) -> list[Call]:
        return [self._stage]

    def _other_culprits(self) -> list[str]:
        return ["an expansion"]

    async def __anext__(self) -> Any:
        try:  # as in Passthrough: user code's StopIteration is not our end
            while True:
                expansion = self._expansion
                if expansion is None:
                    item = await self._read()
                    if item is END:
                        break
                    result = self._stage.fn(item)
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
                if self._start(fn(item)):
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
        result = self._stage.fn(item)
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
                result = self._stage.fn(item)
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
            self._steps = [(filter if st.verdict else map, st.fn) for st in stages]
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
                names = [stage.name for stage in self._post_stages]
                effect = f"cut short an expansion of {self._stage.name}"
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

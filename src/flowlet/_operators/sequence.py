"""Sequential operators: ``take``, ``take_while``, ``skip``, ``skip_while``, ``scan``.

Each runs in lockstep with its consumer (run-ahead 0) and in one of two forms: over a
sync source with sync functions, a layer of the fused chain (C iterators, or a small
class where ``islice`` would not survive the chain's pauses); otherwise an async
generator over the upstream (see :mod:`flowlet._engine.reader`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from itertools import accumulate, chain, dropwhile
from typing import Any, ClassVar

from .._engine.calls import FirstChecked
from .._engine.markers import END
from .._engine.plan import Plan, Stage, Upstream
from .._engine.reader import Reader
from .._validate import check_callable, check_size, describe, is_coroutine_callable


class Take(Stage):
    """The first ``n`` items; then the stream ends, and the upstream is closed before
    the ``n``-th item is handed on (nothing more is read). ``take(0)`` reads nothing."""

    __slots__ = ("n",)

    def __init__(self, n: object) -> None:
        self.n = check_size("n", n)

    def describe(self) -> str:
        return f"take({self.n})"

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        n = self.n
        fused = plan.fuse(upstream, lambda below: _Taken(below, n), ends=True)
        if fused is not None:
            return fused
        return plan.generator(upstream, self._run, self.describe())

    async def _run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        left = self.n
        if not left:
            await upstream.aclose()
            return
        while (item := await upstream.read()) is not END:
            left -= 1
            if not left:
                await upstream.aclose()  # everything upstream stops now, not later
                yield item
                return
            yield item


class _Taken:
    """``take(n)`` in a fused chain: like ``islice``, but it survives an exception from
    below (a pause) and never reads past its ``n``-th item."""

    __slots__ = ("_below", "_left", "ended")

    def __init__(self, below: Iterator[Any], n: int) -> None:
        self._below = below
        self._left = n
        self.ended = False  # it ended the stream (not a StopIteration from below)

    def __iter__(self) -> _Taken:
        return self

    def __next__(self) -> Any:
        if self._left <= 0:
            self.ended = True
            raise StopIteration
        item = next(self._below)
        self._left -= 1
        return item


class Skip(Stage):
    """Every item after the first ``n``."""

    __slots__ = ("n",)

    def __init__(self, n: object) -> None:
        self.n = check_size("n", n)

    def describe(self) -> str:
        return f"skip({self.n})"

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        if not self.n:
            return upstream
        n = self.n
        fused = plan.fuse(upstream, lambda below: _Skipped(below, n))
        if fused is not None:
            return fused
        return plan.generator(upstream, self._run, self.describe())

    async def _run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        for _ in range(self.n):
            if await upstream.read() is END:
                return
        while (item := await upstream.read()) is not END:
            yield item


class _Skipped:
    """``skip(n)`` in a fused chain (``islice(below, n, None)`` would not survive a
    pause from below)."""

    __slots__ = ("_below", "_left")

    def __init__(self, below: Iterator[Any], n: int) -> None:
        self._below = below
        self._left = n

    def __iter__(self) -> _Skipped:
        return self

    def __next__(self) -> Any:
        while self._left > 0:
            next(self._below)
            self._left -= 1  # after the read: a pause leaves the count right
        return next(self._below)


class _FunctionStage(Stage):
    """A sequential operator with a function (sync or ``async def``)."""

    __slots__ = ("awaits", "fn")

    name: ClassVar[str]

    def __init__(self, fn: object) -> None:
        check_callable(f"{self.name}() function", fn)
        assert callable(fn)
        self.fn: Callable[..., Any] = fn
        self.awaits = is_coroutine_callable(fn)

    def describe(self) -> str:
        return f"{self.name}({describe(self.fn)})"

    def checked(self) -> Callable[..., Any]:
        """The function for a fused layer (sync only): its first result checked."""
        return FirstChecked(self.fn, self.describe())

    async def call(self, *args: Any) -> Any:
        result = self.fn(*args)
        return await result if self.awaits else result

    ends: ClassVar[bool] = False
    """Whether its fused layer may end the stream itself (see ``SyncChain.add``)."""

    def attach(self, upstream: Upstream, plan: Plan) -> Upstream:
        if not self.awaits:
            fused = plan.fuse(upstream, self.layer, self.describe(), ends=self.ends)
            if fused is not None:
                return fused
        return plan.generator(upstream, self.run, self.describe())

    def layer(self, below: Iterator[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        raise NotImplementedError


class TakeWhile(_FunctionStage):
    """Items while ``pred`` is true; the stream ends at the first false (that item is
    dropped, and nothing after it is read)."""

    __slots__ = ()
    name = "take_while"
    ends = True

    def layer(self, below: Iterator[Any]) -> Iterator[Any]:
        return _TakenWhile(below, self.checked())

    async def run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        while (item := await upstream.read()) is not END:
            if not await self.call(item):
                await upstream.aclose()
                return
            yield item


class _TakenWhile:
    """``take_while`` in a fused chain: ``takewhile`` that says when it ended the
    stream itself (so a StopIteration from below is not mistaken for that)."""

    __slots__ = ("_below", "_pred", "ended")

    def __init__(self, below: Iterator[Any], pred: Callable[[Any], Any]) -> None:
        self._below = below
        self._pred = pred
        self.ended = False

    def __iter__(self) -> _TakenWhile:
        return self

    def __next__(self) -> Any:
        if self.ended:
            raise StopIteration
        item = next(self._below)
        if not self._pred(item):
            self.ended = True
            raise StopIteration
        return item


class SkipWhile(_FunctionStage):
    """Drops items while ``pred`` is true; from the first false on, every item (``pred``
    is not called again)."""

    __slots__ = ()
    name = "skip_while"

    def layer(self, below: Iterator[Any]) -> Iterator[Any]:
        return dropwhile(self.checked(), below)

    async def run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        while (item := await upstream.read()) is not END:
            if not await self.call(item):
                yield item
                break
        while (item := await upstream.read()) is not END:
            yield item


NO_INITIAL: Any = object()
"""``scan``'s and ``reduce``'s default: no initial value given."""


class Scan(_FunctionStage):
    """Running accumulation, as ``itertools.accumulate(items, fn, initial=...)``: without
    ``initial`` the first item is emitted as it is; with it, ``initial`` first. Then
    ``fn(accumulated, item)`` for each item."""

    __slots__ = ("initial",)
    name = "scan"

    def __init__(self, fn: object, initial: object = NO_INITIAL) -> None:
        super().__init__(fn)
        self.initial = initial

    def describe(self) -> str:
        with_initial = "" if self.initial is NO_INITIAL else f", initial={self.initial!r}"
        return f"scan({describe(self.fn)}{with_initial})"

    def layer(self, below: Iterator[Any]) -> Iterator[Any]:
        if self.initial is NO_INITIAL:
            return accumulate(below, self.checked())
        # accumulate(initial=None) would mean "no initial": chain it in front instead
        return accumulate(chain((self.initial,), below), self.checked())

    async def run(self, upstream: Reader[Any]) -> AsyncIterator[Any]:
        total = self.initial
        if total is NO_INITIAL:
            total = await upstream.read()
            if total is END:
                return
        yield total
        while (item := await upstream.read()) is not END:
            total = await self.call(total, item)
            yield total

"""The general node: an operator written as an async generator over a typed reader.

Most operators need no special engine support. Their running form is an async
generator function ``run(upstream)`` that reads items with ``await upstream.read()``
(an item, or :data:`END`) and yields its outputs; the engine wraps it in a
:class:`GeneratorNode`, which owns the generator and the upstream and closes each
exactly once, on every exit.

Time: a generator may sleep or read with a deadline (:meth:`Reader.read_before`) on the
event loop's clock. A timed read never cancels the upstream in the middle of a read
(that would kill an async generator upstream and lose its items silently): the stage
asks for a *cancel-safe* upstream (:meth:`flowlet._engine.plan.Plan.generator` with
``timed=True``), and only the hand-off from it is timed.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import anyio

from .._errors import STOPS, stop_error
from .closing import close_any, close_async
from .markers import END, PAUSE, SKIP, TIMEOUT, Marker
from .nodes import Node
from .outbox import OrderedOutbox, Outbox
from .pacing import let_loop_run
from .sync_chain import SyncChain, sync_reader

T = TypeVar("T")

Ended: TypeAlias = Literal[Marker.END]
TimedOut: TypeAlias = Literal[Marker.TIMEOUT]


def is_cancel_safe(upstream: object) -> bool:
    """Whether a read of ``upstream`` may be cancelled without losing an item: a fused
    sync chain (its reads never wait) or a pool's outbox (a cancelled wait takes
    nothing)."""
    return isinstance(upstream, (SyncChain, Outbox, OrderedOutbox))


class Reader(Generic[T]):
    """What an operator's ``run(upstream)`` reads: one upstream, item by item.

    ``await read()`` returns the next item, or :data:`END` once the upstream is
    exhausted (and :data:`END` again if asked again). ``await aclose()`` closes the
    upstream early (a ``take`` that has all it needs); otherwise the node that owns
    both closes it after the operator's generator. Either way exactly once.
    """

    __slots__ = ("_anext", "_closed", "_ended", "_get", "_ready", "_sync", "_up", "cancel_safe")

    def __init__(self, upstream: Any) -> None:
        self._up = upstream
        self._closed = False
        self._ended = False
        self._sync: Callable[[], Any] | None = None
        self._anext: Callable[[], Any] | None = None
        self._get: Callable[[], Any] | None = None
        self._ready: Callable[[], bool] | None = None
        self.cancel_safe = is_cancel_safe(upstream)
        if isinstance(upstream, SyncChain):
            self._sync = sync_reader(upstream)
        elif isinstance(upstream, (Outbox, OrderedOutbox)):
            self._get = upstream.get
            self._ready = upstream.has_ready
        else:
            self._anext = upstream.__anext__

    async def aclose(self) -> None:
        """Close the upstream now (once; later reads return :data:`END`)."""
        if self._closed:
            return
        self._closed = self._ended = True
        await close_any(self._up)

    async def read(self) -> T | Ended:
        """The next item, or :data:`END`."""
        if self._ended:
            ended: Ended = END
            return ended
        if self._sync is not None:
            try:
                while (item := self._sync()) is PAUSE:
                    await let_loop_run()
            except StopAsyncIteration as exc:  # from a bare sync source: not an end
                raise stop_error(exc, "the source") from exc
        elif self._get is not None:
            item = await self._get()
        else:
            assert self._anext is not None
            try:
                item = await self._anext()
            except StopAsyncIteration:
                item = END
        if item is END:
            self._ended = True
        result: T | Ended = item
        return result

    async def read_before(self, deadline: float) -> T | Ended | TimedOut:
        """The next item, :data:`END`, or :data:`TIMEOUT` if none came before
        ``deadline`` (on the event loop's clock, :func:`anyio.current_time`)."""
        if not self.cancel_safe:
            raise RuntimeError("read_before() needs a stage attached with timed=True")
        if self._sync is not None or (self._ready is not None and self._ready()):
            return await self.read()  # will not wait
        if deadline == math.inf:
            return await self.read()
        with anyio.CancelScope(deadline=deadline):
            return await self.read()
        timed_out: TimedOut = TIMEOUT  # the deadline passed while waiting: nothing taken
        return timed_out


Run = Callable[[Reader[Any]], AsyncIterator[Any]]
"""An operator's running form: an async generator function over its upstream."""


class GeneratorNode(Node):
    """A node running an operator's async generator over a :class:`Reader`.

    Ownership: the generator is closed first, then the upstream, each exactly once:
    when the generator ends (at once, so that a ``take`` stops everything upstream
    promptly) or when the node is closed.
    """

    __slots__ = ("_closed", "_gen", "_name", "_reader")

    def __init__(self, upstream: Any, run: Run, name: str) -> None:
        super().__init__(upstream)  # (its readers go unused: the generator reads)
        self._reader: Reader[Any] = Reader(upstream)
        self._gen = run(self._reader)
        self._name = name
        self._closed = False

    async def __anext__(self) -> Any:
        post = self._post
        while True:
            try:
                item = await self._gen.__anext__()
            except StopAsyncIteration:
                await self.aclose()  # done: close what it read at once
                raise
            if post is None:
                return item
            try:
                item = post(item)
            except STOPS as exc:
                raise self._user_stop(exc) from exc
            if item is not SKIP:
                return item
            await self._dropped()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # As close_all: both are closed whatever happens; the first failure is raised.
        failure: BaseException | None = None
        for closing in (self._gen, self._reader):
            try:
                await close_async(closing)
            except BaseException as exc:  # noqa: PERF203 - raised below, once both ran
                failure = failure or exc
        if failure is not None:
            raise failure

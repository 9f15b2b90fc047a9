"""Inline sync stages over a sync source: one lazy iterator built from builtins.

A :class:`SyncChain` is what a run of ``map``/``filter``/``batch`` stages with sync
functions over a sync source compiles to: the builtin ``map`` and ``filter`` and
``itertools`` objects, so the per-item work happens in C. Pulling one item pulls
exactly the source items it needs, no more (lockstep). The source is read in windows
with a :class:`Probe` between them, which paces long runs and spots a stage function
raising StopIteration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain, islice
from typing import Any, NoReturn

from .._backend import current_backend
from .._errors import (
    STOPS,
    awaitable_error,
    is_awaitable_result,
    stop_error,
    swallowed_stop_error,
)
from .._stages import Kind, Stage
from .closing import close_sync
from .markers import END, PAUSE

PACE_INTERVAL = 0.002
"""Seconds a loop that never suspends may keep the event loop to itself (about)."""


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
            iterator = apply_sync_stage(stage, iterator)
        return iterator

    @property
    def has_stages(self) -> bool:
        return bool(self._stages)

    def check_ended(self) -> None:
        """Call when :attr:`iterator` ended: raise if a stage function raised
        StopIteration (generators and coroutines turn that into RuntimeError, PEP 479;
        the builtin ``map`` does not, and would silently end the stream instead)."""
        if self._probe is not None and not self._probe.ended:
            names = [stage.describe() for stage in self._stages if stage.fn is not None]
            raise swallowed_stop_error(names, "ended the stream early")

    def close(self) -> None:
        close_sync(self._source)

    async def aclose(self) -> None:
        self.close()


def apply_sync_stage(stage: Stage, upstream: Iterator[Any]) -> Iterator[Any]:
    """``stage`` over ``upstream`` as builtins, its function checked at the first item."""
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
        except STOPS as exc:  # would end only the first-item segment of the chain
            raise stop_error(exc, stage.describe()) from exc
        if is_awaitable_result(result):
            reject_awaitable(result, stage)
        return result

    return first_call


def reject_awaitable(result: object, stage: Stage) -> NoReturn:
    raise awaitable_error(
        result,
        stage.describe(),
        "but its function is not `async def`, so flowlet calls it as a plain function. "
        "Make it async (`async def f(x): return await fetch(x)`) or pass the coroutine "
        "function itself (functools.partial works)",
    )


SYNC_CALLS = "a sync stage function or the source"
"""Who raised, when a StopAsyncIteration comes out of a :class:`SyncChain`."""


def sync_reader(chain: SyncChain) -> Callable[[], Any]:
    """``read()`` for a sync upstream: the next item, :data:`END`, or :data:`PAUSE`
    (let the event loop run, then read again)."""
    iterator = chain.iterator
    if not chain.has_stages:
        # The bare source: no pauses, nothing to check. (A StopAsyncIteration it raises
        # is caught where the reader is called; a Python frame here would cost per item.)
        return partial(next, iterator, END)

    def read() -> Any:
        try:
            item = next(iterator, END)
        except Pause:
            return PAUSE
        except StopAsyncIteration as exc:  # not an end here: it would end an async reader
            raise stop_error(exc, SYNC_CALLS) from exc
        if item is END:
            chain.check_ended()
        return item

    return read

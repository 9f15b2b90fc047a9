"""Inline sync stages over a sync source: one lazy iterator built from builtins.

A :class:`SyncChain` is what a run of ``map``/``filter``/``batch`` stages with sync
functions over a sync source compiles to: the builtin ``map`` and ``filter`` and
``itertools`` objects, so the per-item work happens in C. Pulling one item pulls
exactly the source items it needs, no more (lockstep). The source is read in windows
with a :class:`Probe` between them, which paces long runs and spots a stage function
raising StopIteration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain, islice
from typing import Any

from .._errors import stop_error, swallowed_stop_error
from .calls import SYNC_CALLS, Call, checked_first_call, over
from .closing import close_sync
from .markers import END, PAUSE
from .pacing import Pacer

Layer = Callable[[Iterator[Any]], Iterator[Any]]
"""One fused stage: wraps the iterator below it in the one it makes (``map``, ...)."""


class Pause(Exception):
    """Raised through a :class:`SyncChain` when it has run for a pacing interval."""


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


class SyncChain:
    """Inline sync stages over a sync source, as one lazy iterator (:attr:`iterator`).

    Built from builtins so that the per-item work runs in C: a :data:`Layer` per stage
    (``map``/``filter`` for functions, :func:`call_layer`), over the source read in
    windows (see :class:`Probe`). Every layer reads the one below lazily, so the chain
    stays in lockstep. A layer must survive an exception from below and carry on when
    called again (``map``, ``filter``, ``takewhile``, ``accumulate`` do; ``islice``
    does not, which is why :class:`Batches` and friends are classes).

    Reading :attr:`iterator` may raise :class:`Pause` (let the event loop run, then read
    again); when it ends, call :meth:`check_ended`.
    """

    __slots__ = ("_enders", "_functions", "_iterator", "_layers", "_probe", "_source")

    def __init__(self, source: Iterator[Any]) -> None:
        self._source = source
        self._layers: list[tuple[Layer, bool]] = []
        self._enders: list[Any] = []  # built layers that may end the stream themselves
        self._functions: list[str] = []  # names of the stages whose functions it calls
        self._iterator: Iterator[Any] | None = None
        self._probe: Probe | None = None

    @property
    def open(self) -> bool:
        """Whether layers can still be added (nothing has been read)."""
        return self._iterator is None

    def add(self, layer: Layer, calls: str | None = None, *, ends: bool = False) -> None:
        """Put ``layer`` on top; ``calls``: the stage's name, if it calls user code.
        ``ends``: the layer may end the stream before the source ends (a ``take``); the
        iterator it makes then has an ``ended`` attribute, true once it did."""
        assert self._iterator is None, "the chain is already being read"
        self._layers.append((layer, ends))
        if calls is not None:
            self._functions.append(calls)

    @property
    def iterator(self) -> Iterator[Any]:
        """The chain, built at first use."""
        if self._iterator is None:
            self._iterator = self._build()
        return self._iterator

    def _build(self) -> Iterator[Any]:
        if not self._layers:
            return self._source
        self._probe = Probe(self._source)
        iterator: Iterator[Any] = chain.from_iterable(_windows(self._source, self._probe))
        for layer, ends in self._layers:
            iterator = layer(iterator)
            if ends:
                self._enders.append(iterator)
        return iterator

    @property
    def has_stages(self) -> bool:
        return bool(self._layers)

    def check_ended(self) -> None:
        """Call when :attr:`iterator` ended: raise if a stage function raised
        StopIteration (generators and coroutines turn that into RuntimeError, PEP 479;
        the builtin ``map`` does not, and would silently end the stream instead)."""
        if self._probe is None or self._probe.ended:
            return
        if any(layer.ended for layer in self._enders):
            return  # a take (or the like) ended it, as it should
        raise swallowed_stop_error(self._functions, "ended the stream early")

    def close(self) -> None:
        close_sync(self._source)

    async def aclose(self) -> None:
        self.close()


def call_layer(call: Call) -> Layer:
    """A sync map or filter as builtins, its function checked at the first item."""
    first, fn = checked_first_call(call), call.fn

    def layer(upstream: Iterator[Any]) -> Iterator[Any]:
        return chain(over(call, first, islice(upstream, 1)), over(call, fn, upstream))

    return layer


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

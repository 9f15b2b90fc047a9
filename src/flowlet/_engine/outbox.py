"""Buffers between a decoupled stage's workers and whoever reads the stage's output.

Both buffers are bounded, hand items over without a task switch when they can, and park
a task on a one-shot wake-up (a future on asyncio) only when it must wait.

* :class:`Outbox` - completion order, at most ``capacity`` finished values.
* :class:`OrderedOutbox` - input order. Workers reserve a place in a window of
  ``concurrency + capacity`` input positions before they read an item, so a slow head
  item holds back delivery but not new calls, until the window is full.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .markers import END, SKIP
from .run import Run
from .waiting import Waiters

_CANCELLATION_TURNS = 1000
"""Loop turns a reader of a stopped stage waits for its own cancellation to arrive."""


class _Reading:
    """The end-of-stream side shared by both buffers."""

    __slots__ = ("_detached_reader", "_readers", "_run", "_state", "on_close")

    OPEN, DONE, ABORTED = range(3)

    def __init__(self, run: Run) -> None:
        self._run = run
        self._readers = Waiters(run)
        self._state = self.OPEN
        self._detached_reader = False
        self.on_close: Callable[[], None] = lambda: None

    def read_outside_run(self) -> None:
        """The reader runs outside the run's cancel scope (a detached iterator)."""
        self._detached_reader = True

    def finish(self, completed: bool) -> None:
        """No more values will be added: the stage completed, or it was stopped."""
        self._state = self.DONE if completed else self.ABORTED
        self._readers.wake_all()

    async def _end_of_stream(self) -> Any:
        """What a reader gets once every value was taken: END, or the run's failure."""
        if self._state == self.DONE:
            return END
        run = self._run
        failure = run.error or run.close_error
        if failure is not None:
            raise failure
        if self._detached_reader:
            raise RuntimeError("flowlet: the pipeline was stopped before it finished")
        # A reader inside the run is being cancelled with it: let that arrive (at the next
        # checkpoint on trio; within a few loop turns on asyncio, where anyio delivers
        # a scope's cancellation task by task). Never spin for ever: a stage that stopped
        # with nothing failed and nothing cancelled is a bug, and must say so.
        for _ in range(_CANCELLATION_TURNS):
            await run.backend.checkpoint()
        raise RuntimeError(
            "flowlet: a stage stopped without a failure or a cancellation (a bug in "
            "flowlet: please report it)"
        )

    def __aiter__(self) -> _Reading:
        return self

    async def get(self) -> Any:
        raise NotImplementedError

    async def __anext__(self) -> Any:
        item = await self.get()
        if item is END:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """The reader is done: stop the stage (its owner closes the stage's upstream)."""
        self.on_close()


class Outbox(_Reading):
    """Completion-order buffer of at most ``capacity`` values; any number of readers.

    A writer that finds the buffer full parks *with its value*; a reader that makes
    room moves the oldest parked value into the buffer (a bulk reader takes them all)
    and wakes its writer. So a drained buffer is really empty, rather than refilled at
    once by the writers it woke: producers and consumer that run in bursts (trio runs
    tasks in batches) do not ping-pong on a full buffer.
    """

    __slots__ = ("_capacity", "_items", "_parked", "_wake")

    def __init__(self, run: Run, capacity: int) -> None:
        super().__init__(run)
        self._items: deque[Any] = deque()
        self._capacity = capacity
        self._parked: deque[list[Any]] = deque()  # [parker, value] of waiting writers
        self._wake = run.backend.wake

    def put_nowait(self, item: Any) -> bool:
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        self._readers.wake_one()
        return True

    async def put(self, item: Any) -> None:
        """Add ``item``, waiting while the buffer is full; when this returns, the item
        is in the buffer or already taken."""
        if self.put_nowait(item):
            return
        entry = [self._run.backend.parker(), item]
        self._parked.append(entry)
        try:
            await entry[0]
        except BaseException:
            if entry in self._parked:  # not taken: the value goes nowhere, as cancelled
                self._parked.remove(entry)
            raise

    def _unpark(self) -> None:
        # After a reader took one value: the oldest parked value takes its place, and
        # is ready for another reader (the next stage may have several waiting).
        if self._parked and len(self._items) < self._capacity:
            parker, item = self._parked.popleft()
            self._items.append(item)
            self._wake(parker)
            self._readers.wake_one()

    async def get(self) -> Any:
        """The next value, or END once the stage completed and every value was taken.

        A stopped stage ends the stream at once: values still buffered are dropped,
        because the run is failing or being cancelled.
        """
        items = self._items
        while not items or self._state == self.ABORTED:
            if self._state != self.OPEN:
                return await self._end_of_stream()
            await self._readers.wait()
        item = items.popleft()
        if self._parked:
            self._unpark()
        return item

    def has_ready(self) -> bool:
        """Whether :meth:`get` would return without waiting."""
        return bool(self._items) and self._state != self.ABORTED

    def take_all(self) -> list[Any]:
        """Every value ready now, parked ones included (for bulk consumers)."""
        items = list(self._items)
        self._items.clear()
        parked, self._parked = self._parked, deque()
        for parker, item in parked:
            items.append(item)
            self._wake(parker)
        return items

    async def wait_ready(self) -> bool:
        """Wait until a value is ready (True) or the stream ended (False)."""
        while not self._items or self._state == self.ABORTED:
            if self._state != self.OPEN:
                await self._end_of_stream()
                return False
            await self._readers.wait()
        return True


class OrderedOutbox(_Reading):
    """Input-order buffer. Positions ``head .. head + window - 1`` may be in flight or
    finished; a finished value waits until every earlier one was delivered.

    Writers call :meth:`reserve` before reading an input, then :meth:`assign` (or
    :meth:`unreserve` at the end of the input) right after the read, with no await in
    between, so positions follow input order.
    """

    __slots__ = ("_end", "_head", "_next", "_reserved", "_slots", "_window", "_writers")

    def __init__(self, run: Run, window: int) -> None:
        super().__init__(run)
        self._slots: dict[int, Any] = {}
        self._head: int = 0
        self._next: int = 0
        self._reserved: int = 0
        self._window = window
        self._end: int | None = None
        self._writers = Waiters(run)

    async def reserve(self) -> None:
        while self._next + self._reserved >= self._head + self._window:
            await self._writers.wait()
        self._reserved += 1

    def assign(self) -> int:
        self._reserved -= 1
        position = self._next
        self._next += 1
        return position

    def unreserve(self) -> None:
        self._reserved -= 1
        self._writers.wake_one()

    def fill(self, position: int, value: Any) -> None:
        self._slots[position] = value
        if position == self._head:
            self._readers.wake_one()

    def has_ready(self) -> bool:
        """Whether :meth:`get` would return without waiting (the head value is
        finished, and was not dropped by a filter)."""
        value = self._slots.get(self._head, SKIP)
        return value is not SKIP and self._state != self.ABORTED

    async def get(self) -> Any:
        slots = self._slots
        while True:
            head = self._head
            if head in slots:
                value = slots.pop(head)
                self._head = head + 1
                self._writers.wake_one()
                if head + 1 in slots:
                    self._readers.wake_one()  # another reader may take the next one
                if value is SKIP:
                    continue
                return value
            if self._state == self.ABORTED or (self._state == self.DONE and head >= self._next):
                return await self._end_of_stream()
            await self._readers.wait()


class _Expansion:
    """The outputs of one input of an ordered ``flat_map``, in order."""

    __slots__ = ("done", "items")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.done = False


class OrderedFlatOutbox(OrderedOutbox):
    """Input-order buffer for ``flat_map``: the expansions of inputs in the window run
    at once; the head expansion streams to the reader while later ones buffer.

    At most ``capacity`` outputs wait in total, except that the head expansion may
    always add one output when it has none waiting: the head must never wait for room
    taken by later expansions, which cannot be delivered before it.
    """

    __slots__ = ("_buffered", "_capacity", "_head_writer", "_room")

    def __init__(self, run: Run, window: int, capacity: int) -> None:
        super().__init__(run, window)
        self._capacity = capacity
        self._buffered = 0
        self._room = Waiters(run)  # non-head expansions waiting for room
        self._head_writer = Waiters(run)  # the head expansion waiting for the reader

    def has_ready(self) -> bool:
        head: _Expansion | None = self._slots.get(self._head)
        return head is not None and bool(head.items) and self._state != self.ABORTED

    def open(self, position: int) -> _Expansion:
        expansion = _Expansion()
        self._slots[position] = expansion
        return expansion

    async def put(self, position: int, expansion: _Expansion, item: Any) -> None:
        while True:
            if position == self._head:
                if not expansion.items or self._buffered < self._capacity:
                    break
                await self._head_writer.wait()
            elif self._buffered < self._capacity:
                break
            else:
                await self._room.wait()
        expansion.items.append(item)
        self._buffered += 1
        if position == self._head:
            self._readers.wake_one()

    def finish_expansion(self, position: int, expansion: _Expansion) -> None:
        expansion.done = True
        if position == self._head:
            self._readers.wake_one()

    async def get(self) -> Any:
        slots = self._slots
        while True:
            expansion: _Expansion | None = slots.get(self._head)
            if expansion is not None:
                if expansion.items:
                    self._buffered -= 1
                    item = expansion.items.popleft()
                    self._head_writer.wake_one()
                    self._room.wake_one()
                    return item
                if expansion.done:
                    del slots[self._head]
                    self._head += 1
                    self._writers.wake_one()  # the window moved
                    self._room.wake_all()  # the new head may be among them
                    continue
            if self._state == self.ABORTED or (
                self._state == self.DONE and self._head >= self._next
            ):
                return await self._end_of_stream()
            await self._readers.wait()

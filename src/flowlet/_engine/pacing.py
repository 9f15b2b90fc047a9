"""Pacing: loops that may never suspend on their own give the event loop its turn.

An inline stage over a sync source, a filter dropping a long run of items, a worker
whose calls never wait: each would keep the event loop to itself. They count items and
look at the clock now and then (:class:`Pacer`), and let other tasks run about every
:data:`PACE_INTERVAL`.
"""

from __future__ import annotations

import time

from .._backend import current_backend

PACE_INTERVAL = 0.002
"""Seconds a loop that never suspends may keep the event loop to itself (about)."""


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


async def let_loop_run() -> None:
    """A checkpoint for the rare pauses of inline nodes (every PACE_INTERVAL at most)."""
    await current_backend().checkpoint()

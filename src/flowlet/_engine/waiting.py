"""Waiting without anyio's per-wait cost: tasks parked on one-shot wake-ups."""

from __future__ import annotations

from collections import deque

from .._backend import Parker
from .run import Run


class Waiters:
    """Tasks parked until something changes; woken one at a time or all at once."""

    __slots__ = ("_new", "_parked", "_wake")

    def __init__(self, run: Run) -> None:
        self._parked: deque[Parker] = deque()
        self._new = run.backend.parker
        self._wake = run.backend.wake

    def __bool__(self) -> bool:
        return bool(self._parked)

    async def wait(self) -> None:
        parker = self._new()
        self._parked.append(parker)
        try:
            await parker
        except BaseException:
            if parker in self._parked:
                self._parked.remove(parker)
            else:
                self.wake_one()  # woken, but leaving: pass the wake-up on
            raise

    def wake_one(self) -> None:
        if self._parked:
            self._wake(self._parked.popleft())

    def wake_all(self) -> None:
        parked, self._parked = self._parked, deque()
        for parker in parked:
            self._wake(parker)

"""Instrumented sources and iterators shared by the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio


class Tracked:
    """A sync iterator over ``items`` that counts pulls and closes.

    ``fail_at``: raise ``ReadError`` when asked for the item at that index.
    ``fail_close``: ``close()`` raises ``CloseError`` (after counting the close).
    """

    def __init__(self, items: Any, *, fail_at: int | None = None, fail_close: bool = False) -> None:
        self._items = iter(items)
        self.pulled = 0
        self.closes = 0
        self.fail_at = fail_at
        self.fail_close = fail_close

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.fail_at is not None and self.pulled == self.fail_at:
            raise ReadError(f"read {self.pulled} failed")
        item = next(self._items)
        self.pulled += 1
        return item

    def close(self) -> None:
        self.closes += 1
        if self.fail_close:
            raise CloseError("close failed")


class AsyncTracked:
    """The async twin of :class:`Tracked` (``aclose`` instead of ``close``); each read
    yields to the event loop once, like a real async source."""

    def __init__(self, items: Any, *, fail_at: int | None = None, fail_close: bool = False) -> None:
        self._items = iter(items)
        self.pulled = 0
        self.closes = 0
        self.fail_at = fail_at
        self.fail_close = fail_close

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        await anyio.lowlevel.checkpoint()
        if self.fail_at is not None and self.pulled == self.fail_at:
            raise ReadError(f"read {self.pulled} failed")
        try:
            item = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        self.pulled += 1
        return item

    async def aclose(self) -> None:
        self.closes += 1
        if self.fail_close:
            raise CloseError("close failed")


class ReadError(Exception):
    """Raised by a tracked source when reading fails."""


class CloseError(Exception):
    """Raised by a tracked iterator when closing fails."""


class StageError(Exception):
    """Raised by a stage function in tests."""

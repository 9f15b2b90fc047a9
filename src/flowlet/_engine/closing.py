"""Closing iterators: once each, in order, without losing the first failure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def close_sync(iterator: object) -> None:
    """Close a sync iterator if it can be closed (generators and the like)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


async def close_async(iterator: object) -> None:
    """Close an async iterator through ``aclose()``, if it has one."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def close_any(iterator: object) -> None:
    """Close an expansion or upstream of either kind."""
    if hasattr(iterator, "__anext__"):
        await close_async(iterator)
    else:
        close_sync(iterator)


async def close_all(iterators: Iterable[Any]) -> None:
    """Close every iterator in order; then raise the first failure, if any.

    A failure to close one iterator must not leave the others open.
    """
    first: BaseException | None = None
    for iterator in iterators:
        try:
            await close_any(iterator)
        except BaseException as exc:  # noqa: PERF203 - raised below, once all are closed
            if first is None:
                first = exc
    if first is not None:
        raise first

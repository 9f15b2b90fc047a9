"""Helpers for the concurrency, backpressure and error tests."""

from __future__ import annotations

import asyncio

import anyio


async def settle() -> None:
    """Return once every other task is blocked, like ``anyio.wait_all_tasks_blocked()``.

    On asyncio, anyio's version sleeps 0.1 s each time it finds a task that can run; these
    tests settle thousands of times, so this one yields with ``sleep(0)`` instead (and
    wants to see everything blocked twice in a row, so that a wake-up still queued in the
    loop is not missed). Trio has an exact native implementation.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        await anyio.wait_all_tasks_blocked()
        return
    this_task = asyncio.current_task()
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(0)
        quiet = quiet + 1 if _all_blocked(this_task) else 0


def _all_blocked(this_task: object) -> bool:
    for task in asyncio.all_tasks():
        if task is this_task:
            continue
        waiter = task._fut_waiter  # type: ignore[attr-defined]
        if waiter is None or waiter.done():
            return False
    return True


DEFAULT_BUFFER_FACTOR = 2
"""``buffer=None`` means ``2 * concurrency`` (docs/concurrency.md)."""


def run_ahead(concurrency: int = 1, buffer: int | None = None, *, decoupled: bool = True) -> int:
    """The documented bound on input items a stage holds: ``concurrency + buffer``,
    or 0 for an inline stage."""
    if not decoupled:
        return 0
    return concurrency + (DEFAULT_BUFFER_FACTOR * concurrency if buffer is None else buffer)

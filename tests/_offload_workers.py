"""Module-level functions for the offload tests.

Worker processes import these by name (``in_process`` pickles functions by reference),
so they must live in an importable module, not inside a test.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any


def square(n: int) -> int:
    return n * n


def is_even(n: int) -> bool:
    return n % 2 == 0


def repeat(n: int) -> list[int]:
    """``n`` copies of ``n`` (so 0 expands to nothing)."""
    return [n] * n


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def pid_of(_: object) -> int:
    return os.getpid()


class WorkerError(Exception):
    """Raised in a worker process; plain and picklable."""


def fail_on_three(n: int) -> int:
    if n == 3:
        raise WorkerError(f"worker failed on {n}")
    return n


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(n: int) -> int:
    if n == 3:
        raise LockedError(f"unpicklable failure on {n}")
    return n


class LambdaError(Exception):
    """An exception that cannot be pickled: it holds a lambda."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.callback = lambda: None


def raise_lambda_holder(n: int) -> int:
    if n == 3:
        raise LambdaError(f"unpicklable failure on {n}")
    return n


class TwoArgError(Exception):
    """Pickles fine but cannot be unpickled: ``args`` holds one value, ``__init__`` needs two."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def raise_unloadable(n: int) -> int:
    if n == 3:
        raise TwoArgError(f"unloadable failure on {n}", 7)
    return n


def return_lock(_: object) -> object:
    return threading.Lock()


def die(n: int) -> int:
    if n == 3:
        os._exit(1)
    return n


async def async_square(n: int) -> int:
    return n * n


async def async_repeat(n: int) -> AsyncIterator[int]:
    for _ in range(n):
        yield n


class AsyncCallable:
    async def __call__(self, n: int) -> int:
        return n


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


def identity(x: Any) -> Any:
    return x

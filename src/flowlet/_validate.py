"""Argument checks shared by every front end.

Every message names the argument and the value it got, so a mistake is found where the
pipeline is built rather than when it runs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import AsyncIterable, Iterable
from typing import Any


def check_count(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int >= 1`` (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_size(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int >= 0`` (``bool`` is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def check_positive(name: str, value: object, what: str = "a number") -> float:
    """Return ``value`` as a float if it is a finite number > 0 (``bool`` is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be {what} > 0, got {value!r}")
    return float(value)


def check_seconds(name: str, value: object) -> float:
    """A duration: a finite number of seconds > 0."""
    return check_positive(name, value, "a number of seconds")


def check_optional_count(name: str, value: object) -> int | None:
    """Like :func:`check_count`, but ``None`` (meaning "the default") passes through."""
    return None if value is None else check_count(name, value)


def check_flag(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``; truthy strings and ints are mistakes."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {fn!r}")


def check_source(source: object) -> None:
    if not isinstance(source, (Iterable, AsyncIterable)):
        raise TypeError(
            "pipe() needs an iterable or an async iterable as its source, "
            f"got {type(source).__name__} {source!r}"
        )


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _class_call(fn: object) -> object:
    """The ``__call__`` of ``fn``'s class (what ``fn(...)`` runs), or None."""
    return getattr(fn.__class__, "__call__", None)  # noqa: B004 - the class attribute


def is_coroutine_callable(fn: Any) -> bool:
    """True if calling ``fn`` returns a coroutine: ``async def`` functions, partials of
    them, and objects whose ``__call__`` is ``async def``."""
    fn = _unwrap(fn)
    if inspect.iscoroutinefunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(_class_call(fn))


def is_async_generator_callable(fn: Any) -> bool:
    """True if calling ``fn`` returns an async generator (also behind a partial)."""
    fn = _unwrap(fn)
    if inspect.isasyncgenfunction(fn):
        return True
    return not inspect.isroutine(fn) and inspect.isasyncgenfunction(_class_call(fn))


def describe(fn: object) -> str:
    """A short human name for a callable, for error messages."""
    inner = _unwrap(fn)
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
    return name if isinstance(name, str) else repr(fn)

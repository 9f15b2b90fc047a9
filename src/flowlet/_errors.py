"""Run-time mistakes in user code, turned into errors that say what happened.

Two exceptions mean "the end" to Python's iteration protocols: ``StopIteration`` and
``StopAsyncIteration``. Raised by a stage function, they would end the stream early and
silently wherever the engine or a builtin iterates; raised inside a coroutine, Python
turns them into a ``RuntimeError`` that names no stage. The engine catches them where
it calls user code and raises :func:`stop_error` instead, with the original as its
``__cause__``.
"""

from __future__ import annotations

import functools
import inspect
from types import CodeType

STOPS = (StopIteration, StopAsyncIteration)
"""The exceptions that mean "the end" to an iteration protocol."""


def one_of(names: list[str]) -> str:
    """``"map(f)"``, or ``"one of map(f), filter(g)"``: who may have raised."""
    return names[0] if len(names) == 1 else f"one of {', '.join(names)}"


def swallowed_stop_error(names: list[str], effect: str) -> RuntimeError:
    """A StopIteration that a builtin ``map``/``filter`` took for the end (so the
    exception itself is gone) was raised by one of the functions ``names``."""
    return RuntimeError(
        f"{one_of(names)} raised StopIteration, which would have silently {effect}; "
        "raise another exception instead"
    )


def stop_error(exc: BaseException, what: str) -> RuntimeError:
    """``what`` (a stage, "the source", ...) raised ``exc``, a StopIteration or a
    StopAsyncIteration: the error to raise instead, chained to ``exc``."""
    error = RuntimeError(
        f"{what} raised {type(exc).__name__}, which would have silently ended the stream "
        "early; raise another exception instead"
    )
    error.__cause__ = exc
    return error


_PEP_479 = frozenset(
    {
        "coroutine raised StopIteration",
        "generator raised StopIteration",
        "async generator raised StopIteration",
        "async generator raised StopAsyncIteration",
    }
)
"""Python's messages when a StopIteration (or StopAsyncIteration) leaves a frame that
may not raise it (PEP 479); the original is the ``__cause__``."""


def clarify(exc: BaseException, what: str) -> BaseException:
    """The error to raise for ``exc``, caught where ``what`` (a stage, the source) was
    called: a :func:`stop_error` for a StopIteration or StopAsyncIteration, raw or as
    Python's PEP 479 RuntimeError; else ``exc`` itself."""
    if isinstance(exc, STOPS):
        return stop_error(exc, what)
    cause = exc.__cause__
    if type(exc) is RuntimeError and isinstance(cause, STOPS) and str(exc) in _PEP_479:
        return stop_error(cause, what)
    return exc


def innermost_code(exc: BaseException) -> CodeType | None:
    """The code object of the frame that raised ``exc`` (to tell which of several
    functions it was), or None."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code


def code_of(fn: object) -> CodeType | None:
    """The code object ``fn`` runs, through partials; None for builtins and the like."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    return code if isinstance(code, CodeType) else None


def is_awaitable_result(result: object) -> bool:
    """Whether a plain function's result looks like a forgotten ``await``: an awaitable
    that is not also an async iterable (a pipeline is both, and is data)."""
    return inspect.isawaitable(result) and not hasattr(result, "__aiter__")


def close_unawaited(result: object) -> None:
    """Close a coroutine that will never be awaited (no "never awaited" warning)."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


def awaitable_error(result: object, what: str, explanation: str) -> TypeError:
    """``what`` returned the awaitable ``result`` where a value was expected; it is
    closed, and ``explanation`` says why that is wrong and what to write instead."""
    close_unawaited(result)
    return TypeError(f"{what} returned {type(result).__name__} {result!r}, {explanation}")

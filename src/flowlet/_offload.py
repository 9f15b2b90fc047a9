"""Blocking work off the event loop: ``in_thread``, ``in_process``, ``thread_local``."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import pickle
import threading
import traceback
import types
from collections.abc import Callable, Generator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Generic, TypeVar, cast, overload

from typing_extensions import ParamSpec

from ._backend import current_backend
from ._errors import STOPS, awaitable_error, is_awaitable_result, stop_error
from ._threads import DaemonThreadPool, default_pool
from ._validate import (
    check_callable,
    describe,
    is_async_generator_callable,
    is_coroutine_callable,
)

P = ParamSpec("P")
R = TypeVar("R")


def _reject_async(api: str, fn: object, instead: str) -> None:
    check_callable(f"{api}() function", fn)
    if is_coroutine_callable(fn) or is_async_generator_callable(fn):
        kind = "an async generator function" if is_async_generator_callable(fn) else "async"
        raise TypeError(f"{api}() needs a sync function, but {describe(fn)} is {kind}; {instead}")


async def _wait(future: Future[R]) -> R:
    loop = asyncio._get_running_loop()
    if loop is not None:  # asyncio (or uvloop): skip the backend lookup on the hot path
        return await asyncio.wrap_future(future, loop=loop)
    return await current_backend().wait_future(future)


_OFFLOADED_AWAITABLE = (
    "but {api}() runs a sync function in a worker, where nothing awaits what it returns. "
    "Pass the async function to the stage itself (`.map(fetch)`): it runs on the event "
    "loop without blocking it"
)


def checked_call(fn: Callable[..., R], api: str) -> Callable[..., R]:
    """``fn`` for a worker thread or process: a StopIteration it raises, or an awaitable
    it returns, becomes an error saying so. (A StopIteration cannot even be set on an
    asyncio future: it would be lost in the event loop and the caller would wait for
    ever.)"""
    what = f"{api}({describe(fn)})"

    def call(*args: Any, **kwargs: Any) -> R:
        try:
            result = fn(*args, **kwargs)
        except STOPS as exc:
            raise stop_error(exc, what) from exc
        if is_awaitable_result(result):
            raise awaitable_error(result, what, _OFFLOADED_AWAITABLE.format(api=api))
        return result

    return call


class ThreadCall(Generic[P, R]):
    """An async callable that runs a blocking function in a worker thread.

    Made by :func:`in_thread`; keeps the wrapped function's name and docstring.
    """

    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(self, fn: Callable[P, R], executor: ThreadPoolExecutor | None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.executor = executor
        self.checked: Callable[..., R] = checked_call(fn, "in_thread")
        """``fn`` as it runs in the thread (see :func:`checked_call`)."""

    @property
    def pool(self) -> ThreadPoolExecutor | DaemonThreadPool:
        return self.executor if self.executor is not None else default_pool()

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(contextvars.copy_context().run, self.checked, *args, **kwargs)
        return await _wait(self.pool.submit(call))

    def __repr__(self) -> str:
        return f"in_thread({describe(self.fn)})"


def in_thread(
    fn: Callable[P, R], /, *, executor: ThreadPoolExecutor | None = None
) -> ThreadCall[P, R]:
    """Wrap a blocking sync function so that each call runs in a worker thread.

    The call sees a copy of the caller's context variables. Without ``executor`` it runs
    in flowlet's default pool of up to 40 daemon threads; pass a
    ``ThreadPoolExecutor`` to choose the pool (stages sharing one pool share its
    threads). Parallelism is the smaller of the stage's ``concurrency`` and the pool's
    size. Cancelling the pipeline stops waiting for the result; a call already running
    in a thread finishes there and its result is dropped.

    :raises TypeError: ``fn`` is async (pass it to the stage directly), or
        ``executor`` is not a ``ThreadPoolExecutor`` (for processes use
        :func:`in_process`).
    """
    _reject_async("in_thread", fn, "pass it to the stage directly, it does not block the loop")
    if isinstance(executor, ProcessPoolExecutor):
        raise TypeError(
            "in_thread() takes a ThreadPoolExecutor, got a ProcessPoolExecutor; "
            "use in_process(fn, executor=...) to run in processes"
        )
    if executor is not None and not isinstance(cast(object, executor), ThreadPoolExecutor):
        raise TypeError(
            f"in_thread() executor must be a ThreadPoolExecutor, got {type(executor).__name__}"
        )
    return ThreadCall(fn, executor)


class ProcessCallError(Exception):
    """A function run by :func:`in_process` raised an exception that cannot travel back
    from the worker process as itself (it cannot be pickled, or not rebuilt).

    Carries what it can as text: :attr:`type_name` (``module.QualName``), :attr:`message`
    (``str()`` of the exception) and :attr:`remote_traceback` (formatted in the worker).
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(type_name, message, remote_traceback)  # args rebuild it on unpickle
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return (
            f"{self.type_name}: {self.message} (raised in a worker process; it cannot be pickled)"
        )


def _call_in_worker(fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    """Runs in the worker process: an exception that would not survive the trip back
    (and could break the whole pool) is replaced by a :class:`ProcessCallError`."""
    try:
        return checked_call(fn, "in_process")(*args, **kwargs)
    except BaseException as exc:
        if _survives_pickling(exc):
            raise
        error = ProcessCallError(
            f"{type(exc).__module__}.{type(exc).__qualname__}",
            _safe_str(exc),
            traceback.format_exc(),
        )
    raise error


def _survives_pickling(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not hide the original failure
        return f"<{type(exc).__name__} with an unprintable message>"


class ProcessCall(Generic[P, R]):
    """An async callable that runs a function in a process pool; made by :func:`in_process`."""

    __name__: str
    __qualname__: str
    __wrapped__: Callable[P, R]

    def __init__(self, fn: Callable[P, R], executor: ProcessPoolExecutor) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.executor = executor

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await _wait(self.executor.submit(_call_in_worker, self.fn, args, kwargs))

    def __repr__(self) -> str:
        return f"in_process({describe(self.fn)})"


def in_process(fn: Callable[P, R], /, *, executor: ProcessPoolExecutor) -> ProcessCall[P, R]:
    """Wrap a CPU-bound sync function so that each call runs in ``executor``.

    The pool is required: you create it and shut it down. ``fn``, its arguments and
    its results travel by pickle, so ``fn`` must be a module-level function (checked
    here); context variables do not cross into the worker process. Cancelling the
    pipeline stops waiting; a call already running in a worker finishes there.

    :raises TypeError: ``fn`` is async or cannot be pickled, or ``executor`` is not a
        ``ProcessPoolExecutor``.
    """
    _reject_async("in_process", fn, "processes run sync functions only")
    candidate = cast(object, executor)  # checked at run time: callers may not be type-checked
    if not isinstance(candidate, ProcessPoolExecutor):
        hint = (
            "; use in_thread() for a thread pool"
            if isinstance(executor, ThreadPoolExecutor)
            else ""
        )
        raise TypeError(
            f"in_process() executor must be a ProcessPoolExecutor, got "
            f"{type(candidate).__name__}{hint}"
        )
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(
            f"in_process() needs a function that can be pickled to reach the worker "
            f"processes; {describe(fn)} cannot ({exc}). Define it at module level."
        ) from exc
    return ProcessCall(fn, executor)


class _Resource:
    """One thread's resource; closes its generator when the thread's storage goes away."""

    __slots__ = ("generator", "value")

    def __init__(self, value: Any, generator: Generator[Any, None, None] | None) -> None:
        self.value = value
        self.generator = generator

    def close(self) -> None:
        generator, self.generator = self.generator, None
        if generator is not None:
            generator.close()

    def __del__(self) -> None:
        self.close()


class ThreadLocal(Generic[R]):
    """A per-thread resource made by :func:`thread_local`: call it to get this thread's."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        functools.update_wrapper(self, factory)
        self._factory = factory
        self._local = threading.local()

    def __call__(self) -> R:
        resource: _Resource | None = getattr(self._local, "resource", None)
        if resource is None:
            resource = self._create()
            self._local.resource = resource
        value: R = resource.value
        return value

    def _create(self) -> _Resource:
        made: Any = self._factory()
        if not isinstance(made, types.GeneratorType):
            return _Resource(made, None)
        generator = cast("Generator[Any, None, None]", made)
        try:
            value = next(generator)
        except StopIteration:
            raise RuntimeError(
                f"thread_local factory {describe(self._factory)} returned without yielding "
                "a value; a generator factory must yield the resource once"
            ) from None
        return _Resource(value, generator)

    def close(self) -> None:
        """Close the calling thread's resource (if any) and forget it; the next call in
        this thread makes a new one. Other threads' resources are untouched."""
        resource: _Resource | None = getattr(self._local, "resource", None)
        if resource is not None:
            del self._local.resource
            resource.close()

    def __repr__(self) -> str:
        return f"thread_local({describe(self._factory)})"


@overload
def thread_local(factory: Callable[[], Generator[R, None, None]], /) -> ThreadLocal[R]: ...
@overload
def thread_local(factory: Callable[[], R], /) -> ThreadLocal[R]: ...
def thread_local(factory: Callable[[], Any], /) -> ThreadLocal[Any]:
    """Make one resource per thread, lazily: ``client = thread_local(make_client)``.

    ``factory`` is a plain function returning the resource, or a generator function
    that yields it once. The generator is closed (not resumed: put the cleanup in a
    ``finally`` block, or a ``with`` block around the ``yield``) when the resource is
    closed: by ``.close()`` in that thread, or when the thread exits (for example when
    a ``ThreadPoolExecutor`` you own shuts down).

    :raises TypeError: ``factory`` is async.
    """
    _reject_async("thread_local", factory, "a per-thread resource is made by a sync function")
    return ThreadLocal(factory)

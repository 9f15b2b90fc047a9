"""The few event-loop primitives the engine needs on its hot paths, per backend.

Task groups, cancel scopes and shielding come from anyio. What anyio cannot give
cheaply is here: a one-shot wake-up ("parker") that costs a future rather than an
``anyio.Event`` (which costs about 30x more on asyncio), a checkpoint, a task that
lives outside the caller's scopes, and a thread-safe call into the loop. Each backend
is chosen once per run with :func:`current_backend`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, ClassVar, Protocol, TypeVar, cast

import anyio.lowlevel

T = TypeVar("T")


class Parker(Protocol):
    """A one-shot wake-up: a task awaits it, another task (or the same loop) wakes it."""

    def __await__(self) -> Generator[Any, Any, Any]: ...


class Backend(Protocol):
    """What the engine asks of an event loop. Attributes are plain callables so that the
    hot paths pay for one call, not for a method that forwards to another."""

    name: str
    cancelled: type[BaseException]
    """The exception the event loop cancels a task with."""
    parker: Callable[[], Parker]
    wake: Callable[[Parker], None]
    checkpoint: Callable[[], Awaitable[None]]

    def is_cancellation(self, exc: BaseException) -> bool:
        """Whether ``exc``, caught in the running task, is that task being cancelled (as
        opposed to user code raising a cancellation exception as an ordinary value)."""
        ...

    def spawn_detached(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None: ...
    async def run_tasks(self, fns: list[Callable[[], Coroutine[Any, Any, None]]]) -> None: ...
    def threadsafe_caller(self) -> Callable[[Callable[[], object]], object]: ...
    async def wait_future(self, future: concurrent.futures.Future[T]) -> T: ...


class AsyncioBackend:
    name = "asyncio"
    cancelled: type[BaseException] = asyncio.CancelledError

    # Detached tasks are referenced here until they finish: asyncio keeps only weak
    # references to tasks, and a runner collected mid-flight would vanish silently.
    _detached: ClassVar[set[asyncio.Task[None]]] = set()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.parker: Callable[[], Parker] = loop.create_future
        self.wake: Callable[[Parker], None] = _wake_future  # type: ignore[assignment]
        self.checkpoint: Callable[[], Awaitable[None]] = _asyncio_checkpoint
        self._workers: set[asyncio.Task[None]] = set()  # made by run_tasks, still running
        self._cancelled: set[asyncio.Task[None]] = set()  # ... and cancelled by run_tasks

    def is_cancellation(self, exc: BaseException) -> bool:
        # A CancelledError is also an exception user code can raise (or let escape from
        # a future it cancelled itself). Treating that one as the run's cancellation
        # would stop a stage without a failure and leave its reader waiting for a
        # cancellation that never comes.
        if not isinstance(exc, asyncio.CancelledError):
            return False
        task = asyncio.current_task(self.loop)
        if task in self._workers:  # ours: cancelled only by run_tasks, which says so
            return task in self._cancelled
        cancelling = getattr(task, "cancelling", None)  # Python 3.11+
        return cancelling is None or cancelling() > 0

    async def run_tasks(self, fns: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run a task per function to the end; if cancelled, cancel them and wait.

        Plain loop tasks cost about a tenth of an anyio task-group spawn, which matters
        for stages with a hundred workers. They are safe here because the functions
        never raise anything but their own cancellation, and the calling task (inside
        the run's task group and cancel scopes) owns their lifetime.
        """
        tasks = [self.loop.create_task(fn()) for fn in fns]
        self._workers.update(tasks)
        try:
            await asyncio.wait(tasks)
        except BaseException:
            self._cancelled.update(tasks)
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks)
            raise
        finally:
            self._workers.difference_update(tasks)
            self._cancelled.difference_update(tasks)

    def spawn_detached(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self.loop.create_task(fn())
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    def threadsafe_caller(self) -> Callable[[Callable[[], object]], object]:
        return self.loop.call_soon_threadsafe

    async def wait_future(self, future: concurrent.futures.Future[T]) -> T:
        # wrap_future cancels the concurrent future when the wait is cancelled, so a
        # call still queued in the pool never starts.
        return await asyncio.wrap_future(future, loop=self.loop)


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TrioBackend:
    name = "trio"

    def __init__(self) -> None:
        import trio
        import trio.lowlevel

        self._trio = trio
        self._lowlevel = trio.lowlevel
        self.cancelled: type[BaseException] = trio.Cancelled
        self.checkpoint: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint
        self.parker: Callable[[], Parker] = lambda: _TrioParker(trio.lowlevel)
        self.wake: Callable[[Parker], None] = _TrioParker.wake  # type: ignore[assignment]
        self._token = trio.lowlevel.current_trio_token()

    def is_cancellation(self, exc: BaseException) -> bool:
        # trio.Cancelled cannot be made by user code; asyncio's CancelledError raised
        # under trio is an ordinary exception.
        return isinstance(exc, self.cancelled)

    async def run_tasks(self, fns: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        async with anyio.create_task_group() as tg:
            for fn in fns:
                tg.start_soon(fn)

    def spawn_detached(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._lowlevel.spawn_system_task(
            fn, name="flowlet pipeline runner", context=contextvars.copy_context()
        )

    def threadsafe_caller(self) -> Callable[[Callable[[], object]], object]:
        run_sync_soon: Callable[[Callable[[], object]], object] = self._token.run_sync_soon
        return run_sync_soon

    async def wait_future(self, future: concurrent.futures.Future[T]) -> T:
        if not future.done():
            parker = _TrioParker(self._lowlevel)
            call_soon = self._token.run_sync_soon
            waiting = True

            def on_done(_: object) -> None:
                # From the pool thread. Once the wait was abandoned, trio.run may have
                # returned: then there is nobody to wake and nothing to report.
                if waiting:
                    with contextlib.suppress(RuntimeError):  # trio.RunFinishedError
                        call_soon(parker.wake)

            future.add_done_callback(on_done)
            try:
                await parker
            except BaseException:
                waiting = False
                future.cancel()
                raise
        return future.result()


class _TrioParker:
    __slots__ = ("_lowlevel", "_task", "_woken")

    def __init__(self, lowlevel: Any) -> None:
        self._lowlevel = lowlevel
        self._task: Any = None
        self._woken = False

    def wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        task, self._task = self._task, None
        if task is not None:
            self._lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> object:
        self._task = None
        self._woken = True  # a cancelled wait is spent: later wakes are no-ops
        return self._lowlevel.Abort.SUCCEEDED

    def __await__(self) -> Generator[Any, Any, Any]:
        if self._woken:  # woken before the wait: return at once, as a done future does
            return None
        self._task = self._lowlevel.current_task()
        wait = cast(
            "Generator[Any, Any, Any]",
            self._lowlevel.wait_task_rescheduled(self._abort).__await__(),
        )
        return (yield from wait)


def current_backend() -> Backend:
    """The backend of the running event loop (asyncio, uvloop or trio).

    Checks for a running asyncio loop first, without anyio: a pipeline that needs no
    task should not pay for importing anyio's backend machinery.
    """
    loop = asyncio._get_running_loop()
    if loop is not None:
        return AsyncioBackend(loop)
    native = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):  # pragma: no cover - a foreign loop
        return AsyncioBackend(native)
    return TrioBackend()

"""``async for`` over a pipeline: a runner task for the workers, and an iterator that is
safe to abandon on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, cast

import anyio

from .._backend import Backend, current_backend
from .drive import Opened, close_final, paced_items, start_workers
from .plan import Stage, build
from .run import Run
from .workers import DecoupledStage

logger = logging.getLogger("flowlet")


def iterate(source: Any, stages: Sequence[Stage]) -> AsyncGenerator[Any, None]:
    """``async for`` over a pipeline; the run starts at the first ``__anext__``.

    Nothing yields inside a cancel scope: the workers live in a runner task. Leaving
    the loop by any route ends in the cleanup below, which stops the runner and closes
    every iterator: at once for exhaustion, errors and ``aclose()``; for a ``break`` or
    garbage collection, as soon as the event loop runs the close scheduled by
    :class:`PipelineIterator`.
    """

    def open_run() -> Opened:
        run = Run()
        final, decoupled = build(source, stages, run)
        runner: Runner | None = None
        if decoupled:
            decoupled[-1].outbox.read_outside_run()
            runner = Runner(run, decoupled)
            runner.start()

        async def cleanup(primary: BaseException | None) -> None:
            try:
                if runner is not None:
                    await runner.stop()
                await close_final(final, run, failed=primary is not None or run.failed)
                if primary is None:
                    run.raise_failure()
            except Exception:
                if primary is not None or not _finalised_by_asyncio():
                    raise
                # Nobody will see this exception: asyncio closes an abandoned async
                # generator in a task of its own, which would only say "Task exception
                # was never retrieved". Say what happened instead.
                logger.exception("flowlet: closing an abandoned pipeline iterator failed")

        return final, run, cleanup

    if asyncio._get_running_loop() is not None:
        # asyncio finalises an abandoned async generator itself, without a warning: the
        # run's generator is handed out as it is, saving a call per item.
        return paced_items(open_run)
    return cast("AsyncGenerator[Any, None]", PipelineIterator(open_run))


class PipelineIterator:
    """The async iterator of a pipeline on trio: an async generator in all but type.

    It wraps the run's generator so that abandoning it is clean: when it is garbage
    collected half-way (after ``break``), it schedules the generator's ``aclose()`` on
    the event loop instead of leaving the generator to the collector, which trio warns
    about. (asyncio finalises abandoned async generators quietly, through its hooks.)
    """

    __slots__ = ("_backend", "_gen", "_open_run")

    def __init__(self, open_run: Callable[[], Opened]) -> None:
        self._open_run = open_run
        self._gen: AsyncGenerator[Any, None] | None = None
        self._backend: Backend | None = None

    def _started(self) -> AsyncGenerator[Any, None]:
        if self._gen is None:
            self._backend = current_backend()
            self._gen = paced_items(self._open_run)
        return self._gen

    def __aiter__(self) -> PipelineIterator:
        return self

    # Not `async def`: handing out the generator's own awaitables costs no extra frame.

    def __anext__(self) -> Awaitable[Any]:
        return (self._gen or self._started()).__anext__()

    def asend(self, value: None) -> Awaitable[Any]:
        return (self._gen or self._started()).asend(value)

    def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> Awaitable[Any]:
        return (self._gen or self._started()).athrow(typ, val, tb)

    def aclose(self) -> Awaitable[None]:
        return (self._gen or _closed_gen()).aclose()

    def __del__(self) -> None:
        gen, backend = self._gen, self._backend
        if gen is None or backend is None or getattr(gen, "ag_frame", None) is None:
            return  # never started, or already finished

        def close_soon() -> None:
            try:
                backend.spawn_detached(lambda: _close(gen))
            except RuntimeError:  # the run is shutting down: no new tasks
                _close_now(gen)

        with contextlib.suppress(RuntimeError):  # the event loop is gone: nothing to close
            backend.threadsafe_caller()(close_soon)


cast(Any, AsyncGenerator).register(PipelineIterator)  # an async generator in all but type


def _closed_gen() -> AsyncGenerator[Any, None]:
    """An empty generator, for ``aclose()`` on an iterator that never started."""

    async def nothing() -> AsyncGenerator[Any, None]:
        return
        yield  # pragma: no cover - makes this an async generator

    return nothing()


def _close_now(abandoned: AsyncGenerator[Any, None]) -> None:
    """Close without a task, as the event loop shuts down: run the cleanup until it
    would wait (a pipeline without workers closes its source without waiting)."""
    closing = abandoned.aclose().__await__()
    try:
        closing.send(None)
    except StopIteration:
        return
    except Exception:
        logger.exception("flowlet: closing an abandoned pipeline iterator failed")
        return
    closing.close()  # it has to wait, and nothing will run it any more


def _finalised_by_asyncio() -> bool:
    """Whether the running task is asyncio closing an abandoned async generator (its
    finaliser hook runs ``aclose()`` in a task of its own)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio
        return False
    return task is not None and type(task.get_coro()).__name__ == "async_generator_athrow"


async def _close(abandoned: AsyncGenerator[Any, None]) -> None:
    try:
        await abandoned.aclose()
    except Exception:
        # Nobody is left to receive it: report it the way asyncio reports failures of
        # the async generators it finalises.
        logger.exception("flowlet: closing an abandoned pipeline iterator failed")


class Runner:
    """Hosts the workers of a detached iteration in a task outside the consumer's scopes."""

    def __init__(self, run: Run, decoupled: list[DecoupledStage]) -> None:
        self._run = run
        self._decoupled = decoupled
        self._done = anyio.Event()

    def start(self) -> None:
        self._run.backend.spawn_detached(self._host)

    async def _host(self) -> None:
        run = self._run
        try:
            with run.scope:
                async with anyio.create_task_group() as tg:
                    start_workers(tg, self._decoupled)
        except BaseException as exc:
            # Workers never raise; what arrives here is a cancellation from outside
            # (the event loop shutting down), which must be allowed to end the task.
            if not run.is_cancellation(exc):  # pragma: no cover - defensive
                run.fail(exc)
                return
            raise
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Cancel the workers (if still running) and wait until every close is done."""
        self._run.scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._done.wait()

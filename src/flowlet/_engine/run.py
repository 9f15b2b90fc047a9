"""The state one execution of a pipeline shares between its tasks."""

from __future__ import annotations

from typing import NoReturn, cast

import anyio

from .._backend import Backend, current_backend
from .._errors import STOPS, stop_error


class Run:
    """Outcome and cancellation of one pipeline execution.

    Fail fast without exception groups: the first failure anywhere is recorded here and
    cancels the run's scope; the terminal re-raises that exception itself once every
    task has stopped. A failure to close an iterator is kept apart and only reported
    when nothing else failed.
    """

    __slots__ = ("_scope", "backend", "close_error", "error", "stopping")

    def __init__(self) -> None:
        self.backend: Backend = current_backend()
        self._scope: anyio.CancelScope | None = None
        self.error: BaseException | None = None
        self.close_error: BaseException | None = None
        self.stopping = False
        """Set once something failed: workers read no further input (a worker that never
        suspends would not see the cancellation until it did)."""

    @property
    def scope(self) -> anyio.CancelScope:
        """The cancel scope around every task of the run (made when first needed: a run
        without workers never needs one)."""
        if self._scope is None:
            self._scope = anyio.CancelScope()
        return self._scope

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` unless something failed first, and stop the run.

        A StopIteration or StopAsyncIteration is recorded as a RuntimeError: raised to
        a reader of the run's output, it would read as the end of the stream."""
        if isinstance(exc, STOPS):
            exc = stop_error(exc, "a stage function")
        if self.error is None:
            self.error = exc
        self.stopping = True
        self.scope.cancel()

    def fail_close(self, exc: BaseException) -> None:
        """A close failed while nothing else had: report it (below any read or stage
        failure that follows), and stop the run."""
        self.close_failed(exc)
        self.stopping = True
        self.scope.cancel()

    def close_failed(self, exc: BaseException) -> None:
        """Record a failure to close an iterator; it never replaces :attr:`error`."""
        if self.close_error is None:
            self.close_error = self.own_context(exc)

    def own_context(self, exc: BaseException) -> BaseException:
        """``exc``, raised by a close the engine ran while it was unwinding (a
        cancellation, a generator's ``GeneratorExit``), without that unwinding as its
        ``__context__``: it is the engine's business, not part of the failure, and on
        trio it would print as a group of cancellations in front of it."""
        link = exc
        for _ in range(_CONTEXT_DEPTH):
            context = link.__context__
            if context is None:
                break
            if self._is_unwinding(context):
                link.__context__ = None
                break
            link = context
        return exc

    def _is_unwinding(self, exc: BaseException) -> bool:
        if isinstance(exc, (GeneratorExit, self.backend.cancelled)):
            return True
        # A (Base)ExceptionGroup, builtin or from the exceptiongroup backport (3.10)
        inner: object = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or not inner:
            return False
        members = cast("tuple[object, ...]", inner)
        return all(isinstance(e, BaseException) and self._is_unwinding(e) for e in members)

    @property
    def failed(self) -> bool:
        return self.error is not None or self.close_error is not None

    def is_cancellation(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the running task being cancelled; a cancellation exception
        raised by user code as a value is a failure like any other."""
        return self.backend.is_cancellation(exc)

    def raise_failure(self) -> None:
        """Raise the recorded failure, if any: a stage or read failure first."""
        failure = self.error or self.close_error
        if failure is not None:
            _reraise(failure)


_CONTEXT_DEPTH = 32
"""How far :meth:`Run.own_context` follows a chain of contexts (chains can be cycles)."""


def _reraise(exc: BaseException) -> NoReturn:
    # Raising while a cancellation is being handled (by this frame or, through a context
    # manager's athrow, by a caller) would chain that unrelated cancellation onto the
    # failure as its __context__: a second traceback in front of the user's. Keep the
    # context the failure had when it was raised where it happened.
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context

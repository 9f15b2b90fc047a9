"""flowlet's default thread pool: daemon threads, created on demand.

Why not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so a call
blocked in a worker thread (a hung socket, a long sleep) would keep a process that got
Ctrl-C alive until the call returns. Cancellation cannot interrupt a running thread;
daemon threads at least let the process exit.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, TypeVar

R = TypeVar("R")

DEFAULT_THREADS = 40
"""Threads in the default pool used by :func:`flowlet.in_thread` without ``executor=``."""


class DaemonThreadPool:
    """A minimal executor (``submit`` only) whose threads never block interpreter exit."""

    _names = itertools.count()

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._work: SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            SimpleQueue()
        )
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., R], /, *args: Any) -> Future[R]:
        """Queue ``fn(*args)`` for a worker thread, starting one if none is idle."""
        future: Future[R] = Future()
        self._work.put((future, fn, args))
        if not self._idle.acquire(blocking=False):
            self._add_thread()
        return future

    def _add_thread(self) -> None:
        with self._lock:
            if len(self._threads) >= self.max_workers:
                return
            thread = threading.Thread(
                target=self._serve, name=f"flowlet-worker-{next(self._names)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        while True:
            future, fn, args = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                    del result
            del future, fn, args  # do not keep the last call's objects alive while idle
            self._idle.release()


_default_pool: DaemonThreadPool | None = None
_default_lock = threading.Lock()


def default_pool() -> DaemonThreadPool:
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = DaemonThreadPool(DEFAULT_THREADS)
        return _default_pool

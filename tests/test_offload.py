"""Blocking work off the event loop: ``in_thread``, ``in_process`` and ``thread_local``."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextvars import ContextVar
from typing import Any

import anyio
import pytest

import _offload_workers as workers
import flowlet._threads
from flowlet import Pipeline, ProcessCallError, in_process, in_thread, pipe, thread_local
from flowlet._threads import DEFAULT_THREADS, DaemonThreadPool
from support import StageError

# -- helpers -----------------------------------------------------------------------------


class Gauge:
    """Counts calls running at once (from any thread) and holds them until released.

    Each call waits on ``release`` once it has started; ``reached`` is set as soon as
    ``hold_at`` calls run at the same time.
    """

    def __init__(self, hold_at: int, *, expand: bool = False) -> None:
        self._lock = threading.Lock()
        self.hold_at = hold_at
        self.expand = expand  # return [item] (for flat_map) instead of item
        self.running = 0
        self.peak = 0
        self.started = 0
        self.finished = 0
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, item: Any) -> Any:
        with self._lock:
            self.started += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running >= self.hold_at:
                self.reached.set()
        try:
            self.release.wait(10)  # a hang guard only: the test always releases
        finally:
            with self._lock:
                self.running -= 1
                self.finished += 1
        return [item] if self.expand else item


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition that threads make true (inside the caller's fail_after)."""
    while not condition():
        await anyio.sleep(0.005)


async def peak_while_held(pipeline: Pipeline[Any], gauge: Gauge) -> list[Any]:
    """Run ``pipeline`` until ``gauge.hold_at`` calls run at once, give the engine every
    chance to start more, then release the calls and let the run finish."""
    result: list[Any] = []

    async def run() -> None:
        result.extend(await pipeline.collect())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                await wait_until(gauge.reached.is_set)
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.05)  # room for any extra thread to start (not asserted)
            finally:
                gauge.release.set()
    return result


class Recorder:
    """Wraps a function; records the thread each call ran on."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            self.threads.append(threading.current_thread())
        return self.fn(*args)


def expected(kind: str, items: list[int]) -> list[Any]:
    if kind == "map":
        return [workers.square(n) for n in items]
    if kind == "filter":
        return [n for n in items if workers.is_even(n)]
    return [x for n in items for x in workers.repeat(n)]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "map": workers.square,
    "filter": workers.is_even,
    "flat_map": workers.repeat,
}


def add_stage(pipeline: Pipeline[Any], kind: str, fn: Any, **options: Any) -> Pipeline[Any]:
    stage: Callable[..., Pipeline[Any]] = getattr(pipeline, kind)
    return stage(fn, **options)


@pytest.fixture
def thread_pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="given-pool") as pool:
        yield pool


@pytest.fixture(scope="module")
def fresh_default_pool() -> Iterator[DaemonThreadPool]:
    """A default pool of this module's own, so that threads other test modules left busy
    cannot skew a count (its idle daemon threads outlive the module, as the real one's do)."""
    pool = DaemonThreadPool(DEFAULT_THREADS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flowlet._threads, "_default_pool", pool)
        yield pool


# -- in_thread: where calls run ----------------------------------------------------------


async def test_in_thread_runs_off_the_event_loop_thread_in_the_default_pool() -> None:
    recorder = Recorder(workers.square)
    result = await pipe(range(5)).map(in_thread(recorder), concurrency=2).collect()
    assert sorted(result) == [0, 1, 4, 9, 16]
    loop_thread = threading.current_thread()
    assert len(recorder.threads) == 5
    assert all(t is not loop_thread for t in recorder.threads)
    assert all(t.name.startswith("flowlet-worker-") for t in recorder.threads)
    assert all(t.daemon for t in recorder.threads)


async def test_in_thread_runs_in_the_given_pool(thread_pool: ThreadPoolExecutor) -> None:
    recorder = Recorder(workers.square)
    stage = in_thread(recorder, executor=thread_pool)
    result = await pipe(range(8)).map(stage, concurrency=3).collect()
    assert sorted(result) == [n * n for n in range(8)]
    assert len(recorder.threads) == 8
    loop_ident = threading.get_ident()
    assert all(t.ident != loop_ident for t in recorder.threads)
    assert all(t.name.startswith("given-pool") for t in recorder.threads)


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_in_thread_works_in_every_function_stage(
    kind: str, concurrency: int, ordered: bool
) -> None:
    items = list(range(12))
    recorder = Recorder(FUNCTIONS[kind])
    pipeline = add_stage(
        pipe(items), kind, in_thread(recorder), concurrency=concurrency, ordered=ordered
    )
    with anyio.fail_after(5):
        result = await pipeline.collect()
    if ordered or concurrency == 1:
        assert result == expected(kind, items)
    else:
        assert sorted(result) == sorted(expected(kind, items))
    assert len(recorder.threads) == len(items)
    assert threading.current_thread() not in recorder.threads


async def test_in_thread_accepts_keyword_arguments_when_called_directly(
    thread_pool: ThreadPoolExecutor,
) -> None:
    assert await in_thread(workers.add)(1, 2, c=3) == 6
    assert await in_thread(workers.add, executor=thread_pool)(1, b=20, c=300) == 321


def test_in_thread_keeps_the_wrapped_function_metadata() -> None:
    def fetch(url: str) -> str:
        """Fetch a URL."""
        return url

    wrapped = in_thread(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__qualname__ == fetch.__qualname__
    assert wrapped.__doc__ == "Fetch a URL."
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]


# -- in_thread: context variables ----------------------------------------------------------

request_id: ContextVar[str] = ContextVar("request_id", default="unset")


def read_then_overwrite(_: object) -> str:
    seen = request_id.get()
    request_id.set("set in a worker thread")
    return seen


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_in_thread_sees_the_callers_context_variables(concurrency: int) -> None:
    token = request_id.set("set in the test")
    try:
        stage = in_thread(read_then_overwrite)
        result = await pipe(range(6)).map(stage, concurrency=concurrency).collect()
        assert result == ["set in the test"] * 6
        assert request_id.get() == "set in the test"
    finally:
        request_id.reset(token)


@pytest.mark.parametrize(("concurrency", "ordered"), [(1, False), (3, False), (3, True)])
async def test_a_context_variable_set_in_a_thread_does_not_reach_the_next_call(
    concurrency: int, ordered: bool
) -> None:
    """One thread runs every call; each call starts from a fresh copy of the caller's context."""
    token = request_id.set("set in the test")
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            stage = in_thread(read_then_overwrite, executor=pool)
            pipeline = pipe(range(8)).map(stage, concurrency=concurrency, ordered=ordered)
            result = await pipeline.collect()
        assert result == ["set in the test"] * 8
        assert request_id.get() == "set in the test"
    finally:
        request_id.reset(token)


# -- in_thread: parallelism ----------------------------------------------------------------


# The engine runs unordered in_thread map/filter stages on a dedicated path (jobs that
# take inputs from a queue); ordered stages and flat_map take the generic path.
STAGE_SHAPES = [
    pytest.param("map", False, id="map-unordered"),
    pytest.param("map", True, id="map-ordered"),
    pytest.param("filter", False, id="filter-unordered"),
    pytest.param("filter", True, id="filter-ordered"),
    pytest.param("flat_map", False, id="flat_map-unordered"),
]


def survivors(kind: str, items: range) -> list[int]:
    """What a stage of ``kind`` over a Gauge lets through (filter drops the falsy 0)."""
    return [n for n in items if n] if kind == "filter" else list(items)


@pytest.mark.parametrize(("kind", "ordered"), STAGE_SHAPES)
async def test_a_shared_pool_caps_the_combined_parallelism_of_two_stages(
    kind: str, ordered: bool
) -> None:
    gauge = Gauge(hold_at=2, expand=kind == "flat_map")
    with ThreadPoolExecutor(max_workers=2) as pool:
        stage = in_thread(gauge, executor=pool)
        pipeline = add_stage(pipe(range(16)), kind, stage, concurrency=4, ordered=ordered)
        pipeline = add_stage(pipeline, kind, stage, concurrency=4, ordered=ordered)
        result = await peak_while_held(pipeline, gauge)
    assert sorted(result) == survivors(kind, range(16))
    assert gauge.peak == 2
    assert gauge.started == 16 + len(survivors(kind, range(16)))


@pytest.mark.parametrize(("kind", "ordered"), STAGE_SHAPES)
async def test_parallelism_is_the_stage_concurrency_when_the_pool_is_larger(
    kind: str, ordered: bool
) -> None:
    gauge = Gauge(hold_at=3, expand=kind == "flat_map")
    with ThreadPoolExecutor(max_workers=8) as pool:
        stage = in_thread(gauge, executor=pool)
        pipeline = add_stage(pipe(range(12)), kind, stage, concurrency=3, ordered=ordered)
        result = await peak_while_held(pipeline, gauge)
    assert sorted(result) == survivors(kind, range(12))
    assert gauge.peak == 3


@pytest.mark.parametrize(("kind", "ordered"), STAGE_SHAPES)
async def test_parallelism_is_the_pool_size_when_the_stage_concurrency_is_larger(
    kind: str, ordered: bool
) -> None:
    gauge = Gauge(hold_at=2, expand=kind == "flat_map")
    with ThreadPoolExecutor(max_workers=2) as pool:
        stage = in_thread(gauge, executor=pool)
        pipeline = add_stage(pipe(range(10)), kind, stage, concurrency=6, ordered=ordered)
        result = await peak_while_held(pipeline, gauge)
    assert sorted(result) == survivors(kind, range(10))
    assert gauge.peak == 2


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_stages_sharing_a_one_thread_pool_do_not_starve_each_other(ordered: bool) -> None:
    """Three stages take turns on a single thread; each holds inputs the next one needs."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pipeline = pipe(range(50))
        for _ in range(3):
            pipeline = pipeline.map(
                in_thread(workers.identity, executor=pool), concurrency=3, ordered=ordered
            )
        with anyio.fail_after(10):
            result = await pipeline.collect()
    assert sorted(result) == list(range(50))


async def test_default_pool_parallelism_follows_the_stage_concurrency(
    fresh_default_pool: DaemonThreadPool,
) -> None:
    gauge = Gauge(hold_at=5)
    pipeline = pipe(range(15)).map(in_thread(gauge), concurrency=5)
    result = await peak_while_held(pipeline, gauge)
    assert sorted(result) == list(range(15))
    assert gauge.peak == 5


async def test_default_pool_runs_at_most_its_thread_count_at_once(
    fresh_default_pool: DaemonThreadPool,
) -> None:
    gauge = Gauge(hold_at=DEFAULT_THREADS)
    concurrency = DEFAULT_THREADS + 5
    pipeline = pipe(range(concurrency * 2)).map(in_thread(gauge), concurrency=concurrency)
    result = await peak_while_held(pipeline, gauge)
    assert len(result) == concurrency * 2
    assert gauge.peak == DEFAULT_THREADS


# -- in_thread: cancellation and errors ----------------------------------------------------


@pytest.mark.parametrize("pool_kind", ["default", "given"])
@pytest.mark.parametrize(("kind", "ordered"), STAGE_SHAPES)
async def test_cancelling_returns_while_calls_are_still_blocked_in_threads(
    pool_kind: str, kind: str, ordered: bool, fresh_default_pool: DaemonThreadPool
) -> None:
    gauge = Gauge(hold_at=3, expand=kind == "flat_map")
    pool = ThreadPoolExecutor(max_workers=3) if pool_kind == "given" else None
    stage = in_thread(gauge, executor=pool)
    try:
        with anyio.fail_after(5):
            with anyio.move_on_after(60) as scope:
                async with anyio.create_task_group() as tg:

                    async def cancel_when_all_blocked() -> None:
                        await wait_until(gauge.reached.is_set)
                        scope.cancel()

                    tg.start_soon(cancel_when_all_blocked)
                    pipeline = add_stage(
                        pipe(range(10)), kind, stage, concurrency=3, ordered=ordered
                    )
                    await pipeline.collect()
        assert scope.cancelled_caught
        # collect returned although no call has finished: it did not wait for the threads
        assert gauge.finished == 0
        assert gauge.running == 3
    finally:
        gauge.release.set()
    with anyio.fail_after(5):
        await wait_until(lambda: gauge.finished == 3)
    assert gauge.started == 3
    if pool is not None:
        pool.shutdown(wait=True)


@pytest.mark.parametrize("pool_kind", ["default", "given"])
@pytest.mark.parametrize(("kind", "ordered"), STAGE_SHAPES)
async def test_a_call_still_queued_in_the_pool_never_starts_after_cancellation(
    pool_kind: str, kind: str, ordered: bool, fresh_default_pool: DaemonThreadPool
) -> None:
    """The stage runs one call more than the pool has threads; cancelling the run
    must drop that queued call, not leave it to run later."""
    workers_in_pool = 2 if pool_kind == "given" else DEFAULT_THREADS
    gauge = Gauge(hold_at=workers_in_pool, expand=kind == "flat_map")
    pool = ThreadPoolExecutor(max_workers=2) if pool_kind == "given" else None
    stage = in_thread(gauge, executor=pool)
    try:
        with anyio.fail_after(5):
            with anyio.move_on_after(60) as scope:
                async with anyio.create_task_group() as tg:

                    async def cancel_when_all_blocked() -> None:
                        await wait_until(gauge.reached.is_set)
                        await anyio.wait_all_tasks_blocked()
                        scope.cancel()

                    tg.start_soon(cancel_when_all_blocked)
                    pipeline = add_stage(
                        pipe(range(workers_in_pool * 3)),
                        kind,
                        stage,
                        concurrency=workers_in_pool + 1,
                        ordered=ordered,
                    )
                    await pipeline.collect()
        assert scope.cancelled_caught
    finally:
        gauge.release.set()
    if pool is not None:
        pool.shutdown(wait=True)
    with anyio.fail_after(5):
        await wait_until(lambda: gauge.finished == workers_in_pool)
        await anyio.sleep(0.05)  # room for a wrongly started queued call (not asserted)
    assert gauge.started == workers_in_pool


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("how", "calls"),
    [
        pytest.param("direct", 1, id="awaited-directly"),
        pytest.param("map-1", 1, id="map-concurrency-1"),
        pytest.param("map-ordered", 2, id="map-ordered-concurrency-2"),
        pytest.param("map-unordered", 2, id="map-unordered-concurrency-2"),
    ],
)
def test_a_thread_finishing_after_its_event_loop_ended_logs_nothing(
    backend: str, how: str, calls: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancelled call keeps running in its thread. When it finishes after the event
    loop is gone, nothing may be reported (trio used to log "exception calling callback
    ... RunFinishedError" from the future's done callback)."""
    gauge = Gauge(hold_at=calls)

    async def main() -> None:
        stage = in_thread(gauge, executor=pool)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as tg:

                async def cancel_when_all_blocked() -> None:
                    await wait_until(gauge.reached.is_set)
                    scope.cancel()

                tg.start_soon(cancel_when_all_blocked)
                if how == "direct":
                    await stage(0)
                else:
                    concurrency = 1 if how == "map-1" else 2
                    ordered = how == "map-ordered"
                    pipeline = pipe(range(4)).map(stage, concurrency=concurrency, ordered=ordered)
                    await pipeline.collect()
        assert scope.cancelled_caught

    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            with caplog.at_level(logging.ERROR):
                anyio.run(main, backend=backend)
        finally:
            gauge.release.set()
        # leaving the with block joins the threads: every done callback has run
    assert gauge.finished == calls
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_an_exception_in_the_thread_reaches_the_consumer_as_itself(
    concurrency: int, thread_pool: ThreadPoolExecutor
) -> None:
    error = StageError("failed in a thread")

    def fail_on_five(n: int) -> int:
        if n == 5:
            raise error
        return n

    for executor in (None, thread_pool):
        stage = in_thread(fail_on_five, executor=executor)
        with anyio.fail_after(5), pytest.raises(StageError) as excinfo:
            await pipe(range(20)).map(stage, concurrency=concurrency).collect()
        assert excinfo.value is error


# -- in_thread: validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        workers.async_square,
        functools.partial(workers.async_square),
        workers.async_repeat,
        workers.AsyncCallable(),
    ],
    ids=["async-def", "partial-of-async", "async-generator-function", "async-call-object"],
)
def test_in_thread_rejects_async_callables(fn: Any) -> None:
    with pytest.raises(TypeError, match="pass it to the stage directly"):
        in_thread(fn)


def test_in_thread_rejects_a_process_pool() -> None:
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(TypeError, match="in_process"):
        in_thread(workers.square, executor=pool)  # type: ignore[arg-type]


@pytest.mark.parametrize("executor", [object(), "pool", 4], ids=["object", "str", "int"])
def test_in_thread_rejects_an_executor_that_is_not_a_thread_pool(executor: Any) -> None:
    with pytest.raises(TypeError, match="ThreadPoolExecutor"):
        in_thread(workers.square, executor=executor)


def test_in_thread_rejects_a_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        in_thread(42)  # type: ignore[call-overload]


# -- in_process ------------------------------------------------------------------------------

CONTEXTS = ["default", "spawn"]


def make_process_pool(context: str) -> ProcessPoolExecutor:
    mp_context = None if context == "default" else multiprocessing.get_context(context)
    return ProcessPoolExecutor(max_workers=2, mp_context=mp_context)


def shut_down(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down and make sure no worker survives: a live (non-daemon) worker
    keeps the interpreter from exiting. On CPython 3.11 a broken pool's manager thread can
    die (InvalidStateError on a future the engine had just cancelled) before its step that
    terminates the workers."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(5)


@pytest.fixture(scope="module", params=CONTEXTS)
def process_pool(request: pytest.FixtureRequest) -> Iterator[ProcessPoolExecutor]:
    """One pool per start method for the whole module (starting workers is slow)."""
    pool = make_process_pool(request.param)
    try:
        yield pool
    finally:
        shut_down(pool)


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_in_process_results_are_right(
    kind: str, concurrency: int, process_pool: ProcessPoolExecutor
) -> None:
    items = list(range(10))
    stage = in_process(FUNCTIONS[kind], executor=process_pool)
    pipeline = add_stage(pipe(items), kind, stage, concurrency=concurrency, ordered=True)
    with anyio.fail_after(20):
        assert await pipeline.collect() == expected(kind, items)


async def test_in_process_runs_in_other_processes(process_pool: ProcessPoolExecutor) -> None:
    with anyio.fail_after(20):
        pids = await pipe(range(6)).map(in_process(workers.pid_of, executor=process_pool)).collect()
    assert os.getpid() not in pids


async def test_in_process_passes_keyword_arguments(process_pool: ProcessPoolExecutor) -> None:
    with anyio.fail_after(20):
        assert await in_process(workers.add, executor=process_pool)(1, b=20, c=300) == 321


async def test_a_worker_exception_keeps_its_type_and_message(
    process_pool: ProcessPoolExecutor,
) -> None:
    stage = in_process(workers.fail_on_three, executor=process_pool)
    with anyio.fail_after(20), pytest.raises(workers.WorkerError, match=r"^worker failed on 3$"):
        await pipe(range(8)).map(stage, concurrency=2).collect()


@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        (workers.raise_unpicklable, "_offload_workers.LockedError"),
        (workers.raise_lambda_holder, "_offload_workers.LambdaError"),
    ],
    ids=["holds-a-lock", "holds-a-lambda"],
)
async def test_an_unpicklable_worker_exception_surfaces_as_process_call_error(
    fn: Callable[[int], int], type_name: str, process_pool: ProcessPoolExecutor
) -> None:
    """The worker cannot send its exception back as itself, so flowlet sends what it
    can: the type's name, the message and the worker's traceback, as text."""
    stage = in_process(fn, executor=process_pool)
    with anyio.fail_after(20), pytest.raises(ProcessCallError) as excinfo:
        await pipe(range(8)).map(stage, concurrency=2).collect()
    error = excinfo.value
    assert error.type_name == type_name
    assert error.message == "unpicklable failure on 3"
    assert "unpicklable failure on 3" in error.remote_traceback
    assert f"{type_name}: unpicklable failure on 3" in str(error)
    # the pool survives: the worker reported the failure itself
    with anyio.fail_after(20):
        assert await pipe([2]).map(in_process(workers.square, executor=process_pool)).collect() == [
            4
        ]


async def test_an_unpicklable_result_surfaces_as_a_pickling_error(
    process_pool: ProcessPoolExecutor,
) -> None:
    stage = in_process(workers.return_lock, executor=process_pool)
    with anyio.fail_after(20), pytest.raises(TypeError, match="pickle"):
        await pipe(range(3)).map(stage).collect()


async def test_an_unpicklable_argument_surfaces_as_a_pickling_error(
    process_pool: ProcessPoolExecutor,
) -> None:
    stage = in_process(workers.identity, executor=process_pool)
    with anyio.fail_after(20), pytest.raises(TypeError, match="pickle"):
        await pipe([1, threading.Lock(), 3]).map(stage).collect()
    with anyio.fail_after(20):
        assert await pipe([1, 2]).map(stage, concurrency=2, ordered=True).collect() == [1, 2]


@pytest.mark.parametrize("context", CONTEXTS)
async def test_a_worker_exception_that_cannot_be_rebuilt_does_not_break_the_pool(
    context: str,
) -> None:
    """It pickles in the worker but its __init__ cannot rebuild it in the parent. Sent
    as itself it would kill the pool's result thread and break the whole pool; flowlet
    sends a ProcessCallError instead, and the pool keeps working."""
    pool = make_process_pool(context)
    try:
        stage = in_process(workers.raise_unloadable, executor=pool)
        with anyio.fail_after(20), pytest.raises(ProcessCallError) as excinfo:
            await pipe(range(8)).map(stage).collect()
        assert excinfo.value.type_name == "_offload_workers.TwoArgError"
        with anyio.fail_after(20):
            square = in_process(workers.square, executor=pool)
            assert await pipe([3]).map(square).collect() == [9]
    finally:
        shut_down(pool)


@pytest.mark.parametrize("context", CONTEXTS)
async def test_a_worker_that_dies_surfaces_as_broken_process_pool(context: str) -> None:
    pool = make_process_pool(context)
    try:
        stage = in_process(workers.die, executor=pool)
        with anyio.fail_after(20), pytest.raises(BrokenProcessPool):
            await pipe(range(8)).map(stage).collect()
    finally:
        shut_down(pool)


def test_in_process_requires_a_process_pool_executor() -> None:
    with (
        ThreadPoolExecutor(max_workers=1) as threads,
        pytest.raises(TypeError, match=r"ProcessPoolExecutor.*in_thread"),
    ):
        in_process(workers.square, executor=threads)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ProcessPoolExecutor"):
        in_process(workers.square, executor=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="executor"):
        in_process(workers.square)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "fn",
    [
        workers.async_square,
        functools.partial(workers.async_square),
        workers.async_repeat,
        functools.partial(workers.async_repeat),
        workers.AsyncCallable(),
    ],
    ids=[
        "async-def",
        "partial-of-async",
        "async-generator-function",
        "partial-of-async-generator-function",
        "async-call-object",
    ],
)
def test_in_process_rejects_async_callables(fn: Any) -> None:
    with (
        ProcessPoolExecutor(max_workers=1) as pool,
        pytest.raises(TypeError, match="sync function"),
    ):
        in_process(fn, executor=pool)


def test_in_process_rejects_lambdas_and_local_functions() -> None:
    def local(n: int) -> int:
        return n

    with ProcessPoolExecutor(max_workers=1) as pool:
        for fn in (lambda n: n, local, functools.partial(local)):
            with pytest.raises(TypeError, match="Define it at module level"):
                in_process(fn, executor=pool)
        # module-level functions (also behind a partial) are fine
        in_process(workers.square, executor=pool)
        in_process(functools.partial(workers.add, b=1), executor=pool)


# -- thread_local ----------------------------------------------------------------------------


class Resource:
    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.closed = False


class Factory:
    """Makes :class:`Resource` objects, as a plain or a generator factory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.made: list[Resource] = []

    def _new(self) -> Resource:
        resource = Resource()
        with self._lock:
            self.made.append(resource)
        return resource

    def plain(self) -> Resource:
        return self._new()

    def generator(self) -> Iterator[Resource]:
        resource = self._new()
        try:
            yield resource
        finally:
            resource.closed = True


def in_two_threads_at_once(fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn`` in both threads of a fresh pool at the same time, then shut it down."""
    barrier = threading.Barrier(2)

    def call(_: object) -> Any:
        barrier.wait(5)
        return fn()

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(call, range(2)))


@pytest.mark.parametrize("style", ["plain", "generator"])
def test_thread_local_gives_each_thread_its_own_resource(style: str) -> None:
    factory = Factory()
    resource = thread_local(getattr(factory, style))

    first, second = in_two_threads_at_once(lambda: (resource(), resource()))
    assert first[0] is first[1]
    assert second[0] is second[1]
    assert first[0] is not second[0]
    assert first[0].thread != second[0].thread
    assert len(factory.made) == 2


def test_thread_local_close_closes_only_the_calling_threads_resource() -> None:
    factory = Factory()
    resource = thread_local(factory.generator)
    other_ready = threading.Event()
    may_exit = threading.Event()
    other: list[Resource] = []

    def other_thread() -> None:
        other.append(resource())
        other_ready.set()
        may_exit.wait(5)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert other_ready.wait(5)
        mine = resource()
        resource.close()
        assert mine.closed
        assert not other[0].closed
        again = resource()
        assert again is not mine
        assert not again.closed
        assert len(factory.made) == 3
    finally:
        may_exit.set()
        thread.join(5)
    assert other[0].closed  # closed when its thread exited
    resource.close()
    assert again.closed


def test_thread_local_close_without_a_resource_does_nothing() -> None:
    factory = Factory()
    resource = thread_local(factory.generator)
    resource.close()
    assert factory.made == []


def test_a_thread_pool_shutdown_closes_the_generators_made_on_its_threads() -> None:
    factory = Factory()
    resource = thread_local(factory.generator)
    barrier = threading.Barrier(2)

    def use(_: object) -> Resource:
        barrier.wait(5)
        return resource()

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(pool.map(use, range(2)))
        assert not any(r.closed for r in made)
    assert len(factory.made) == 2
    assert all(r.closed for r in made)


def test_a_generator_factory_is_closed_not_resumed() -> None:
    """As documented: teardown belongs in ``finally``; code after the yield never runs."""
    events: list[str] = []

    def make() -> Iterator[str]:
        try:
            yield "resource"
            events.append("resumed")
        finally:
            events.append("finally")

    resource = thread_local(make)
    assert resource() == "resource"
    resource.close()
    assert events == ["finally"]


def test_an_empty_generator_factory_fails_at_first_use_naming_the_factory() -> None:
    def make_nothing() -> Iterator[Resource]:
        return
        yield  # pragma: no cover

    resource = thread_local(make_nothing)  # no error yet: the factory runs at first use
    with pytest.raises(RuntimeError, match="make_nothing"):
        resource()


@pytest.mark.parametrize(
    "factory",
    [workers.async_square, functools.partial(workers.async_square, 1), workers.async_repeat],
    ids=["async-def", "partial-of-async", "async-generator-function"],
)
def test_thread_local_rejects_async_factories(factory: Any) -> None:
    with pytest.raises(TypeError, match="thread_local"):
        thread_local(factory)


@pytest.mark.parametrize("kind", ["map", "filter", "flat_map"])
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_thread_local_inside_in_thread_stages_gives_one_resource_per_thread(
    kind: str, ordered: bool
) -> None:
    factory = Factory()
    session = thread_local(factory.generator)
    seen: list[tuple[int, Resource]] = []
    lock = threading.Lock()
    fn = FUNCTIONS[kind]

    def work(n: int) -> Any:
        with lock:
            seen.append((threading.get_ident(), session()))
        return fn(n)

    items = list(range(30))
    with ThreadPoolExecutor(max_workers=3) as pool:
        stage = in_thread(work, executor=pool)
        with anyio.fail_after(5):
            pipeline = add_stage(pipe(items), kind, stage, concurrency=3, ordered=ordered)
            result = await pipeline.collect()
        assert not any(r.closed for r in factory.made)
    assert sorted(result) == sorted(expected(kind, items))
    assert len(seen) == len(items)
    by_thread: dict[int, set[int]] = {}
    for ident, used in seen:
        assert used.thread == ident
        by_thread.setdefault(ident, set()).add(id(used))
    assert all(len(ids) == 1 for ids in by_thread.values())
    assert len(factory.made) == len(by_thread)
    assert all(r.closed for r in factory.made)  # the pool's shutdown closed them

"""The eight workloads of issue 3, each written for every contestant.

A workload is a pipeline shape, an input size, the expected output and, per
implementation, an ``async def run(n, env)`` that builds the pipeline, consumes it and
returns the output. ``env`` carries what differs between event loops (the ``sleep``
function) and per-sample resources (the thread pool of W6). W7 (run-ahead and memory
of a slow consumer) is measured differently and lives in :mod:`runahead`.

Implementations:

* ``flowlet`` - ``pipe(...)...collect()``;
* ``flowlet_aiter`` - ``[x async for x in pipe(...)]`` (sequential workloads only);
* ``baseline`` - hand-written asyncio (:mod:`baseline`);
* ``aiostream``, ``pypeln`` - the same pipeline in those libraries, when importable.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import baseline as bl

Impl = Callable[[int, "Env"], Awaitable[list[Any]]]


@dataclass
class Env:
    """What a sample may depend on besides the input size."""

    loop: str  # "asyncio" | "uvloop" | "trio"
    sleep: Callable[[float], Awaitable[None]]
    pool: ThreadPoolExecutor | None = None


@dataclass
class Workload:
    key: str
    title: str
    n: int  # full input size
    target: float  # flowlet x baseline must not exceed this (default asyncio loop)
    expected: Callable[[int], list[Any]]
    ordered: bool  # compare outputs in order (else as multisets)
    impls: dict[str, Impl] = field(default_factory=dict)
    ideal: Callable[[int], float] | None = None  # seconds, for latency-bound workloads
    needs_pool: bool = False
    sequential: bool = False  # only inline stages: gets an ``async for`` variant
    fixed_size: bool = False  # peers run at full size too (latency-bound)


# -- stage functions ---------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def expand10(x: int) -> list[int]:
    return [x * 10 + i for i in range(10)]


def is_even(x: int) -> bool:
    return x % 2 == 0


def not_div3(x: int) -> int:
    return x % 3


def blocking_double(x: int) -> int:
    time.sleep(0.001)
    return 2 * x


def touch_fn(env: Env) -> Callable[[Any], Awaitable[Any]]:
    """``async def touch(x)``: one trip through the event loop, then ``x``."""
    sleep = env.sleep

    async def touch(x: Any) -> Any:
        await sleep(0)
        return x

    return touch


def nap_fn(env: Env) -> Callable[[Any], Awaitable[Any]]:
    """``async def nap(x)``: a 10 ms await, then ``x``."""
    sleep = env.sleep

    async def nap(x: Any) -> Any:
        await sleep(0.01)
        return x

    return nap


# -- peers -----------------------------------------------------------------------------


def _aiostream() -> tuple[Any, Any]:
    from aiostream import pipe, stream

    return stream, pipe


async def _aiostream_list(xs: Any) -> list[Any]:
    stream, _ = _aiostream()
    return await stream.list(xs)


async def _count_up(n: int) -> Any:
    # pypeln reads a plain iterable from a helper thread; an async source keeps it on
    # the event loop, which is its faster mode.
    for x in range(n):
        yield x


def _pypeln() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stopit imports the deprecated pkg_resources
        import pypeln

    return pypeln


class NotApplicable(Exception):
    """The library cannot express this pipeline."""


# -- W1: three sync maps ----------------------------------------------------------------


def _w1_flowlet(n: int) -> Any:
    from flowlet import pipe

    return pipe(range(n)).map(inc).map(inc).map(inc)


async def w1_flowlet(n: int, env: Env) -> list[Any]:
    return await _w1_flowlet(n).collect()


async def w1_flowlet_aiter(n: int, env: Env) -> list[Any]:
    return [x async for x in _w1_flowlet(n)]


async def w1_baseline(n: int, env: Env) -> list[Any]:
    return await bl.collect(bl.chain_maps([inc] * 3, range(n)))


async def w1_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()
    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.map(inc) | pipe.map(inc) | pipe.map(inc)
    )


async def w1_pypeln(n: int, env: Env) -> list[Any]:
    task = _pypeln().task
    return await task.map(inc, task.map(inc, task.map(inc, _count_up(n))))


# -- W2: async map, sleep(0), concurrency 16 -------------------------------------------


async def w2_flowlet(n: int, env: Env) -> list[Any]:
    from flowlet import pipe

    return await pipe(range(n)).map(touch_fn(env), concurrency=16).collect()


async def w2_baseline(n: int, env: Env) -> list[Any]:
    return await bl.WorkerPool(touch_fn(env), range(n), 16).collect()


async def w2_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()
    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.map(touch_fn(env), ordered=False, task_limit=16)
    )


async def w2_pypeln(n: int, env: Env) -> list[Any]:
    return await _pypeln().task.map(touch_fn(env), _count_up(n), workers=16)


# -- W3: 10 ms awaits, concurrency 100 -----------------------------------------------------


async def w3_flowlet(n: int, env: Env) -> list[Any]:
    from flowlet import pipe

    return await pipe(range(n)).map(nap_fn(env), concurrency=100).collect()


async def w3_baseline(n: int, env: Env) -> list[Any]:
    return await bl.WorkerPool(nap_fn(env), range(n), 100).collect()


async def w3_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()
    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.map(nap_fn(env), ordered=False, task_limit=100)
    )


async def w3_pypeln(n: int, env: Env) -> list[Any]:
    return await _pypeln().task.map(nap_fn(env), _count_up(n), workers=100)


# -- W4: sync flat_map x10 (concurrency 8) + filter ------------------------------------


def _w4_flowlet(n: int) -> Any:
    from flowlet import pipe

    return pipe(range(n)).flat_map(expand10, concurrency=8).filter(is_even)


async def w4_flowlet(n: int, env: Env) -> list[Any]:
    return await _w4_flowlet(n).collect()


async def w4_flowlet_aiter(n: int, env: Env) -> list[Any]:
    return [x async for x in _w4_flowlet(n)]


async def w4_baseline(n: int, env: Env) -> list[Any]:
    # A sync function cannot overlap anything on the loop: concurrency 8 runs inline.
    return await bl.collect(bl.filter_async(is_even, bl.flat_map_sync(expand10, range(n))))


async def w4_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()

    def expand(x: int) -> Any:  # aiostream's flatmap wants an async sequence
        return stream.iterate(expand10(x))

    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.flatmap(expand, task_limit=8) | pipe.filter(is_even)
    )


async def w4_pypeln(n: int, env: Env) -> list[Any]:
    task = _pypeln().task
    return await task.filter(is_even, task.flat_map(expand10, _count_up(n), workers=8))


# -- W5: filter -> batch(100) -> map(sum) -------------------------------------------------


def _w5_flowlet(n: int) -> Any:
    from flowlet import pipe

    return pipe(range(n)).filter(not_div3).batch(100).map(sum)


async def w5_flowlet(n: int, env: Env) -> list[Any]:
    return await _w5_flowlet(n).collect()


async def w5_flowlet_aiter(n: int, env: Env) -> list[Any]:
    return [x async for x in _w5_flowlet(n)]


async def w5_baseline(n: int, env: Env) -> list[Any]:
    return await bl.collect(bl.map_async(sum, bl.batch(bl.filter_sync(not_div3, range(n)), 100)))


async def w5_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()
    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.filter(not_div3) | pipe.chunks(100) | pipe.map(sum)
    )


async def w5_pypeln(n: int, env: Env) -> list[Any]:
    raise NotApplicable("pypeln has no batch operator")


# -- W6: blocking 1 ms calls in a 16-thread pool, concurrency 16 -------------------------


async def w6_flowlet(n: int, env: Env) -> list[Any]:
    from flowlet import in_thread, pipe

    fn = in_thread(blocking_double, executor=env.pool)
    return await pipe(range(n)).map(fn, concurrency=16).collect()


async def w6_baseline(n: int, env: Env) -> list[Any]:
    assert env.pool is not None
    return await bl.collect(bl.ThreadPull(blocking_double, range(n), env.pool, 16).__aiter__())


async def w6_aiostream(n: int, env: Env) -> list[Any]:
    import asyncio

    stream, pipe = _aiostream()
    loop, pool = asyncio.get_running_loop(), env.pool

    async def in_pool(x: int) -> int:
        return await loop.run_in_executor(pool, blocking_double, x)

    return await _aiostream_list(
        stream.iterate(range(n)) | pipe.map(in_pool, ordered=False, task_limit=16)
    )


async def w6_pypeln(n: int, env: Env) -> list[Any]:
    # pl.thread starts its own 16 threads and is iterated synchronously.
    return list(_pypeln().thread.map(blocking_double, range(n), workers=16))


# -- W8: fifty sync maps ---------------------------------------------------------------


def _w8_flowlet(n: int) -> Any:
    from flowlet import pipe

    p = pipe(range(n))
    for _ in range(50):
        p = p.map(inc)
    return p


async def w8_flowlet(n: int, env: Env) -> list[Any]:
    return await _w8_flowlet(n).collect()


async def w8_flowlet_aiter(n: int, env: Env) -> list[Any]:
    return [x async for x in _w8_flowlet(n)]


async def w8_baseline(n: int, env: Env) -> list[Any]:
    return await bl.collect(bl.chain_maps([inc] * 50, range(n)))


async def w8_aiostream(n: int, env: Env) -> list[Any]:
    stream, pipe = _aiostream()
    xs = stream.iterate(range(n))
    for _ in range(50):
        xs = xs | pipe.map(inc)
    return await _aiostream_list(xs)


async def w8_pypeln(n: int, env: Env) -> list[Any]:
    task = _pypeln().task
    st: Any = _count_up(n)
    for _ in range(50):
        st = task.map(inc, st)
    return await st


# -- the table ----------------------------------------------------------------------------


def _w4_expected(n: int) -> list[int]:
    return [y for x in range(n) for y in expand10(x) if is_even(y)]


def _w5_expected(n: int) -> list[int]:
    kept = [x for x in range(n) if not_div3(x)]
    return [sum(kept[i : i + 100]) for i in range(0, len(kept), 100)]


def _impls(prefix: str) -> dict[str, Impl]:
    found = globals()
    names = ("flowlet", "flowlet_aiter", "baseline", "aiostream", "pypeln")
    return {name: found[f"{prefix}_{name}"] for name in names if f"{prefix}_{name}" in found}


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in [
        Workload(
            "W1",
            "3 sync maps, concurrency 1, collect",
            200_000,
            0.67,
            lambda n: list(range(3, n + 3)),
            ordered=True,
            impls=_impls("w1"),
            sequential=True,
        ),
        Workload(
            "W2",
            "async map (sleep 0), concurrency 16",
            100_000,
            1.3,
            lambda n: list(range(n)),
            ordered=False,
            impls=_impls("w2"),
        ),
        Workload(
            "W3",
            "async map (sleep 10 ms), concurrency 100",
            2_000,
            1.0,
            lambda n: list(range(n)),
            ordered=False,
            impls=_impls("w3"),
            ideal=lambda n: n / 100 * 0.01,
            fixed_size=True,
        ),
        Workload(
            "W4",
            "sync flat_map x10 (concurrency 8) + filter",
            10_000,
            1.5,
            _w4_expected,
            ordered=False,
            impls=_impls("w4"),
            sequential=True,
        ),
        Workload(
            "W5",
            "filter -> batch(100) -> map(sum)",
            200_000,
            1.0,
            _w5_expected,
            ordered=True,
            impls=_impls("w5"),
            sequential=True,
        ),
        Workload(
            "W6",
            "in_thread 1 ms blocking, 16-thread pool, concurrency 16",
            2_000,
            1.2,
            lambda n: [2 * x for x in range(n)],
            ordered=False,
            impls=_impls("w6"),
            ideal=lambda n: n / 16 * 0.001,
            needs_pool=True,
            fixed_size=True,
        ),
        Workload(
            "W8",
            "50 sync maps, concurrency 1",
            20_000,
            0.5,
            lambda n: list(range(50, n + 50)),
            ordered=True,
            impls=_impls("w8"),
            sequential=True,
        ),
    ]
}

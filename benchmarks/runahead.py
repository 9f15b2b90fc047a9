"""W7: how far a concurrent stage runs ahead of a slow consumer, and what it leaves behind.

A lazy async source (it never awaits) yields 1 KiB ``bytes`` objects, up to a million
of them, into ``map(touch, concurrency=8)`` with the default buffer. The consumer
awaits ``sleep(0)`` per item and stops after ``STOP`` items. The source counts what it
produced, so at every read we know the run-ahead: items produced minus items the
consumer has received. The documented bound for this stage is ``concurrency + buffer``
= 8 + 16 = 24 inputs.

Reported per variant: the largest run-ahead seen during the run and the one at the
moment the consumer stopped, the peak of Python allocations (tracemalloc) above the
level at the start, whether the source was closed (its ``finally`` ran) after a few
loop iterations, and how many tasks were still alive.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import baseline as bl
from workloads import Env, touch_fn

CONCURRENCY = 8
BUFFER = 2 * CONCURRENCY  # flowlet's default buffer
BOUND = CONCURRENCY + BUFFER
TOTAL = 1_000_000
STOP = 20_000
CUT_OFF = 10_000  # the source gives up this far ahead: the stage is unbounded
MEMORY_LIMIT_KIB = 1024


@dataclass
class Probe:
    """What the source and the consumer saw."""

    stop: int
    produced: int = 0
    consumed: int = 0
    max_ahead: int = 0
    ahead_at_stop: int | None = None
    closed: bool = False
    cut_off: bool = False
    bad: int = 0

    async def source(self, total: int) -> Any:
        try:
            for _ in range(total):
                ahead = self.produced - self.consumed
                if ahead >= CUT_OFF:
                    self.cut_off = True
                    return
                self.produced += 1
                self.max_ahead = max(self.max_ahead, ahead + 1)
                yield bytes(1024)
        finally:
            self.closed = True

    def take(self, item: bytes) -> bool:
        """Count one delivered item; True when the consumer should stop."""
        self.consumed += 1
        self.bad += len(item) != 1024
        if self.consumed >= self.stop:
            self.ahead_at_stop = self.produced - self.consumed
            return True
        return False


Variant = Callable[[Probe, Env, int], Awaitable[None]]


async def flowlet_break(probe: Probe, env: Env, total: int) -> None:
    """``async for`` over the pipeline and a bare ``break``."""
    from flowlet import pipe

    sleep = env.sleep
    async for item in pipe(probe.source(total)).map(touch_fn(env), concurrency=CONCURRENCY):
        stop = probe.take(item)
        await sleep(0)
        if stop:
            break


async def flowlet_stream(probe: Probe, env: Env, total: int) -> None:
    """``async with pipeline.stream()`` and a ``break`` inside it."""
    from flowlet import pipe

    sleep = env.sleep
    pipeline = pipe(probe.source(total)).map(touch_fn(env), concurrency=CONCURRENCY)
    async with pipeline.stream() as items:
        async for item in items:
            stop = probe.take(item)
            await sleep(0)
            if stop:
                break


async def baseline_break(probe: Probe, env: Env, total: int) -> None:
    """The hand-written worker pool, ``async for`` and a bare ``break``."""
    sleep = env.sleep
    pool = bl.WorkerPool(touch_fn(env), probe.source(total), CONCURRENCY, BUFFER)
    async for item in pool:
        stop = probe.take(item)
        await sleep(0)
        if stop:
            break


VARIANTS: dict[str, Variant] = {
    "flowlet (async for + break)": flowlet_break,
    "flowlet (stream() + break)": flowlet_stream,
    "baseline (async for + break)": baseline_break,
}


@dataclass
class RunAhead:
    seconds: float
    max_ahead: int
    ahead_at_stop: int | None
    peak_kib: float
    closed: bool
    tasks_left: int
    wrong: str = ""
    notes: list[str] = field(default_factory=list)


def _tasks_alive(loop: str) -> int:
    if loop == "trio":
        import trio

        return trio.lowlevel.current_statistics().tasks_living
    return len(asyncio.all_tasks())


async def measure(variant: Variant, env: Env, scale: float = 1.0) -> RunAhead:
    total, stop = int(TOTAL * scale), int(STOP * scale)
    probe = Probe(stop)
    tasks_before = _tasks_alive(env.loop)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        started = time.perf_counter()
        await variant(probe, env, total)
        seconds = time.perf_counter() - started
        for _ in range(20):  # the event loop finalises an abandoned async generator
            await env.sleep(0)
        await env.sleep(0.02)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    wrong = ""
    if probe.consumed != stop:
        wrong = f"consumed {probe.consumed} items, expected {stop}"
    elif probe.bad:
        wrong = f"{probe.bad} items of the wrong size"
    result = RunAhead(
        seconds=seconds,
        max_ahead=probe.max_ahead,
        ahead_at_stop=probe.ahead_at_stop,
        peak_kib=peak / 1024,
        closed=probe.closed,
        tasks_left=_tasks_alive(env.loop) - tasks_before,
        wrong=wrong,
    )
    if probe.cut_off:
        result.notes.append(f"source cut off {CUT_OFF:,} items ahead: unbounded")
    return result


def verdict(results: list[RunAhead]) -> tuple[bool, str]:
    """PASS when every sample kept the bound, stayed under 1 MiB and cleaned up."""
    problems = []
    if any(r.max_ahead > BOUND for r in results):
        problems.append(f"run-ahead above {BOUND}")
    if any(r.peak_kib >= MEMORY_LIMIT_KIB for r in results):
        problems.append("memory >= 1 MiB")
    if not all(r.closed for r in results):
        problems.append("source not closed")
    if any(r.tasks_left for r in results):
        problems.append("tasks left")
    if any(r.wrong for r in results):
        problems.append("wrong output")
    return not problems, ", ".join(problems)

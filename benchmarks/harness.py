"""Timing machinery: event loops, interleaved samples, medians and paired ratios.

Every sample runs on a fresh event loop (asyncio, uvloop or trio) in this process, after
a ``gc.collect()``. The time measured is the ``await`` of the workload: building the
pipeline and consuming it, not loop start-up. The output is checked after the clock
stops; a wrong output ends the cell (it is reported, not timed).

Two clocks run around each sample: the wall clock, and the CPU time of the thread that
runs the event loop (``time.thread_time``). Throughput workloads never wait for
anything but the event loop itself, so their CPU time is their cost minus the time the
(shared, noisy) machine gave to other processes: ratios of CPU time are far more
repeatable than wall-clock ratios there, and they are what the verdicts use. Latency-bound
workloads (W3, W6: timers, threads) are timed by the wall clock.

Within a workload the contestants are interleaved: each round runs every contestant
once, in an order that rotates from round to round, so slow drifts in machine load hit
everyone alike. Ratios are taken between medians; the ratio of each round's pair of
samples (the *paired* ratios) shows how much the noise moves it.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from typing import Any

from workloads import Env, NotApplicable, Workload


def available_loops() -> dict[str, str]:
    """Loop name -> version, for the loops that can run here."""
    import platform

    loops = {"asyncio": f"asyncio (CPython {platform.python_version()})"}
    try:
        import uvloop

        loops["uvloop"] = f"uvloop {uvloop.__version__}"
    except ImportError:
        pass
    try:
        import trio

        loops["trio"] = f"trio {trio.__version__}"
    except ImportError:
        pass
    return loops


def sleep_for(loop: str) -> Callable[[float], Any]:
    if loop == "trio":
        import trio

        return trio.sleep
    return asyncio.sleep


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, Any]], errors: list[str]) -> Any:
    """Run ``main()`` to completion on a new event loop of kind ``loop``."""
    if loop == "trio":
        import trio

        return trio.run(main)
    if loop == "uvloop":
        import uvloop

        ev = uvloop.new_event_loop()
    else:
        ev = asyncio.new_event_loop()

    def on_error(_: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        errors.append(repr(exc) if exc is not None else str(context.get("message")))

    ev.set_exception_handler(on_error)
    try:
        return ev.run_until_complete(main())
    finally:
        try:
            ev.run_until_complete(ev.shutdown_asyncgens())
        finally:
            ev.close()


def tasks_alive(loop: str) -> int:
    if loop == "trio":
        import trio

        return trio.lowlevel.current_statistics().tasks_living
    return len(asyncio.all_tasks())


@dataclass(frozen=True)
class Contestant:
    impl: str  # key into Workload.impls
    loop: str

    @property
    def label(self) -> str:
        return f"{self.impl}@{self.loop}"

    @property
    def is_peer(self) -> bool:
        return self.impl in ("aiostream", "pypeln")


@dataclass
class Cell:
    """The samples of one contestant on one workload."""

    n: int = 0
    status: str = "ok"  # ok | n/a | WRONG | ERROR
    why: str = ""
    seconds: dict[int, float] = field(default_factory=dict)  # round -> timed seconds
    wall: dict[int, float] = field(default_factory=dict)  # round -> wall-clock seconds
    notes: set[str] = field(default_factory=set)
    spent: float = 0.0

    def per_item(self, wall: bool = False) -> dict[int, float]:
        return {r: s / self.n for r, s in (self.wall if wall else self.seconds).items()}

    def median(self) -> float | None:
        return statistics.median(self.seconds.values()) if self.seconds else None

    def median_per_item(self, wall: bool = False) -> float | None:
        xs = self.wall if wall else self.seconds
        return statistics.median(xs.values()) / self.n if xs else None


@dataclass
class Settings:
    scale: float = 1.0  # 0.1 with --quick
    min_reps: int = 5
    max_reps: int = 15
    peer_reps: int = 3
    cell_budget: float = 2.5  # seconds; past min_reps a cell stops repeating after this
    max_sample: float = 1.0  # peers projected to take longer per sample are sized down
    target_sample: float = 0.3


_NICE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Sampler:
    """Runs and checks samples of one workload."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._expected: dict[int, list[Any]] = {}

    def expected(self, n: int) -> list[Any]:
        if n not in self._expected:
            out = self.workload.expected(n)
            self._expected[n] = out if self.workload.ordered else sorted(out)
        return self._expected[n]

    def check(self, out: list[Any], n: int) -> str:
        expected = self.expected(n)
        if len(out) != len(expected):
            return f"{len(out)} items, expected {len(expected)}"
        if (out if self.workload.ordered else sorted(out)) != expected:
            return "items differ from the expected output" + (
                " (or their order)" if self.workload.ordered else ""
            )
        return ""

    def sample(self, who: Contestant, n: int, cell: Cell) -> tuple[float, float] | None:
        """One run: (wall-clock seconds, CPU seconds of this thread), or None after
        marking the cell failed."""
        impl = self.workload.impls[who.impl]
        errors: list[str] = []
        pool = None
        if self.workload.needs_pool:
            pool = ThreadPoolExecutor(max_workers=16)
            wait_all([pool.submit(time.sleep, 0.002) for _ in range(16)])  # start threads

        async def main() -> tuple[float, float, list[Any], int]:
            env = Env(who.loop, sleep_for(who.loop), pool)
            before = tasks_alive(who.loop)
            cpu, started = time.thread_time(), time.perf_counter()
            out = await impl(n, env)
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
            for _ in range(3):
                await env.sleep(0)
            return wall, cpu, out, tasks_alive(who.loop) - before

        gc.collect()
        try:
            wall, cpu, out, left = run_on(who.loop, main, errors)
        except NotApplicable as exc:
            cell.status, cell.why = "n/a", str(exc)
            return None
        except Exception as exc:
            cell.status, cell.why = "ERROR", f"{type(exc).__name__}: {exc}"[:200]
            return None
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        if errors:
            cell.notes.add(f"event loop reported: {errors[0][:120]} (x{len(errors)})")
        if left > 0:
            cell.notes.add(f"{left} task(s) still alive after the run")
        wrong = self.check(out, n)
        if wrong:
            cell.status, cell.why = "WRONG", wrong
            return None
        return wall, cpu


def measure(
    workload: Workload,
    contestants: list[Contestant],
    settings: Settings,
    log: Callable[[str], None],
) -> dict[str, Cell]:
    """Interleaved samples of every contestant on ``workload``."""
    sampler = Sampler(workload)
    full = max(1, int(workload.n * settings.scale))
    cells = {who.label: Cell(n=full) for who in contestants}
    # Warm-up at 1/50 size (discarded); it also sizes down peers too slow for full size.
    for who in contestants:
        cell = cells[who.label]
        probe_n = full if workload.fixed_size else max(1, full // 50)
        probe = Cell(n=probe_n)
        timed = sampler.sample(who, probe_n, probe)
        if timed is None:
            cell.status, cell.why = probe.status, probe.why
            continue
        if who.is_peer and not workload.fixed_size:
            projected = timed[0] / probe_n * full
            if projected > settings.max_sample:
                div = next((d for d in _NICE if projected / d <= settings.target_sample), 1000)
                cell.n = max(1, full // div)
                cell.notes.add(f"sized down to n={cell.n:,} to fit the time budget")
    for rnd in range(settings.max_reps):
        shift = rnd % len(contestants)
        for who in contestants[shift:] + contestants[:shift]:
            cell = cells[who.label]
            reps = settings.peer_reps if who.is_peer else settings.max_reps
            if cell.status != "ok" or len(cell.seconds) >= reps:
                continue
            if len(cell.seconds) >= settings.min_reps and cell.spent >= settings.cell_budget:
                continue
            started = time.perf_counter()
            timed = sampler.sample(who, cell.n, cell)
            cell.spent += time.perf_counter() - started
            if timed is not None:
                wall, cpu = timed
                cell.wall[rnd] = wall
                cell.seconds[rnd] = wall if workload.ideal is not None else cpu
    log(
        f"{workload.key}: "
        + ", ".join(
            f"{label}={len(c.seconds) if c.status == 'ok' else c.status}"
            for label, c in cells.items()
        )
    )
    return cells


@dataclass
class Ratio:
    value: float
    low: float  # paired ratios: min and max over the rounds both ran
    high: float

    def straddles(self, target: float) -> bool:
        return self.low <= target <= self.high


def ratio(a: Cell | None, b: Cell | None, wall: bool = False) -> Ratio | None:
    """``a``'s time per item over ``b``'s (median over median), with the paired range."""
    if a is None or b is None or a.status != "ok" or b.status != "ok":
        return None
    ma, mb = a.median_per_item(wall), b.median_per_item(wall)
    if ma is None or mb is None:
        return None
    pa, pb = a.per_item(wall), b.per_item(wall)
    paired = [pa[r] / pb[r] for r in pa if r in pb] or [ma / mb]
    return Ratio(ma / mb, min(paired), max(paired))

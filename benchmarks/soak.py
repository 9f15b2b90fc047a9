"""Soak test: stream millions of items through a 5-stage concurrent pipeline.

Not part of the test run. It checks that a long run neither loses nor duplicates an item
(the output count and sum are compared with closed forms) and that memory stays flat:
every stage is bounded, so the peak RSS must not depend on the number of items.

    source range(N)
      -> map(async +1, concurrency=8)             decoupled, completion order
      -> filter(sync, drops multiples of 3)       inline
      -> flat_map(async x -> (x, 2x), concurrency=4)
      -> batch(100)
      -> map(in_thread(count and sum), concurrency=4)   the thread pump
      -> async for (adds up counts and sums)

Usage (from the repository root)::

    uv run python benchmarks/soak.py                          # 10 million items, asyncio
    uv run python benchmarks/soak.py --backend trio --items 2000000
    nohup uv run python benchmarks/soak.py > soak.log 2>&1 &  # a long run in the background

It prints progress to stderr every few seconds (items/s so far, current RSS) and a
summary to stdout: items/s, elapsed time, peak RSS (``getrusage`` ``ru_maxrss`` and
``VmHWM`` from ``/proc/self/status``), RSS sampled along the run, and whether the output
was exact. Exit status 1 if it was not.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from flowlet import in_thread, pipe

BATCH = 100


async def plus_one(item: int) -> int:
    return item + 1


def not_multiple_of_3(item: int) -> bool:
    return item % 3 != 0


async def with_double(item: int) -> tuple[int, int]:
    return (item, 2 * item)


def count_and_sum(batch: list[int]) -> tuple[int, int]:
    return len(batch), sum(batch)


def expected(n: int) -> tuple[int, int]:
    """Items and sum of the flat_map's output for a source of ``range(n)``: the values
    1..n except the multiples of 3, each as v and 2v."""
    multiples = n // 3
    kept_count = n - multiples
    kept_sum = n * (n + 1) // 2 - 3 * multiples * (multiples + 1) // 2
    return 2 * kept_count, 3 * kept_sum


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status in KiB (Linux only)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _max_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


async def soak(n: int, report: Callable[[str], None], every: float) -> dict[str, Any]:
    pipeline = (
        pipe(range(n))
        .map(plus_one, concurrency=8)
        .filter(not_multiple_of_3)
        .flat_map(with_double, concurrency=4)
        .batch(BATCH)
        .map(in_thread(count_and_sum), concurrency=4)
    )
    count = total = batches = 0
    samples: list[tuple[int, int | None]] = []  # (items so far, RSS in KiB)
    started = last = time.perf_counter()
    cpu_started = time.process_time()
    async for items, subtotal in pipeline:
        count += items
        total += subtotal
        batches += 1
        if batches % 256 == 0 and (now := time.perf_counter()) - last >= every:
            last = now
            rss = _status_kib("VmRSS")
            samples.append((count, rss))
            rate = count / (now - started)
            report(f"  {count:>12,} outputs  {rate:>12,.0f}/s  RSS {_mib(rss)}")
    elapsed = time.perf_counter() - started
    return {
        "cpu": time.process_time() - cpu_started,
        "count": count,
        "sum": total,
        "batches": batches,
        "elapsed": elapsed,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000_000, help="source items")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between reports")
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rss_before = _status_kib("VmRSS")
    report(f"soak: {args.items:,} items on {args.backend}, RSS before {_mib(rss_before)}")
    result = anyio.run(soak, args.items, report, args.every, backend=args.backend)

    want_count, want_sum = expected(args.items)
    got = (result["count"], result["sum"])
    exact = got == (want_count, want_sum)
    elapsed, cpu = result["elapsed"], result["cpu"]
    along = result["samples"][:: max(1, len(result["samples"]) // 8)]
    samples = ", ".join(f"{c / 1e6:.1f}M: {_mib(r)}" for c, r in along) or "n/a"
    print(f"backend          {args.backend} (Python {sys.version.split()[0]})")
    print(f"source items     {args.items:,}")
    print(f"outputs          {result['count']:,} in {result['batches']:,} batches")
    print(f"elapsed          {elapsed:.1f} s wall, {cpu:.1f} s CPU (all threads)")
    print(f"throughput       {args.items / elapsed:,.0f} source items/s wall")
    print(f"                 {args.items / cpu:,.0f} source items/s per CPU second")
    print(f"RSS before       {_mib(rss_before)}")
    print(
        f"peak RSS         {_mib(_max_rss_kib())} (ru_maxrss), {_mib(_status_kib('VmHWM'))} (VmHWM)"
    )
    print(f"RSS along run    {samples}  (outputs so far: RSS)")
    print(f"output exact     {'yes' if exact else 'NO'}: count and sum {got}, expected")
    print(f"                 {(want_count, want_sum)}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())

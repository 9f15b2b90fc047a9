"""Run one workload implementation for a profiler.

    uv run --group bench python benchmarks/profile_workload.py W4 flowlet [--n 10000]
        [--loop asyncio|uvloop|trio] [--reps 5] [--cprofile 25] [--pyinstrument]

Without a profiler option it just runs ``--reps`` samples and prints the CPU time per
item, which makes it the program to hand to an external profiler, e.g.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        .venv/bin/python benchmarks/profile_workload.py W4 flowlet --n 2000 --reps 1

Instructions per item: run callgrind at two sizes and divide the difference in total
instructions by the difference in items (start-up and imports cancel out); set
``PYTHONHASHSEED=0`` and pass ``--no-check --pace 0.1``. flowlet lets the event loop run about
every 2 ms of work (``PACE_INTERVAL`` in ``flowlet._engine``); under valgrind, 50x
slower, that would be 50x as many loop iterations per item as in a normal run, so the
interval is scaled up to match.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from harness import run_on, sleep_for
from workloads import WORKLOADS, Env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("impl", help="flowlet, flowlet_aiter, baseline, aiostream or pypeln")
    ap.add_argument("--n", type=int, help="input size (default: the workload's)")
    ap.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop", "trio"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cprofile", type=int, metavar="TOP", help="cProfile, print TOP rows")
    ap.add_argument("--pyinstrument", action="store_true")
    ap.add_argument(
        "--no-check",
        action="store_true",
        help="skip the output check (its cost would count in callgrind's totals)",
    )
    ap.add_argument(
        "--pace", type=float, metavar="SECONDS", help="flowlet's pacing interval (under valgrind)"
    )
    args = ap.parse_args(argv)

    if args.pace:
        import importlib
        import pkgutil

        import flowlet._engine

        for info in pkgutil.iter_modules(flowlet._engine.__path__):
            module = importlib.import_module(f"flowlet._engine.{info.name}")
            if hasattr(module, "PACE_INTERVAL"):
                module.PACE_INTERVAL = args.pace  # type: ignore[attr-defined]
    w = WORKLOADS[args.workload]
    impl = w.impls[args.impl]
    n = args.n or w.n
    pool = None
    if w.needs_pool:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=16)

    async def body() -> float:
        env = Env(args.loop, sleep_for(args.loop), pool)
        cpu = time.thread_time()
        out = await impl(n, env)
        cpu = time.thread_time() - cpu
        if not args.no_check:
            assert len(out) == len(w.expected(n)), "wrong output"
        return cpu

    def run_all() -> list[float]:
        return [run_on(args.loop, body, []) for _ in range(args.reps)]

    profiler: Any = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    elif args.pyinstrument:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
    cpus = run_all()
    if args.cprofile:
        import pstats

        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.cprofile)
    elif args.pyinstrument:
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    best = min(cpus)
    print(
        f"{args.workload} {args.impl}@{args.loop} n={n}: best CPU {best * 1e3:.2f} ms, "
        f"{best / n * 1e6:.3f} µs/item over {len(cpus)} runs"
    )
    if pool is not None:
        pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

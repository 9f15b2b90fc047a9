"""flowlet benchmarks: the workloads of issue 3, timed against hand-written asyncio.

    uv run --group bench python benchmarks/run.py [--quick] [--only W1,W3]
        [--backend asyncio|trio|uvloop|all] [--no-peers] [--json out.json]

Prints a markdown report (progress goes to stderr). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import harness
import report
import runahead
from harness import Contestant, Settings
from workloads import WORKLOADS, Env

ROOT = Path(__file__).resolve().parent.parent
TRIO_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _version(dist: str) -> str:
    try:
        if dist == "pypeln":  # imports pkg_resources through stopit: check it imports
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pypeln  # noqa: F401
        else:
            __import__(dist)
        return importlib.metadata.version(dist)
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"


def _flowlet_source() -> str:
    """Where flowlet is imported from, and its git state when that is this checkout."""
    import flowlet

    src = Path(flowlet.__file__).resolve().parent.parent
    if src != ROOT / "src":
        return f"imported from {src}"
    return f"imported from ./src, git {_git()}"


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + (" + uncommitted changes in src/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def contestants_for(key: str, loops: list[str], peers: list[str]) -> list[Contestant]:
    w = WORKLOADS[key]
    out: list[Contestant] = []
    if "asyncio" in loops or "trio" in loops:  # trio is compared with flowlet on asyncio
        out += [Contestant("baseline", "asyncio"), Contestant("flowlet", "asyncio")]
    if "asyncio" in loops:
        if w.sequential:
            out.append(Contestant("flowlet_aiter", "asyncio"))
        out += [Contestant(p, "asyncio") for p in peers if p in w.impls]
    if "trio" in loops and key in TRIO_WORKLOADS:
        out.append(Contestant("flowlet", "trio"))
    if "uvloop" in loops:
        out += [Contestant("baseline", "uvloop"), Contestant("flowlet", "uvloop")]
    return out


def run_w7(loops: list[str], scale: float, reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for loop in loops:
        for name, variant in runahead.VARIANTS.items():
            if loop == "trio" and name.startswith("baseline"):
                continue  # the baseline is asyncio code
            label = f"{name}@{loop}"
            samples: list[runahead.RunAhead] = []
            try:
                for _ in range(reps):

                    async def main(variant: Any = variant, loop: str = loop) -> Any:
                        env = Env(loop, harness.sleep_for(loop))
                        return await runahead.measure(variant, env, scale)

                    errors: list[str] = []
                    sample = harness.run_on(loop, main, errors)
                    if errors:
                        sample.notes.append(f"event loop reported: {errors[0][:100]}")
                    samples.append(sample)
                results[label] = samples
            except Exception as exc:
                results[label] = f"{type(exc).__name__}: {exc}"[:200]
    _log("W7: " + ", ".join(results))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1/10 sizes, 3 reps: a smoke run")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W3,W7")
    ap.add_argument(
        "--backend",
        default="all",
        choices=["asyncio", "trio", "uvloop", "all"],
        help="event loop(s) to measure (default: all that are installed)",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip aiostream and pypeln")
    ap.add_argument("--json", help="also write every sample here")
    ap.add_argument("--reps", type=int, help="samples per cell (default 5..15, quick 3)")
    args = ap.parse_args(argv)

    keys = [k.strip().upper() for k in args.only.split(",")] if args.only else [*WORKLOADS, "W7"]
    unknown = [k for k in keys if k not in WORKLOADS and k != "W7"]
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(unknown)}")
    available = harness.available_loops()
    wanted = list(available) if args.backend == "all" else [args.backend]
    missing = [loop for loop in wanted if loop not in available]
    if missing:
        ap.error(f"not installed: {', '.join(missing)}")

    settings = Settings()
    if args.quick:
        settings = Settings(scale=0.1, min_reps=3, max_reps=3, peer_reps=3)
    if args.reps:
        settings.min_reps = settings.max_reps = args.reps

    versions = {
        dist: _version(dist)
        for dist in ("flowlet", "anyio", "trio", "uvloop", "aiostream", "pypeln")
    }
    peers = (
        []
        if args.no_peers
        else [p for p in ("aiostream", "pypeln") if not versions[p].startswith("not importable")]
    )
    if "asyncio" not in wanted:
        peers = []

    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, nproc={os.cpu_count()}, {_cpu()}, {platform.platform()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "loops": [available[loop] for loop in wanted],
        "versions": versions,
        "flowlet_source": _flowlet_source(),
        "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
        "load_start": _load(),
    }
    loads = [meta["load_start"]]
    started = time.perf_counter()
    results: dict[str, dict[str, harness.Cell]] = {}
    for key in keys:
        if key == "W7":
            continue
        results[key] = harness.measure(
            WORKLOADS[key], contestants_for(key, wanted, peers), settings, _log
        )
        loads.append(_load())
    w7 = run_w7(wanted, settings.scale, 2 if args.quick else 3) if "W7" in keys else {}
    meta["load_end"] = _load()
    meta["wall_s"] = time.perf_counter() - started
    loads.append(meta["load_end"])
    one_minute = [float(x.split("/")[0]) for x in loads if x != "n/a"]
    meta["load_1min_range"] = (
        f"{min(one_minute):.2f}-{max(one_minute):.2f}" if one_minute else "n/a"
    )
    _log(f"total {meta['wall_s']:.0f} s")

    verdicts = report.Verdicts()
    body = report.throughput_tables(results, verdicts, wanted)
    if w7:
        body += report.runahead_table(w7, verdicts)
    lines = [
        f"## flowlet benchmarks, {meta['date']}",
        "",
        f"- machine: {meta['machine']}",
        f"- load average (1/5/15 min): {meta['load_start']} at start, {meta['load_end']} at "
        f"the end; 1-minute load during the run {meta['load_1min_range']}",
        f"- python: {meta['python']}; loops: {', '.join(meta['loops'])}",
        "- "
        + "; ".join(f"{d} {v}" for d, v in versions.items())
        + f"; flowlet {meta['flowlet_source']}",
        f"- sizes: {'quick (1/10)' if args.quick else 'full'}; samples per cell: "
        f"{settings.min_reps}..{settings.max_reps} (peers {settings.peer_reps}), fresh event loop "
        "per sample, contestants interleaved, median reported",
        f"- wall time: {meta['wall_s']:.0f} s; command: `{meta['command']}`",
        "",
        "Ratios are time per item over the reference's (median over median; lower is "
        "better). Throughput workloads are timed by the CPU time of the event-loop thread "
        "(robust on a shared machine; the wall-clock ratio is shown beside it), W3 and W6 "
        "by the wall clock. In brackets: the lowest and highest ratio of samples taken in "
        'the same round. "~" after a verdict: the target lies inside that range, so the '
        "verdict is within the noise.",
        "",
        *body,
        "Verdicts: " + verdicts.summary(),
        "",
        *report.notes(results),
        *report.spread(results),
    ]
    print("\n".join(lines))
    if args.json:
        data = {
            "meta": meta,
            "verdicts": verdicts.rows,
            "results": {
                key: {label: asdict(cell) for label, cell in cells.items()}
                for key, cells in results.items()
            },
            "W7": {
                label: v if isinstance(v, str) else [asdict(s) for s in v]
                for label, v in w7.items()
            },
        }
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown tables of the ratios, the targets and their verdicts."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import runahead
from harness import Cell, Ratio, ratio
from workloads import WORKLOADS

AITER_TARGET = 1.2
TRIO_TARGET = 2.0


@dataclass
class Verdicts:
    rows: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, name: str, ok: bool) -> None:
        self.rows.append((name, ok))

    def summary(self) -> str:
        passed = [n for n, ok in self.rows if ok]
        failed = [n for n, ok in self.rows if not ok]
        text = f"**{len(passed)} PASS, {len(failed)} FAIL**"
        return text + (f" (FAIL: {', '.join(failed)})" if failed else "")


def _time(cell: Cell | None, key: str) -> str:
    if cell is None:
        return "-"
    if cell.status != "ok":
        return cell.status
    w = WORKLOADS[key]
    median = cell.median()
    assert median is not None
    if w.ideal is not None:
        return f"{median:.3f} s ({median / w.ideal(cell.n):.2f}x ideal)"
    per_item = median / cell.n
    return f"{per_item * 1e6:.3g} µs/item"


def _ratio(r: Ratio | None) -> str:
    if r is None:
        return "-"
    return f"**{r.value:.2f}x** ({r.low:.2f}-{r.high:.2f})"


def _peer(cells: dict[str, Cell], name: str, ref: Cell | None) -> str:
    cell = cells.get(f"{name}@asyncio")
    if cell is None:
        return "-"
    if cell.status != "ok":
        return cell.status
    r = ratio(cell, ref)
    sized = f" (n={cell.n:,})" if any("sized down" in n for n in cell.notes) else ""
    return ("-" if r is None else f"{r.value:.1f}x") + sized


def _verdict(r: Ratio | None, target: float, name: str, verdicts: Verdicts) -> str:
    if r is None:
        verdicts.add(name, False)
        return "no data"
    ok = r.value <= target
    verdicts.add(name, ok)
    return ("PASS" if ok else "FAIL") + (" ~" if r.straddles(target) else "")


def throughput_tables(
    results: dict[str, dict[str, Cell]], verdicts: Verdicts, loops: list[str]
) -> list[str]:
    """The tables for the loops asked for (trio also measures flowlet on asyncio, as its
    reference, but that alone does not make an asyncio table)."""
    out: list[str] = []

    if "asyncio" in loops:
        out += [
            "### W1-W8 on the default asyncio loop: flowlet x baseline",
            "",
            "| | workload | baseline | flowlet | flowlet x baseline (paired range) | target "
            "| result | wall-clock x | aiostream | pypeln |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, cells in results.items():
            w, base = WORKLOADS[key], cells.get("baseline@asyncio")
            fl = cells.get("flowlet@asyncio")
            r, rw = ratio(fl, base), ratio(fl, base, wall=True)
            out.append(
                f"| {key} | {w.title} | {_time(base, key)} | {_time(fl, key)} | {_ratio(r)} "
                f"| <= {w.target:g}x | {_verdict(r, w.target, key, verdicts)} "
                f"| {'-' if rw is None else f'{rw.value:.2f}x'} "
                f"| {_peer(cells, 'aiostream', base)} | {_peer(cells, 'pypeln', base)} |"
            )
        out.append("")

        seq = [
            k for k in results if WORKLOADS[k].sequential and "flowlet_aiter@asyncio" in results[k]
        ]
        if seq:
            out += [
                "### `async for` over sequential stages: flowlet x plain async-generator chain",
                "",
                "| | workload | async-generator chain | flowlet `async for` "
                "| flowlet x chain (paired range) | target | result |",
                "|---|---|---|---|---|---|---|",
            ]
            for key in seq:
                cells = results[key]
                base, fl = cells.get("baseline@asyncio"), cells.get("flowlet_aiter@asyncio")
                r = ratio(fl, base)
                out.append(
                    f"| {key} | {WORKLOADS[key].title} | {_time(base, key)} | {_time(fl, key)} "
                    f"| {_ratio(r)} | <= {AITER_TARGET:g}x "
                    f"| {_verdict(r, AITER_TARGET, key + ' async for', verdicts)} |"
                )
            out.append("")

    if "trio" in loops:
        out += [
            "### trio: flowlet on trio x flowlet on asyncio",
            "",
            "| | workload | flowlet on asyncio | flowlet on trio "
            "| trio x asyncio (paired range) | target | result | trio x asyncio baseline |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, cells in results.items():
            trio_cell = cells.get("flowlet@trio")
            if trio_cell is None:
                continue
            fl, base = cells.get("flowlet@asyncio"), cells.get("baseline@asyncio")
            r = ratio(trio_cell, fl)
            rb = ratio(trio_cell, base)
            out.append(
                f"| {key} | {WORKLOADS[key].title} | {_time(fl, key)} | {_time(trio_cell, key)} "
                f"| {_ratio(r)} | <= {TRIO_TARGET:g}x "
                f"| {_verdict(r, TRIO_TARGET, key + ' trio', verdicts)} "
                f"| {'-' if rb is None else f'{rb.value:.2f}x'} |"
            )
        out.append("")

    if "uvloop" in loops:
        out += [
            "### uvloop: flowlet x baseline, both on uvloop",
            "",
            "| | workload | baseline | flowlet | flowlet x baseline (paired range) "
            "| target | result | flowlet uvloop x asyncio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, cells in results.items():
            base, fl = cells.get("baseline@uvloop"), cells.get("flowlet@uvloop")
            if fl is None:
                continue
            w = WORKLOADS[key]
            r = ratio(fl, base)
            ra = ratio(fl, cells.get("flowlet@asyncio"))
            out.append(
                f"| {key} | {w.title} | {_time(base, key)} | {_time(fl, key)} | {_ratio(r)} "
                f"| <= {w.target:g}x | {_verdict(r, w.target, key + ' uvloop', verdicts)} "
                f"| {'-' if ra is None else f'{ra.value:.2f}x'} |"
            )
        out.append("")
    return out


def runahead_table(results: dict[str, list[Any]], verdicts: Verdicts) -> list[str]:
    out = [
        "### W7: run-ahead and memory of a slow consumer (lazy async source, "
        f"map c={runahead.CONCURRENCY}, default buffer {runahead.BUFFER}, "
        f"break after {runahead.STOP:,})",
        "",
        "| variant | loop | max run-ahead (at break) | documented bound | peak memory growth "
        "| source closed | tasks left | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, samples in results.items():
        variant, loop = label.rsplit("@", 1)
        if isinstance(samples, str):  # an error
            out.append(f"| {variant} | {loop} | {samples} | | | | | ERROR |")
            verdicts.add(f"W7 {label}", False)
            continue
        ok, why = runahead.verdict(samples)
        if variant.startswith("flowlet"):
            verdicts.add(f"W7 {label}", ok)
        ahead = max(s.max_ahead for s in samples)
        at_stop = statistics.median(s.ahead_at_stop or 0 for s in samples)
        peak = max(s.peak_kib for s in samples)
        closed = sum(s.closed for s in samples)
        left = max(s.tasks_left for s in samples)
        notes = sorted({n for s in samples for n in s.notes})
        out.append(
            f"| {variant} | {loop} | {ahead} ({at_stop:.0f}) | {runahead.BOUND} "
            f"| {peak:.0f} KiB | {closed}/{len(samples)} | {left} "
            f"| {'PASS' if ok else 'FAIL: ' + why}{'; ' + '; '.join(notes) if notes else ''} |"
        )
    out.append("")
    return out


def notes(results: dict[str, dict[str, Cell]]) -> list[str]:
    lines = []
    for key, cells in results.items():
        for label, cell in cells.items():
            if cell.status != "ok":
                lines.append(f"- {key} {label}: {cell.status}: {cell.why}")
            lines += [f"- {key} {label}: {note}" for note in sorted(cell.notes)]
    return (["Notes:", "", *lines, ""]) if lines else []


def spread(results: dict[str, dict[str, Cell]]) -> list[str]:
    out = [
        "<details><summary>Samples per cell (seconds: CPU time for throughput workloads, wall "
        "clock for W3 and W6; min / median / max, count)</summary>",
        "",
        "| | contestant | n | min | median | max | samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, cells in results.items():
        for label, cell in cells.items():
            xs = list(cell.seconds.values())
            if xs:
                out.append(
                    f"| {key} | {label} | {cell.n:,} | {min(xs):.4f} | "
                    f"{statistics.median(xs):.4f} | {max(xs):.4f} | {len(xs)} |"
                )
    return [*out, "", "</details>", ""]

"""The multi-lane benchmark's bars and tables (from `benchmarks.lanes` results)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SPEEDUP_BAR = 0.95  # x lanes x the one-lane throughput
DUTY_BAR = 0.97
KILL_BAR = 2.8  # the three lanes left, x one lane
SWITCH_BAR = 0.25  # of the switching storyboard order is charged
CPU_BAR_MS, STORE_BAR_MS = 100.0, 30.0
IDLE_CPU_BAR_PCT, IDLE_API_BAR = 0.5, 0.2  # % of a core, API requests: per lane-second


def all_rows(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from results.get("throughput", [])
    if "kill" in results:
        yield results["kill"]
    if "warm" in results:
        yield results["warm"]
    yield from results.get("cost", [])
    yield from results.get("idle", [])


def one_lane(results: dict[str, Any]) -> float | None:
    """The one-lane throughput of this run, else the one taken from an earlier run's results."""
    here = next((r["throughput"] for r in results.get("throughput", []) if r["lanes"] == 1), None)
    reference: float | None = results.get("one_lane_reference", {}).get("throughput")
    return here if here is not None else reference


def _bar(name: str, measured: str, passed: bool | None) -> dict[str, Any]:
    verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
    return {"bar": name, "measured": measured, "verdict": verdict}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per bar of the issue: what was measured and whether it holds."""
    bars = []
    base = one_lane(results)
    for row in results.get("throughput", []):
        lanes = row["lanes"]
        speedup = row["throughput"] / base if base and row["throughput"] else None
        row["speedup"] = speedup
        if lanes > 1:
            bars.append(
                _bar(
                    f"{lanes} lanes: throughput >= {SPEEDUP_BAR} x {lanes} x one lane",
                    "-" if speedup is None else f"{speedup:.2f}x (bar {SPEEDUP_BAR * lanes:.2f}x)",
                    None if speedup is None else speedup >= SPEEDUP_BAR * lanes,
                )
            )
        duty = row["duty_min"]
        bars.append(
            _bar(
                f"{lanes} lane(s): duty >= {DUTY_BAR:.0%} on every lane",
                "-"
                if duty is None
                else f"min {duty:.2%} (over the batch's span: {fmt(row['duty_batch_min'], '.2%')})",
                None if duty is None else duty >= DUTY_BAR,
            )
        )
    kill = results.get("kill")
    if kill is not None:
        n = kill["n"]
        complete = kill["images_stored"] == n and kill["sentences_rendered"] == n
        bars.append(_bar("kill: every sentence stored", f"{kill['images_stored']}/{n}", complete))
        twice = kill["sentences_rendered_twice"]
        bars.append(_bar("kill: none rendered twice", f"{len(twice)} twice", not twice))
        ledger = kill["ledger"]
        bars.append(
            _bar(
                "kill: no attempt spent",
                f"{ledger['attempts_spent']} spent, {ledger['jobs_released']} released,"
                f" max attempt {ledger['max_attempt']}",
                ledger["attempts_spent"] == 0,
            )
        )
        after = kill.get("throughput_after_kill")
        ratio = after / base if after and base else None
        kill["after_kill_x_one_lane"] = ratio
        bars.append(
            _bar(
                f"kill: the other three >= {KILL_BAR} x one lane",
                "-" if ratio is None else f"{ratio:.2f}x",
                None if ratio is None else ratio >= KILL_BAR,
            )
        )
    warm = results.get("warm")
    if warm is not None:
        ratio = warm["switch_ratio"]
        bars.append(
            _bar(
                f"warm: switching <= {SWITCH_BAR:.0%} of storyboard order",
                "-"
                if ratio is None
                else f"{warm['switch_s']:.0f} s vs {warm['position_switch_s']:.0f} s: {ratio:.1%}",
                None if ratio is None else ratio <= SWITCH_BAR,
            )
        )
    for row in results.get("cost", []):
        # The store bar is on its busy time (see probes.StoreTimer): the summed wall time of
        # overlapping calls grows with every thread that waits, not with what the store costs.
        cpu, store = row["cpu_ms_per_image"], row.get("store_busy_ms_per_image")
        bars.append(
            _bar(
                f"cost {row['lanes']} lane(s): CPU <= {CPU_BAR_MS:g} ms/image",
                "-" if cpu is None else f"{cpu:.1f} ms",
                None if cpu is None else cpu <= CPU_BAR_MS,
            )
        )
        bars.append(
            _bar(
                f"cost {row['lanes']} lane(s): store busy <= {STORE_BAR_MS:g} ms/image",
                "-" if store is None else f"{store:.1f} ms",
                None if store is None else store <= STORE_BAR_MS,
            )
        )
    for row in results.get("idle", []):
        cpu, req = row.get("idle_cpu_pct_per_lane"), row.get("idle_req_per_lane_s")
        where = f"idle {row['lanes']} lanes T={row['t']:g}s"
        bars.append(
            _bar(
                f"{where}: batch CPU <= {IDLE_CPU_BAR_PCT:g}% of a core per lane",
                "-"
                if cpu is None
                else f"{cpu:.2f}% over {row['idle_quiet_s']:.0f} s quiet (whole window,"
                f" per-image work in: {fmt(row['window_cpu_pct_per_lane'], '.2f')}%)",
                None if cpu is None else cpu <= IDLE_CPU_BAR_PCT,
            )
        )
        bars.append(
            _bar(
                f"{where}: <= {IDLE_API_BAR:g} API requests per lane-second",
                "-"
                if req is None
                else f"{req:.3f} (whole window: {fmt(row['window_req_per_lane_s'], '.3f')})",
                None if req is None else req <= IDLE_API_BAR,
            )
        )
    return bars


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = [
    ("scenario", "scenario", "s"),
    ("lanes", "lanes", "d"),
    ("N", "n", "d"),
    ("T s", "t", "g"),
    ("ok", "images_stored", "d"),
    ("wall s", "wall_s", ".1f"),
    ("start s", "startup_s", ".2f"),
    ("img/s", "throughput", ".3f"),
    ("x 1 lane", "speedup", ".2f"),
    ("lane eff", "lane_efficiency", ".3f"),
    ("duty min %", "duty_min_pct", ".2f"),
    ("duty batch min %", "duty_batch_min_pct", ".2f"),
    ("switch s", "switch_s", ".1f"),
    ("CPU ms/img", "cpu_ms_per_image", ".1f"),
    ("store busy ms/img", "store_busy_ms_per_image", ".1f"),
    ("store ms/img (summed)", "store_ms_per_image", ".1f"),
    ("store calls/img", "store_calls_per_image", ".1f"),
    ("API req/img", "api_requests_per_image", ".1f"),
    ("RSS MiB", "peak_rss_mib", ".0f"),
    ("thr", "max_threads", "d"),
]


def table(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for scenario in ("throughput", "kill", "warm", "cost", "idle"):
        rows = results.get(scenario)
        for row in rows if isinstance(rows, list) else [rows] if rows else []:
            shown = {
                **row,
                "scenario": scenario,
                "duty_min_pct": None if row["duty_min"] is None else 100 * row["duty_min"],
                "duty_batch_min_pct": (
                    None if row["duty_batch_min"] is None else 100 * row["duty_batch_min"]
                ),
            }
            lines.append("| " + " | ".join(fmt(shown.get(k), s) for _, k, s in COLUMNS) + " |")
    return "\n".join(lines)


IDLE_COLUMNS = [
    ("lanes", "lanes", "d"),
    ("T s", "t", "g"),
    ("window s", "idle_window_s", ".1f"),
    ("images in it", "idle_images_in_window", "d"),
    ("CPU %/lane", "window_cpu_pct_per_lane", ".2f"),
    ("req/lane-s", "window_req_per_lane_s", ".3f"),
    ("quiet s", "idle_quiet_s", ".1f"),
    ("quiet CPU %/lane", "idle_cpu_pct_per_lane", ".2f"),
    ("quiet API CPU %/lane", "idle_api_cpu_pct_per_lane", ".2f"),
    ("quiet req/lane-s", "idle_req_per_lane_s", ".3f"),
]


def idle_table(rows: list[dict[str, Any]]) -> str:
    """Steady state of the idle scenario: the whole window, then its quiet part."""
    lines = ["| " + " | ".join(h for h, _, _ in IDLE_COLUMNS) + " |"]
    lines.append("|" + "---|" * len(IDLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k), s) for _, k, s in IDLE_COLUMNS) + " |")
    return "\n".join(lines)


def print_tables(results: dict[str, Any]) -> None:
    print()
    print(table(results))
    kill = results.get("kill")
    if kill is not None and kill.get("killed_at_s") is not None:
        print(
            f"\nkill: {kill['killed_lane']} killed at {kill['killed_at_s']:.1f} s after"
            f" {kill['stored_before_kill']} stored; {kill['stored_after_kill']} stored after at"
            f" {fmt(kill['throughput_after_kill'], '.3f')} img/s"
        )
    warm = results.get("warm")
    if warm is not None:
        print(
            f"warm: switching {warm['switch_s']:.1f} s; storyboard order on the same lanes"
            f" {warm['position_switch_s']:.1f} s,"
            f" on one lane {warm['position_switch_one_lane_s']:.1f} s"
        )
    idle = results.get("idle", [])
    if idle:
        print("\n" + idle_table(idle))
    print("\n| bar | measured | verdict |\n|---|---|---|")
    for bar in results.get("verdicts", []):
        print(f"| {bar['bar']} | {bar['measured']} | {bar['verdict']} |")

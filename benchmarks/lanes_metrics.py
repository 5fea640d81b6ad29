"""The multi-lane benchmark's numbers, from one batch's raw measurements (pure functions).

Definitions (also in docs/SCALING.md):
- throughput: images stored / (last image stored - flow called), images per second;
  `lane_efficiency`: throughput x mean render time / lanes (1.0: no lane ever idle);
- a lane's duty: its busy time / (its last render's end - its first render's start), i.e.
  the GPU never waited between two of its renders; `duty_batch` divides by the batch's
  span instead (its first start to the last render's end on any lane), so a lane that ran
  dry before the others finished shows it;
- switching: the simulator's LoRA-switch and new-reference charges (RunRecord.switch_s);
  `position_switch_s` is what the same graphs would be charged in storyboard order,
  dealt to the same number of lanes in turn (what a feed blind to warm models does when
  every render takes as long), by the simulator's own rule (`storyboard.simulator.warm`).

The duty minima leave out a lane the benchmark killed.
"""

from __future__ import annotations

import collections
from typing import Any

from storyboard.simulator.warm import WarmState, charges


def lane_metrics(runs: list[dict[str, Any]], batch_end: float | None) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: r["start"])
    busy = sum(r["end"] - r["start"] for r in runs)
    first = runs[0]["start"] if runs else None
    last = max((r["end"] for r in runs), default=None)
    own_span = (last - first) if first is not None and last is not None else None
    batch_span = (batch_end - first) if first is not None and batch_end is not None else None
    return {
        "renders": len(runs),
        "renders_ok": sum(1 for r in runs if r["status"] == "success"),
        "busy_s": busy,
        "switch_s": sum(r["lora_s"] + r["reference_s"] for r in runs),
        "load_s": sum(r["load_s"] for r in runs),
        "first_start": first,
        "last_end": last,
        "duty": busy / own_span if own_span else None,
        "duty_batch": busy / batch_span if batch_span else None,
    }


def _state(warm: dict[str, Any]) -> WarmState:
    return WarmState(
        frozenset(warm["models"]),
        frozenset(tuple(lora) for lora in warm["loras"]),
        frozenset(warm["references"]),
    )


def position_order_switch_s(
    by_sentence: dict[int, dict[str, Any]], lanes: int, *, lora_switch_s: float, reference_s: float
) -> float:
    """Switching charges of the sentences' graphs in storyboard order, dealt to `lanes` in turn."""
    previous: list[WarmState | None] = [None] * lanes
    total = 0.0
    for k, sentence in enumerate(sorted(by_sentence)):
        current = _state(by_sentence[sentence])
        charged = charges(
            previous[k % lanes],
            current,
            load_s=0.0,
            lora_switch_s=lora_switch_s,
            reference_s=reference_s,
        )
        total += charged.lora_s + charged.reference_s
        previous[k % lanes] = current
    return total


def ledger(jobs: list[tuple[str, str, int, str | None]]) -> dict[str, Any]:
    """What the store's image jobs (sentence, status, attempt, error) say about attempts.

    A job released because its lane went away (`Store.release_job`: status failed, error
    `released: ...`) spent no attempt; any other failed job, or an attempt above 1, did.
    """
    per_sentence = collections.Counter(job[0] for job in jobs)
    released = [job for job in jobs if (job[3] or "").startswith("released")]
    spent = [job for job in jobs if (job[1] == "failed" and job not in released) or job[2] > 1]
    return {
        "jobs": len(jobs),
        "jobs_by_status": dict(collections.Counter(job[1] for job in jobs)),
        "jobs_released": len(released),
        "attempts_spent": len(spent),
        "max_attempt": max((job[2] for job in jobs), default=0),
        "sentences_with_several_jobs": sum(1 for c in per_sentence.values() if c > 1),
    }


def batch_metrics(raw: dict[str, Any], *, n: int, t: float) -> dict[str, Any]:
    """One batch: throughput, per-lane duty and switching, duplicates, attempts, CPU, store."""
    lanes: dict[str, list[dict[str, Any]]] = raw["lanes"]
    stored: list[float] = raw["stored_at"]
    t0, t1 = raw["t0"], raw["t1"]
    all_runs = [r for runs in lanes.values() for r in runs]
    batch_end = max((r["end"] for r in all_runs), default=None)
    per_lane = {name: lane_metrics(runs, batch_end) for name, runs in lanes.items()}
    # A killed lane stopped on purpose: its duty says nothing about the feed.
    working = [m for name, m in per_lane.items() if name != raw.get("killed_lane")]
    ok_runs = [r for r in all_runs if r["status"] == "success"]
    renders_per_sentence = collections.Counter(r["sentence"] for r in ok_runs)
    last_stored = max(stored) if stored else None
    duties = [m["duty"] for m in working if m["duty"] is not None]
    duties_batch = [m["duty_batch"] for m in working if m["duty_batch"] is not None]
    first_starts = [m["first_start"] for m in per_lane.values() if m["first_start"] is not None]
    store_s = sum(raw["store_seconds"].values())
    throughput = len(stored) / (last_stored - t0) if last_stored else None
    mean_render = sum(r["end"] - r["start"] for r in all_runs) / len(all_runs) if all_runs else None
    return {
        "n": n,
        "t": t,
        "lanes": len(lanes),
        "state": raw["state"],
        "message": raw.get("message"),
        "images_stored": len(stored),
        "wall_s": t1 - t0,
        "startup_s": (min(first_starts) - t0) if first_starts else None,
        "last_lane_start_s": (max(first_starts) - t0) if first_starts else None,
        "throughput": throughput,
        "mean_render_s": mean_render,
        # Throughput in lanes' worth of renders: 1.0 = every lane rendering all the time. Unlike
        # a ratio of two runs' throughputs, it does not move when renders get slower (the
        # simulators share the CPU with the orchestrator).
        "lane_efficiency": (
            throughput * mean_render / len(lanes) if throughput and mean_render else None
        ),
        "throughput_wall": len(stored) / (t1 - t0),
        "duty_min": min(duties, default=None),
        "duty_batch_min": min(duties_batch, default=None),
        "switch_s": sum(m["switch_s"] for m in per_lane.values()),
        "render_busy_s": sum(m["busy_s"] for m in per_lane.values()),
        "sentences_rendered": len(renders_per_sentence),
        "sentences_rendered_twice": sorted(
            s for s, c in renders_per_sentence.items() if c > 1 and s is not None
        ),
        "cpu_ms_per_image": 1000 * raw["cpu_s"] / n if raw.get("cpu_s") is not None else None,
        "store_ms_per_image": 1000 * store_s / n,
        # Older results have no busy time: None, not a made-up number.
        "store_busy_ms_per_image": (
            1000 * raw["store_busy_s"] / n if raw.get("store_busy_s") is not None else None
        ),
        "store_calls_per_image": sum(raw["store_calls"].values()) / n,
        "api_requests_per_image": sum(raw["api_requests"].values()) / n,
        "peak_rss_mib": raw["peak_rss"] / 2**20,
        "max_threads": raw["max_threads"],
        "api_boot_s": raw.get("api_boot_s"),
        "settle_s": raw.get("settle_s"),
        "ledger": ledger([tuple(job) for job in raw.get("jobs", [])]),
        "store_seconds": raw["store_seconds"],
        "store_calls": raw["store_calls"],
        "per_lane": per_lane,
    }


def after_kill(raw: dict[str, Any], killed_at: float) -> dict[str, Any]:
    """Throughput of the lanes left: images stored after the kill / time from kill to last."""
    later = [s for s in raw["stored_at"] if s > killed_at]
    span = (max(later) - killed_at) if later else None
    return {
        "killed_at_s": killed_at - raw["t0"],
        "stored_before_kill": len(raw["stored_at"]) - len(later),
        "stored_after_kill": len(later),
        "throughput_after_kill": len(later) / span if span else None,
    }

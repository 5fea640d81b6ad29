"""The lanes benchmark's idle figures from a made-up trace (a pure function; no timing)."""

from __future__ import annotations

import os
from typing import Any

from benchmarks.lanes_idle import ProcTrace, idle_metrics


def _run(start: float, end: float) -> dict[str, Any]:
    return {"start": start, "end": end, "status": "success"}


def test_quiet_time_leaves_out_what_follows_each_render_boundary() -> None:
    # Two lanes rendering 10 s each from t = 0 and t = 1, three renders a lane: steady from
    # t = 1 (both started) to t = 30 (the first lane's last end).
    lanes = {
        "a": [_run(0, 10), _run(10, 20), _run(20, 30)],
        "b": [_run(1, 11), _run(11, 21), _run(21, 31)],
    }
    # One sample a second; the worker uses 10 ms of CPU a second, plus 200 ms in the second
    # after each boundary (per-image work); the API 5 ms a second.
    trace, cpu = [], 0.0
    boundaries = {0, 1, 10, 11, 20, 21, 30, 31}
    for t in range(0, 32):
        cpu += 0.010 + (0.200 if (t - 1) in boundaries else 0.0)
        trace.append([float(t), cpu, 0.005 * t])
    raw = {
        "lanes": lanes,
        "trace": trace,
        "trace_threads": [{} for _ in trace],
        "api_times": [5.5, 15.5, 25.5, 2.5],
        "stored_at": [10.2, 11.2, 20.2, 21.2],
    }
    found = idle_metrics(raw, margin_s=3.0)
    # Quiet: intervals [a, a + 1] with no boundary in [a - 3, a + 1]: a = 5-8, 15-18, 25-28.
    assert found["idle_quiet_s"] == 12.0
    assert round(found["idle_cpu_pct_per_lane"], 6) == 0.5  # 10 ms/s over two lanes
    assert round(found["idle_api_cpu_pct_per_lane"], 6) == 0.25
    assert round(found["idle_req_per_lane_s"], 6) == round(3 / 24, 6)
    # The whole window (t = 4 to 30) has the per-image work in it.
    assert found["idle_window_s"] == 26.0
    assert found["window_cpu_pct_per_lane"] > found["idle_cpu_pct_per_lane"]
    assert found["idle_images_in_window"] == 4


def test_the_trace_reads_this_process_and_its_threads() -> None:
    trace = ProcTrace(os.getpid(), interval_s=0.01)
    with trace.active():
        sum(i * i for i in range(300_000))  # some CPU to see
        while len(trace.samples) < 3:
            trace._stop.wait(0.01)
    assert trace.samples[-1][1] >= trace.samples[0][1] > 0
    assert len(trace.threads) == len(trace.samples)
    assert os.getpid() in trace.threads[-1]  # the main thread's id is the pid

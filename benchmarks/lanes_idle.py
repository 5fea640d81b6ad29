"""What a lane costs while its GPU renders: the `idle` scenario's probe and numbers.

At T = 0 every second of the orchestrator is per-image work (claim, prepare, fetch, store).
At T = 10 s a lane spends most of its time waiting for the render, and what the batch does
meanwhile (WebSocket progress, log lines, progress artifacts, lease renewals, watch loops) is
paid for every second of every render. The two add up: GPUs one core feeds =
1 / (CPU per image / T + idle CPU per lane).

`ProcTrace` samples, from the driver (outside the measured process, so the probe costs the
worker nothing), the CPU time of the worker process and of its children (the ephemeral
Prefect API the worker started) every `interval_s`, from /proc/PID/stat (utime + stime:
every thread, exited ones included).

`idle_metrics` splits the batch's steady state (every lane has started its first render and
none has ended its last) into:
- the whole window, per-image work included (what the process costs per lane there);
- its quiet part: sample intervals at least `margin_s` after every render boundary (a
  render's start or end, when the orchestrator fetches, stores, claims and queues) on any
  lane (a picture recorded in a group is recorded up to 2 s after it was written, so the
  margin is 3 s). With LANE_DEPTH = 2 the next prompt already waits on the server, so a lane's
  per-image work follows its boundary; what the process spends away from all boundaries is
  the cost of lanes that only wait. This is the figure the bars are on.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.probes import thread_group

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
# After a render boundary a lane's per-image work is done by then: fetch, write, claim and
# queue take well under a second, and the written picture is recorded within
# flows.lane_groups.RECORD_WITHIN_S (2 s, recorded in groups) and its store call.
IDLE_MARGIN_S = 3.0


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) * TICK_S  # fields 14 and 15 of stat(5)


def _threads_cpu_s(pid: int) -> dict[int, float]:
    """utime + stime of each live thread of a process, seconds, by native thread id."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = (task / "stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                found[int(task.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
    return found


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids.extend(int(k) for k in (task / "children").read_text().split())
    return kids


class ProcTrace:
    """(monotonic, worker CPU s, children's CPU s) every `interval_s` while active, and each
    thread's CPU s (`threads`, one dict per sample): which threads burn it."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self.threads: list[dict[int, float]] = []
        self._children_cpu: dict[int, float] = {}  # last value seen, kept once one has exited
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-trace", daemon=True)

    def _sample(self) -> None:
        for child in _children(self.pid):
            self._children_cpu[child] = max(self._children_cpu.get(child, 0.0), _cpu_s(child))
        now = time.monotonic()
        self.threads.append(_threads_cpu_s(self.pid))
        self.samples.append((now, _cpu_s(self.pid), sum(self._children_cpu.values())))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @contextlib.contextmanager
    def active(self) -> Iterator[ProcTrace]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def idle_metrics(raw: dict[str, Any], margin_s: float = IDLE_MARGIN_S) -> dict[str, Any]:
    """CPU (% of a core) and API requests per lane-second in the steady state; see above."""
    lanes: dict[str, list[dict[str, Any]]] = raw["lanes"]
    samples: list[list[float]] = raw.get("trace", [])
    api_times: list[float] = sorted(raw.get("api_times", []))
    runs = [r for rs in lanes.values() for r in rs]
    if not runs or len(samples) < 2 or any(not rs for rs in lanes.values()):
        return {"idle_window_s": None}
    begin = max(min(r["start"] for r in rs) for rs in lanes.values())
    end = min(max(r["end"] for r in rs) for rs in lanes.values())
    boundaries = sorted({r["start"] for r in runs} | {r["end"] for r in runs})
    threads: list[dict[str, float]] = raw.get("trace_threads", [{} for _ in samples])
    names: dict[str, str] = raw.get("thread_names", {})  # JSON keys: the ids as text
    by_thread: collections.Counter[str] = collections.Counter()
    window = [0.0, 0.0, 0.0, 0]  # seconds, worker CPU, API CPU, requests
    quiet = [0.0, 0.0, 0.0, 0]
    pairs = itertools.pairwise(zip(samples, threads, strict=True))
    for ((a, cpu_a, api_a), before), ((b, cpu_b, api_b), after) in pairs:
        if a < begin + margin_s or b > end:
            continue
        requests = sum(1 for t in api_times if a < t <= b)
        parts = [window]
        # Quiet: no boundary from margin_s before the interval to its end.
        if not any(a - margin_s <= t <= b for t in boundaries):
            parts.append(quiet)
            for tid, cpu in after.items():
                used = cpu - before.get(tid, cpu)  # a thread born in between: not counted
                if used > 0:
                    by_thread[thread_group(names.get(str(tid), "?"))] += used
        for part in parts:
            part[0] += b - a
            part[1] += cpu_b - cpu_a
            part[2] += api_b - api_a
            part[3] += requests
    n = len(lanes)
    stored = [s for s in raw.get("stored_at", []) if begin + margin_s < s <= end]

    def per_lane(part: list[float]) -> dict[str, float | None]:
        lane_s = n * part[0]
        if not lane_s:
            return {"seconds": part[0], "cpu_pct": None, "api_cpu_pct": None, "req": None}
        return {
            "seconds": part[0],
            "cpu_pct": 100 * part[1] / lane_s,
            "api_cpu_pct": 100 * part[2] / lane_s,
            "req": part[3] / lane_s,
            "requests": part[3],
        }

    whole, still = per_lane(window), per_lane(quiet)
    return {
        "idle_window_s": whole["seconds"],
        "idle_images_in_window": len(stored),
        "window_cpu_pct_per_lane": whole["cpu_pct"],
        "window_api_cpu_pct_per_lane": whole["api_cpu_pct"],
        "window_req_per_lane_s": whole["req"],
        "idle_quiet_s": still["seconds"],
        "idle_cpu_pct_per_lane": still["cpu_pct"],
        "idle_api_cpu_pct_per_lane": still["api_cpu_pct"],
        "idle_req_per_lane_s": still["req"],
        "idle_requests": still.get("requests"),
        "idle_margin_s": margin_s,
        # Quiet CPU per thread (named as the worker last saw them), ms: where to look.
        "idle_by_thread_ms": {k: round(1000 * v) for k, v in by_thread.most_common()},
    }

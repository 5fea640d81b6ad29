"""The multi-lane benchmark: one `image-batch` across N simulated GPU servers, side by side.

    python -m benchmarks.lanes                          # every scenario, the issue's sizes
    python -m benchmarks.lanes --n 20 --t 0.5 --cost-n 50   # a quick run of every scenario
    python -m benchmarks.lanes --scenarios throughput --lanes 1,2 --n 40 --t 2

Scenarios (each batch: a fresh store, fresh simulator processes, one per lane, and a fresh
worker process running the real flow with `STORYBOARD_COMFYUI_URLS` naming them):
- throughput: N sentences at T s per render on 1, 2, 4 and 8 lanes (bar: >= 0.95 x lanes x
  the one-lane throughput, duty >= 97% on every lane);
- kill: 4 lanes, one SIGKILLed when 30% of the renders are done (bars: every sentence
  stored, none rendered twice, no attempt spent, the other three >= 2.8 x one lane);
- warm: 3 LoRAs x 4 reference sets at shuffled positions, 3 s per LoRA switch and 1 s per
  new reference (bar: switching <= 25% of what storyboard order would be charged);
- cost: orchestrator CPU and store time per image at N = 1000, T = 0, on 1 and 4 lanes;
- idle: what lanes cost while their GPUs render: 8 lanes at T = 10 s, CPU of the batch
  process (% of a core) and Prefect API requests per lane-second in the steady state,
  away from render boundaries (benchmarks.lanes_idle; bars: <= 0.5% of a core and
  <= 0.2 requests per lane-second).

Results: a table per scenario on stdout, benchmarks/out/lanes/results.json (every number,
per lane too), benchmarks/out/lanes/run.log (every process's log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import duckdb

from benchmarks.lanes_idle import ProcTrace, idle_metrics
from benchmarks.lanes_metrics import after_kill, batch_metrics, position_order_switch_s
from benchmarks.lanes_report import all_rows, print_tables, verdicts
from benchmarks.lanes_seed import seed_mixed
from benchmarks.run import (
    REPO,
    add_prefect_db_option,
    keep_prefect_db,
    machine,
    prefect_home,
    sim_args,
    worker_env,
)
from benchmarks.synthetic import seed
from storyboard.store import Store

OUT = REPO / "benchmarks" / "out" / "lanes"
SCENARIOS = ("throughput", "kill", "warm", "cost", "idle")
KILL_LANES, KILL_AT, KILLED = 4, 0.30, 1  # kill lane index 1 of 4 at 30% of the renders
# A dead lane is set aside after the reconnect wait: short, so the kill costs seconds, not
# the production default of 3 minutes.
KILL_RECONNECT_WAIT_S = "2"
POLL_S = 0.25

Seeder = Callable[[Store, Path, int], None]


class LaneSim:
    """One simulated server process (benchmarks.lanes_sim) and the lane name it serves."""

    def __init__(self, name: str, args: list[str], log: IO[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.lanes_sim", *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.url: str = self._read()["url"]
        self.final_runs: list[dict[str, Any]] | None = None  # what it finished, once killed

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator {self.name} ended early (see the log)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    @property
    def alive(self) -> bool:
        return self.final_runs is None

    def kill(self) -> None:
        self.final_runs = self.ask("kill")["runs"]
        self.proc.wait(timeout=10)

    def runs(self) -> list[dict[str, Any]]:
        if self.final_runs is not None:
            return self.final_runs
        runs: list[dict[str, Any]] = self.ask("runs")["runs"]
        return runs

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):  # a killed one reads no more
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Killer:
    """SIGKILLs one lane once the lanes together finished `fraction` of `n` renders."""

    def __init__(self, index: int, fraction: float, n: int) -> None:
        self.index, self.threshold = index, fraction * n
        self.killed_at: float | None = None

    def poll(self, sims: list[LaneSim]) -> None:
        if self.killed_at is not None:
            return
        done = sum(sim.ask("count")["ok"] for sim in sims if sim.alive)
        if done >= self.threshold:
            sims[self.index].kill()
            self.killed_at = time.monotonic()


def read_jobs(database: Path) -> list[list[Any]]:
    """(sentence, status, attempt, error) of every image job: what the store says was tried."""
    with duckdb.connect(str(database), read_only=True) as con:
        query = "SELECT sentence_id, status, attempt, error FROM image_jobs"
        rows = con.execute(query).fetchall()
    return [list(row) for row in rows]


def run_batch(
    lanes: int,
    n: int,
    t: float,
    *,
    scratch: Path,
    log: IO[str],
    seeder: Seeder = seed,
    sim_flags: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    killer: Killer | None = None,
    label: str = "",
    trace: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """One batch on `lanes` fresh simulators; the worker's raw result plus every lane's runs."""
    root = Path(tempfile.mkdtemp(prefix=f"lanes{lanes}-", dir=scratch))
    data_dir = root / "data"
    seeder(Store(data_dir / "storyboard.duckdb"), data_dir, n)
    sims: list[LaneSim] = []
    worker: subprocess.Popen[bytes] | None = None
    try:
        for k in range(lanes):
            sims.append(LaneSim(f"lane{k}", [*sim_args(t), *sim_flags], log))
        urls = ",".join(f"{sim.name}={sim.url}" for sim in sims)
        extra = {"STORYBOARD_COMFYUI_URLS": urls, **(env or {})}
        out = root / "result.json"
        log.write(f"\n===== {label} lanes={lanes} N={n} T={t:g} =====\n")
        log.flush()
        command = [sys.executable, "-m", "benchmarks.worker", "--mode", "flow", "--out", str(out)]
        worker = subprocess.Popen(
            [*command, "--profile"] if profile else command,
            cwd=REPO,
            env=worker_env(data_dir, prefect_home(root, scratch), sims[0].url, extra),
            stdout=log,
            stderr=log,
        )
        with contextlib.ExitStack() as stack:
            tracer = stack.enter_context(ProcTrace(worker.pid).active()) if trace else None
            while worker.poll() is None:
                if killer is not None:
                    killer.poll(sims)
                time.sleep(POLL_S)
        if worker.returncode != 0:
            raise RuntimeError(f"{label}: the worker exited {worker.returncode} (see the log)")
        raw: dict[str, Any] = json.loads(out.read_text())
        raw["lanes"] = {sim.name: sim.runs() for sim in sims}
        raw["jobs"] = read_jobs(data_dir / "storyboard.duckdb")
        if tracer is not None:
            raw["trace"] = tracer.samples
            raw["trace_threads"] = tracer.threads
        if killer is not None and killer.killed_at is not None:
            raw["killed_at"] = killer.killed_at
            raw["killed_lane"] = sims[killer.index].name
    finally:
        if worker is not None and worker.poll() is None:  # interrupted: leave nothing behind
            worker.kill()
            worker.wait()
        for sim in sims:
            sim.close()
        shutil.rmtree(root, ignore_errors=True)
    return raw


def timed(title: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`run_batch(*args, **kwargs)`, saying what runs and how long it took."""
    print(f"{title} ...", end=" ", flush=True)
    begin = time.monotonic()
    result = run_batch(*args, **kwargs)
    print(f"{time.monotonic() - begin:.0f} s", flush=True)
    return result


def throughput(args: argparse.Namespace, scratch: Path, log: IO[str]) -> list[dict[str, Any]]:
    rows = []
    for lanes in args.lanes:
        label = f"throughput lanes={lanes} N={args.n} T={args.t:g}s"
        raw = timed(label, lanes, args.n, args.t, scratch=scratch, log=log, label="throughput")
        rows.append(batch_metrics(raw, n=args.n, t=args.t))
    return rows


def kill(args: argparse.Namespace, scratch: Path, log: IO[str]) -> dict[str, Any]:
    killer = Killer(KILLED, KILL_AT, args.n)
    raw = timed(
        f"kill lane{KILLED} of {KILL_LANES} at {KILL_AT:.0%} N={args.n} T={args.t:g}s",
        KILL_LANES,
        args.n,
        args.t,
        scratch=scratch,
        log=log,
        env={"STORYBOARD_RECONNECT_WAIT_S": KILL_RECONNECT_WAIT_S},
        killer=killer,
        label="kill",
    )
    row = batch_metrics(raw, n=args.n, t=args.t)
    row["killed_lane"] = f"lane{KILLED}"
    if killer.killed_at is not None:
        row.update(after_kill(raw, killer.killed_at))
    return row


def warm(args: argparse.Namespace, scratch: Path, log: IO[str]) -> dict[str, Any]:
    flags = (
        "--lora-switch-seconds",
        repr(args.lora_switch_s),
        "--reference-seconds",
        repr(args.reference_s),
    )
    raw = timed(
        f"warm lanes={args.warm_lanes} N={args.warm_n} T={args.warm_t:g}s",
        args.warm_lanes,
        args.warm_n,
        args.warm_t,
        scratch=scratch,
        log=log,
        seeder=seed_mixed,
        sim_flags=flags,
        label="warm",
    )
    row = batch_metrics(raw, n=args.warm_n, t=args.warm_t)
    by_sentence = {
        r["sentence"]: r["warm"]
        for runs in raw["lanes"].values()
        for r in runs
        if r["status"] == "success" and r["sentence"] is not None
    }
    charged = {"lora_switch_s": args.lora_switch_s, "reference_s": args.reference_s}
    row["position_switch_s"] = position_order_switch_s(by_sentence, args.warm_lanes, **charged)
    row["position_switch_one_lane_s"] = position_order_switch_s(by_sentence, 1, **charged)
    row["switch_ratio"] = (
        row["switch_s"] / row["position_switch_s"] if row["position_switch_s"] else None
    )
    return row


def cost(args: argparse.Namespace, scratch: Path, log: IO[str]) -> list[dict[str, Any]]:
    rows = []
    for lanes in args.cost_lanes:
        raw = timed(
            f"cost lanes={lanes} N={args.cost_n} T=0",
            lanes,
            args.cost_n,
            0.0,
            scratch=scratch,
            log=log,
            label="cost",
            profile=args.profile,
        )
        row = batch_metrics(raw, n=args.cost_n, t=0.0)
        if args.profile:  # where the CPU per image goes; the sampler's own cost is in cpu ms
            row["profile"] = raw.get("profile")
        rows.append(row)
    return rows


def idle(args: argparse.Namespace, scratch: Path, log: IO[str]) -> list[dict[str, Any]]:
    """`--idle-runs` batches of `--idle-lanes` x `--idle-renders` renders of `--idle-t` s."""
    rows = []
    n = args.idle_lanes * args.idle_renders
    for k in range(args.idle_runs):
        raw = timed(
            f"idle lanes={args.idle_lanes} N={n} T={args.idle_t:g}s ({k + 1}/{args.idle_runs})",
            args.idle_lanes,
            n,
            args.idle_t,
            scratch=scratch,
            log=log,
            label="idle",
            env={"BENCH_SAMPLE_S": "0.5"},  # see benchmarks.worker.SAMPLE_S
            trace=True,
            profile=args.profile,
        )
        row = batch_metrics(raw, n=n, t=args.idle_t)
        row.update(idle_metrics(raw))
        # What the figures are computed from, so another margin or window can be tried later.
        row["idle_raw"] = {
            key: raw.get(key)
            for key in ("t0", "t1", "trace", "trace_threads", "thread_names", "api_times")
        }
        row["idle_raw"]["stored_at"] = raw["stored_at"]
        row["idle_raw"]["lanes"] = raw["lanes"]
        if args.profile:  # the whole batch's, per-image work included: where to look, no bar
            row["profile"] = raw.get("profile")
        rows.append(row)
    return rows


def one_lane_row(path: Path) -> dict[str, Any]:
    earlier = json.loads(path.read_text())
    for row in earlier.get("throughput", []):
        if row["lanes"] == 1:
            return {
                "from": str(path),
                "throughput": row["throughput"],
                "n": row["n"],
                "t": row["t"],
            }
    raise SystemExit(f"{path} has no one-lane throughput row; run --scenarios throughput --lanes 1")


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lanes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--n", type=int, default=200, help="sentences (throughput, kill)")
    parser.add_argument("--t", type=float, default=2.0, help="seconds per render (ditto)")
    parser.add_argument("--lanes", type=ints, default=[1, 2, 4, 8], help="throughput lanes")
    parser.add_argument("--warm-n", type=int, default=120)
    parser.add_argument("--warm-t", type=float, default=0.25)
    parser.add_argument("--warm-lanes", type=int, default=2)
    parser.add_argument("--lora-switch-s", type=float, default=3.0, help="warm: per switch")
    parser.add_argument("--reference-s", type=float, default=1.0, help="warm: per new reference")
    parser.add_argument("--cost-n", type=int, default=1000)
    parser.add_argument("--cost-lanes", type=ints, default=[1, 4])
    parser.add_argument("--idle-lanes", type=int, default=8)
    parser.add_argument("--idle-renders", type=int, default=5, help="idle: renders per lane")
    parser.add_argument("--idle-t", type=float, default=10.0)
    parser.add_argument("--idle-runs", type=int, default=2, help="idle: batches, one row each")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="idle, cost: sample the worker's stacks (costs CPU itself: for finding, not bars)",
    )
    parser.add_argument(
        "--one-lane-from",
        type=Path,
        help="results.json of an earlier run whose one-lane throughput row the bars compare"
        " with, when this run's --lanes leaves out 1",
    )
    add_prefect_db_option(parser)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.scenarios = [s for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.lanes", *(argv or sys.argv[1:])]),
    }
    if args.one_lane_from is not None:
        results["one_lane_reference"] = one_lane_row(args.one_lane_from)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="storyboard-lanes-"))
    try:
        keep_prefect_db(scratch, args.prefect_db)
        with (args.out / "run.log").open("w") as log:
            if "throughput" in args.scenarios:
                results["throughput"] = throughput(args, scratch, log)
            if "kill" in args.scenarios:
                results["kill"] = kill(args, scratch, log)
            if "warm" in args.scenarios:
                results["warm"] = warm(args, scratch, log)
            if "cost" in args.scenarios:
                results["cost"] = cost(args, scratch, log)
            if "idle" in args.scenarios:
                results["idle"] = idle(args, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["verdicts"] = verdicts(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)
    print(f"\nresults: {args.out / 'results.json'}, log: {args.out / 'run.log'}")
    short = [row for row in all_rows(results) if row["images_stored"] != row["n"]]
    for row in short:
        print(
            f"WARNING: {row['images_stored']} of {row['n']} stored on {row['lanes']} lane(s),"
            f" {row['state']}: {row['message']}"
        )
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())

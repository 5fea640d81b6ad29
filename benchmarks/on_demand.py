"""On-demand latency: from emitting `storyboard.image.requested` to ComfyUI's execution_start.

    .venv/bin/python -m benchmarks.on_demand [--samples 10] [--render-s 2] [--lanes 4]
                                             [--modes warm,cold] [--poll-s 0.5]

Everything as in production, on loopback: `prefect server start`, `python -m flows.setup`,
one process worker on the `gpu` pool (PREFECT_WORKER_QUERY_SECONDS=1, the shortest poll Prefect
takes), the deployments of prefect.yaml, and `--lanes` simulators in this process (so their
`RunRecord.start`, the moment a prompt begins executing, is on this process's clock). Each
mode gets a server and a farm of its own, one after the other: "warm" runs the on-demand
runs in `python -m flows.warm_runner` (the worker then takes only the batch's queue),
"cold" leaves them to the worker, a new process each.

Each sample POSTs one event to the server's /api/events and waits for the simulator to start
the prompt that carries the sample's own text, then for its flow run to finish. First
`--samples` on an idle farm, then as many while `image-batch/default` renders a larger
storyboard at `--render-s` per picture. It prints a JSON list, one object per mode:
every sample, both medians, the issue's bound for the busy one (idle median + render-s +
1 s), whether the batch was still feeding at the end, and the median phases: seconds from
the event until the automation created the run, a worker or the runner claimed it
(PENDING) and the flow began (RUNNING).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.store import Project, SentenceInput, Store

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BATCH_PROJECT = "bench"
ON_DEMAND_PROJECT = "od"
SAMPLE_WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        child = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=15)


def wait_healthy(api: str, wait_s: float = 120.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"error: prefect server at {api} did not answer within {wait_s:g} s")


def seed(store: Store, batch_sentences: int, samples: int) -> None:
    def sentences(project: str, count: int) -> list[SentenceInput]:
        return [
            SentenceInput(id=f"{project}{i}", project_id=project, position=i,
                          text=f"Sentence {i}.", image_prompt=f"{project} picture {i}")
            for i in range(count)
        ]  # fmt: skip

    store.upsert(
        projects=[
            Project(id=BATCH_PROJECT, name="Batch"),
            Project(id=ON_DEMAND_PROJECT, name="OD"),
        ],
        sentences=sentences(BATCH_PROJECT, batch_sentences)
        + sentences(ON_DEMAND_PROJECT, 2 * samples),
    )


def emit(api: str, sentence_id: str, prompt: str) -> float:
    """POST the event; the moment just before it, on this process's monotonic clock."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": "storyboard.image.requested",
        "resource": {
            "prefect.resource.id": f"storyboard.sentence.{ON_DEMAND_PROJECT}.{sentence_id}"
        },
        "payload": {"project_id": ON_DEMAND_PROJECT, "sentence_id": sentence_id, "prompt": prompt},
    }
    sent = time.monotonic()
    httpx.post(f"{api}/events", json=[event], timeout=10).raise_for_status()
    return sent


def execution_start(sims: list[SimulatorThread], prompt: str, wait_s: float) -> float | None:
    """RunRecord.start (on this process's clock) of the prompt carrying `prompt`, on whichever
    lane ran it (the record is written when the render ends); None if none did in time."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for sim in sims:
            for run in list(sim.sim.runs):
                if prompt in json.dumps(sim.sim.graphs.get(run.prompt_id, {})):
                    return run.start
        time.sleep(0.02)
    return None


def wait_runs_done(api: str, deployment: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    body = {"deployments": {"name": {"any_": [deployment]}}}
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
        if all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            return
        time.sleep(0.2)


def phases(api: str, sent_wall: float) -> dict[str, float]:
    """When the newest on-demand run was created (the automation), picked up (PENDING: the
    worker's poll) and started (RUNNING: its process began the flow), seconds after the event."""
    body = {"deployments": {"name": {"any_": ["on-demand"]}}, "sort": "EXPECTED_START_TIME_DESC"}
    runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
    newest = max(runs, key=lambda run: run["created"])
    states = httpx.get(
        f"{api}/flow_run_states/", params={"flow_run_id": newest["id"]}, timeout=10
    ).json()
    seen = {"created": datetime.fromisoformat(newest["created"]).timestamp() - sent_wall}
    for state in states:
        if state["type"] in ("PENDING", "RUNNING") and state["type"].lower() not in seen:
            at = datetime.fromisoformat(state["timestamp"]).timestamp()
            seen[state["type"].lower()] = at - sent_wall
    return {name: round(value, 3) for name, value in seen.items()}


def sample(
    api: str, sims: list[SimulatorThread], sentence_id: str, label: str
) -> tuple[float, dict[str, float]] | None:
    """One event's latency and phases; None when no run rendered it in time (a lost event: a
    Prefect server on SQLite under load can drop its automation's action)."""
    prompt = f"on-demand benchmark {label} {uuid.uuid4().hex[:8]}"
    sent_wall = time.time()
    sent = emit(api, sentence_id, prompt)
    started = execution_start(sims, prompt, SAMPLE_WAIT_S)
    wait_runs_done(api, "on-demand", SAMPLE_WAIT_S)
    if started is None:
        print(f"{label}: lost (no render within {SAMPLE_WAIT_S:g} s)", file=sys.stderr)
        return None
    found = (started - sent, phases(api, sent_wall))
    print(f"{label}: {found[0]:.3f} s {found[1]}", file=sys.stderr, flush=True)
    return found


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({name for sample in samples for name in sample})
    return {
        name: round(statistics.median(s[name] for s in samples if name in s), 3) for name in names
    }


def measure(args: argparse.Namespace, mode: str) -> dict[str, object]:
    """One farm, one Prefect server, `mode` serving the on-demand runs: "cold", the worker on
    the whole pool (a process per run); "warm", flows.warm_runner beside a worker on the
    batch's queue only."""
    tmp = Path(tempfile.mkdtemp(prefix=f"on-demand-bench-{mode}-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    config = SimulatorConfig(steps=10, step_s=args.render_s / 10)
    with ExitStack() as stack:
        sims = [stack.enter_context(SimulatorThread(config)) for _ in range(args.lanes)]
        data_dir = tmp / "data"
        seed(Store(data_dir / "storyboard.duckdb"), args.batch_sentences, args.samples)
        env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STORYBOARD_"))
            },
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "STORYBOARD_DATA_DIR": str(data_dir),
            "STORYBOARD_WORKFLOW": str(REPO / "workflows" / "image" / "flux-2.json"),
            "STORYBOARD_WIDTH": "256",
            "STORYBOARD_HEIGHT": "144",
            "STORYBOARD_RETRY_BACKOFF_S": "0",
            "STORYBOARD_STARTUP_WAIT_S": "10",
        }
        if args.lanes == 1:
            env["STORYBOARD_COMFYUI_URL"] = sims[0].url
        else:
            env["STORYBOARD_COMFYUI_URLS"] = ",".join(f"l{i}={s.url}" for i, s in enumerate(sims))
        server = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        stack.enter_context(process([*server, "--port", str(port)], env, tmp / "server.log"))
        env["PREFECT_API_URL"] = api
        wait_healthy(api)
        setup = subprocess.run([sys.executable, "-m", "flows.setup"], cwd=REPO, env=env,
                               capture_output=True, text=True, check=False)  # fmt: skip
        if setup.returncode != 0:
            raise SystemExit(f"error: flows.setup failed:\n{setup.stdout}{setup.stderr}")
        worker = [str(BIN / "prefect"), "worker", "start", "--pool", "gpu"]
        if mode == "warm":
            worker += ["--work-queue", "default"]
            runner = [sys.executable, "-m", "flows.warm_runner", "--poll-s", str(args.poll_s)]
            stack.enter_context(process(runner, env, tmp / "warm-runner.log"))
        stack.enter_context(process(worker, env, tmp / "worker.log"))
        sample(api, sims, f"{ON_DEMAND_PROJECT}0", f"{mode} warm-up")  # first connections
        idle_samples = [
            sample(api, sims, f"{ON_DEMAND_PROJECT}{i}", f"{mode} idle")
            for i in range(args.samples)
        ]
        batch = [str(BIN / "prefect"), "deployment", "run", "image-batch/default",
                 "-p", f"project_id={BATCH_PROJECT}"]  # fmt: skip
        subprocess.run(batch, cwd=REPO, env=env, capture_output=True, check=True)
        # The batch is feeding once every lane is executing its prompts.
        deadline = time.monotonic() + SAMPLE_WAIT_S
        while not all(s.sim.running is not None for s in sims):
            if time.monotonic() > deadline:
                raise SystemExit("error: the batch did not start on every lane")
            time.sleep(0.05)
        busy_samples = [
            sample(api, sims, f"{ON_DEMAND_PROJECT}{args.samples + i}", f"{mode} busy")
            for i in range(args.samples)
        ]
        still_feeding = all(s.sim.running is not None for s in sims)
    lost = {"idle": idle_samples.count(None), "busy": busy_samples.count(None)}
    idle_kept = [found for found in idle_samples if found is not None]
    busy_kept = [found for found in busy_samples if found is not None]
    idle = [latency for latency, _ in idle_kept]
    busy = [latency for latency, _ in busy_kept]
    idle_median, busy_median = statistics.median(idle), statistics.median(busy)
    return {
        "mode": mode,
        "lanes": args.lanes,
        "render_s": args.render_s,
        "idle_s": [round(x, 3) for x in idle],
        "busy_s": [round(x, 3) for x in busy],
        "idle_median_s": round(idle_median, 3),
        "busy_median_s": round(busy_median, 3),
        "busy_bound_s": round(idle_median + args.render_s + 1.0, 3),
        "within_bound": busy_median <= idle_median + args.render_s + 1.0,
        "batch_still_feeding_at_end": still_feeding,
        # Seconds after the event: run created, PENDING (claimed), RUNNING (flow began).
        "idle_phases_median_s": median_phases([p for _, p in idle_kept]),
        "busy_phases_median_s": median_phases([p for _, p in busy_kept]),
        "lost_events": lost,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.on_demand", description=__doc__)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--render-s", type=float, default=2.0)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--batch-sentences", type=int, default=400)
    parser.add_argument("--modes", default="warm,cold", help="comma-separated: warm, cold")
    parser.add_argument("--poll-s", type=float, default=0.5, help="the warm runner's poll")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"warm", "cold"}:
        parser.error("--modes takes warm, cold or both")
    results = [measure(args, mode) for mode in modes]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

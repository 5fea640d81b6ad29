"""End to end, as in production: `prefect server start`, the setup command, a worker on `gpu`,
`prefect deployment run image-batch/default --watch`, then the results through the REST API;
then `prefect event emit storyboard.image.requested` with only the payload's required keys,
which the on-demand deployment's trigger turns into a generate-image run, which the warm
runner (flows.warm_runner) runs.

Runs alone with `pytest tests/e2e/test_e2e_deployment.py` (about a minute). Everything it starts
runs in its own process group and is stopped at the end; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from storyboard import ids
from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.store import Store
from storyboard.store.demo import DEMO_PROJECT, seed_demo
from tests.support.paths import REPO
from tests.support.prefect_db import QUIET_PREFECT

pytestmark = pytest.mark.slow  # a Prefect server, a worker and the warm runner

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture
def e2e(tmp_path: Path, prefect_home: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    data_dir = tmp_path / "data"
    store = Store(data_dir / "storyboard.duckdb")
    seed_demo(store, data_dir)
    processes: list[subprocess.Popen[bytes]] = []
    with SimulatorThread(SimulatorConfig(steps=4, step_s=0.01)) as simulator:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            **QUIET_PREFECT,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "STORYBOARD_DATA_DIR": str(data_dir),
            "STORYBOARD_COMFYUI_URL": simulator.url,
            "STORYBOARD_WORKFLOW": str(REPO / "workflows" / "image" / "flux-2.json"),
            "STORYBOARD_RETRY_BACKOFF_S": "0",
            "STORYBOARD_STARTUP_WAIT_S": "5",
        }
        server_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1"]
        try:
            processes.append(
                start([*server_cmd, "--port", str(port)], env, tmp_path / "server.log")
            )
            env["PREFECT_API_URL"] = api
            wait_healthy(api, processes[0])
            yield {
                "api": api,
                "env": env,
                "store": store,
                "data_dir": data_dir,
                "simulator": simulator,
                "processes": processes,
                "tmp": tmp_path,
            }
        finally:
            for process in reversed(processes):
                stop(process)


def wait_healthy(api: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server did not answer within {START_TIMEOUT_S} s")


def post(api: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{api}{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


# A server, the setup, a worker, a deployment run and an event, one after another: about a
# minute alone, longer beside the other test workers on two cores.
@pytest.mark.timeout(420)
def test_setup_a_worker_the_batch_and_an_event_with_only_the_required_keys(
    e2e: dict[str, Any],
) -> None:
    env, api, tmp = e2e["env"], e2e["api"], e2e["tmp"]
    setup = subprocess.run(
        [sys.executable, "-m", "flows.setup", "--timezone", "Europe/Berlin"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert setup.returncode == 0, setup.stdout.decode() + setup.stderr.decode()
    again = subprocess.run(
        [sys.executable, "-m", "flows.setup", "--timezone", "Europe/Berlin"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert again.returncode == 0, "the setup command must be idempotent"

    # As the README's production steps: the worker on the batch's queue, the warm runner
    # for the on-demand deployment's.
    worker = [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--work-queue", "default"]
    worker_process = start(worker, env, tmp / "worker.log")
    e2e["processes"].append(worker_process)
    runner = [sys.executable, "-m", "flows.warm_runner", "--poll-s", "0.2"]
    runner_process = start(runner, env, tmp / "warm-runner.log")
    e2e["processes"].append(runner_process)
    run = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "image-batch/default", "--watch"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=180,
    )
    output = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, output + (tmp / "worker.log").read_text(errors="replace")

    store: Store = e2e["store"]
    sentences = store.sentences(DEMO_PROJECT)
    for sentence in sentences:
        assert sentence.status == "completed" and not sentence.image_dirty
        with Image.open(ids.image_path(e2e["data_dir"], DEMO_PROJECT, sentence.id)) as image:
            assert image.size == (1920, 1080)
    assert e2e["simulator"].sim.max_in_flight() <= 2  # flows.lane_feed.LANE_DEPTH

    flow_runs = post(api, "/flow_runs/filter", {"deployments": {"name": {"any_": ["default"]}}})
    # The nightly schedule adds SCHEDULED runs; ours is the one that ran.
    flow_runs = [r for r in flow_runs if r["state_type"] != "SCHEDULED"]
    assert [r["state_type"] for r in flow_runs] == ["COMPLETED"]
    flow_run_id = flow_runs[0]["id"]
    task_runs = post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    generated = [t for t in task_runs if t["task_key"].startswith("render_image")]
    expected = sorted(f"render-{DEMO_PROJECT}-{s.id}" for s in sentences)
    assert sorted(t["name"] for t in generated) == expected
    assert {t["state_type"] for t in task_runs} == {"COMPLETED"}
    artifacts = post(api, "/artifacts/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    keys = {a["key"] for a in artifacts}
    assert {"image-batch-progress", "image-batch-results", "image-batch-summary"} <= keys
    progress = next(a for a in artifacts if a["key"] == "image-batch-progress")
    assert progress["data"] == 100.0

    deployment = httpx.get(f"{api}/deployments/name/image-batch/default", timeout=10).json()
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert deployment["schedules"][0]["schedule"]["timezone"] == "Europe/Berlin"
    assert deployment["description"] == (
        "Renders every dirty sentence nightly at 02:00 Europe/Berlin (cron `0 2 * * *`),"
        " or on demand."
    )
    limit = httpx.get(f"{api}/concurrency_limits/tag/gpu", timeout=10).json()
    assert limit["concurrency_limit"] == 1
    assert limit["active_slots"] == []
    pool = httpx.get(f"{api}/work_pools/gpu", timeout=10).json()
    # One batch plus two on-demand runs per lane: an on-demand run never waits at the pool.
    assert pool["concurrency_limit"] == 3

    the_event_with_only_the_required_keys_renders_the_sentence(e2e, sentences[0].id)
    stopping_the_worker_and_the_runner_mid_render_leaves_nothing_claimed(
        e2e, worker_process, runner_process
    )


def the_event_with_only_the_required_keys_renders_the_sentence(
    e2e: dict[str, Any], sentence_id: str
) -> None:
    env, api, store = e2e["env"], e2e["api"], e2e["store"]
    jobs_before = len(store.jobs_for(DEMO_PROJECT, sentence_id))
    payload = {"project_id": DEMO_PROJECT, "sentence_id": sentence_id}
    emitted = subprocess.run(
        [str(BIN / "prefect"), "event", "emit", "storyboard.image.requested",
         "--resource-id", f"storyboard.sentence.{DEMO_PROJECT}.{sentence_id}",
         "--payload", json.dumps(payload)],
        cwd=REPO, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert emitted.returncode == 0, emitted.stdout.decode() + emitted.stderr.decode()
    on_demand = {"deployments": {"name": {"any_": ["on-demand"]}}}
    deadline = time.monotonic() + 120
    runs: list[Any] = []
    while time.monotonic() < deadline:
        runs = post(api, "/flow_runs/filter", on_demand)
        if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED"):
            break
        time.sleep(1)
    worker_log = (e2e["tmp"] / "worker.log").read_text(errors="replace")
    assert len(runs) == 1, f"the event made {len(runs)} run(s)\n{worker_log}"
    assert runs[0]["parameters"] == {
        **payload,
        "prompt": None,
        "reference_paths": None,
        "lora": None,
        "lora_strength": None,
        "seed": None,
    }
    runner_log = (e2e["tmp"] / "warm-runner.log").read_text(errors="replace")
    assert runs[0]["state_type"] == "COMPLETED", worker_log + runner_log
    # Run in the warm runner's process, not a process the worker started.
    assert f"({runs[0]['id']}) here, warm" in runner_log, runner_log
    assert runs[0]["work_queue_name"] == "on-demand"
    assert len(store.jobs_for(DEMO_PROJECT, sentence_id)) == jobs_before + 1
    assert store.get_sentence(DEMO_PROJECT, sentence_id).status == "completed"


def stopping_the_worker_and_the_runner_mid_render_leaves_nothing_claimed(
    e2e: dict[str, Any], worker: subprocess.Popen[bytes], runner: subprocess.Popen[bytes]
) -> None:
    """SIGTERM to the worker alone (as `kill` or systemd sends it) while its batch renders,
    and Ctrl-C to the warm runner's process group (as a terminal sends it) while it holds an
    on-demand run: both end within seconds, their runs end Cancelled or Crashed, nothing stays
    claimed and nothing they started keeps running."""
    env, api, store, tmp = e2e["env"], e2e["api"], e2e["store"], e2e["tmp"]
    simulator = e2e["simulator"]
    # Every render outlasts the stop by far, and the on-demand one the batch's start however
    # loaded the machine (a process of its own, picked up by a polling worker: 20 s and more).
    simulator.sim.faults.slow_steps(30.0)
    sentences = store.sentences(DEMO_PROJECT)
    for number, sentence in enumerate(sentences):  # new graphs: the server's cache has none
        store.update_sentence(DEMO_PROJECT, sentence.id, seed=1000 + number)
    first = sentences[0].id
    emitted = subprocess.run(
        [str(BIN / "prefect"), "event", "emit", "storyboard.image.requested",
         "--resource-id", f"storyboard.sentence.{DEMO_PROJECT}.{first}",
         "--payload", json.dumps({"project_id": DEMO_PROJECT, "sentence_id": first})],
        cwd=REPO, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert emitted.returncode == 0, emitted.stdout.decode() + emitted.stderr.decode()

    def logs() -> str:
        return "".join(
            (tmp / n).read_text(errors="replace") for n in ("worker.log", "warm-runner.log")
        )

    def running() -> dict[str, Any]:
        runs = post(
            api, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
        )
        return {r["deployment_id"]: r for r in runs}

    deadline = time.monotonic() + 120
    while not running() or simulator.sim.running is None:  # the on-demand render first
        assert time.monotonic() < deadline, f"the on-demand run never rendered\n{logs()}"
        time.sleep(0.2)
    started = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "image-batch/default"],
        cwd=REPO, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout.decode() + started.stderr.decode()
    deadline = time.monotonic() + 120
    while len(running()) < 2 or len(simulator.sim.queue()["queue_pending"]) < 1:
        assert time.monotonic() < deadline, (
            f"the batch and the on-demand run never both ran\n{logs()}"
        )
        time.sleep(0.2)
    by_deployment = running()
    stopped_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    os.killpg(runner.pid, signal.SIGINT)
    for process in (worker, runner):
        process.wait(timeout=60)
    ended_s = time.monotonic() - stopped_at

    def states() -> dict[str, tuple[str, str]]:
        ids = [r["id"] for r in by_deployment.values()]
        found = post(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
        return {r["work_queue_name"]: (r["state_type"], r["state"]["message"]) for r in found}

    def settled() -> bool:  # the killed batch's claims and state are its undertaker's work
        left = subprocess.run(["pgrep", "-s", str(worker.pid)], capture_output=True)
        ended = {kind for kind, _ in states().values()}
        return left.returncode == 1 and ended <= {"CANCELLED", "CRASHED"}

    deadline = time.monotonic() + 30
    while not settled():
        assert time.monotonic() < deadline, (states(), logs())
        time.sleep(0.2)
    took_s = time.monotonic() - stopped_at
    assert ended_s < 20, (ended_s, logs())
    assert took_s < 30, took_s
    # The worker killed its batch (SIGKILL, Prefect's way): the undertaker cleared it.
    found = states()
    assert found["default"][0] == "CRASHED", found
    assert "claim(s), still dirty" in found["default"][1], found
    # The warm runner stopped its run as a cancel does.
    assert found["on-demand"] == (
        "CANCELLED",
        f"{DEMO_PROJECT}/{first}: stopped with the warm runner; it stays dirty",
    ), found
    assert store.running_jobs() == [], logs()
    assert not [s.id for s in store.sentences(DEMO_PROJECT) if s.status == "generating"]
    assert simulator.sim.queue()["queue_pending"] == [], logs()

"""A Prefect server SIGKILLed under a running `storyboard render`: the batch renders and stores
everything, then ends at once with its table, its message, exit status 0 and one line on what
it could not record in Prefect (before: 521 s for a batch whose last picture came at 110 s, no
table, exit status 1, six tracebacks and minutes of "EventsWorker failed to process item")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.store import Store
from storyboard.store.demo import DEMO_PROJECT, seed_demo
from tests.support.paths import REPO
from tests.support.prefect_db import QUIET_PREFECT
from tests.support.real import free_port

pytestmark = pytest.mark.slow  # a Prefect server and a batch process

BIN = Path(sys.executable).parent
BOOT_S = 90.0
# The renders (8 of 0.4 s) plus the time to end without the API: far below what Prefect's
# retries of every record took (minutes), far above what it takes now (seconds).
END_S = 60.0


def _until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_a_batch_whose_prefect_server_is_killed_ends_with_its_renders_and_exit_status_0(
    tmp_path: Path, prefect_home: Path
) -> None:
    data_dir = tmp_path / "data"
    store = Store(data_dir / "storyboard.duckdb")
    seed_demo(store, data_dir)
    store.close()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {**base, **QUIET_PREFECT, "PREFECT_HOME": str(prefect_home)}
    with SimulatorThread(SimulatorConfig(steps=4, step_s=0.1)) as sim:
        env.update(
            STORYBOARD_DATA_DIR=str(data_dir),
            STORYBOARD_COMFYUI_URL=sim.url,
            STORYBOARD_WORKFLOW=str(REPO / "workflows" / "image" / "flux-2.json"),
            STORYBOARD_STARTUP_WAIT_S="5",
        )
        with (tmp_path / "server.log").open("wb") as out:
            server = subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log = tmp_path / "render.log"
        render: subprocess.Popen[bytes] | None = None
        try:
            _until(lambda: _healthy(api, server), BOOT_S, "the Prefect server answers")
            with log.open("wb") as out:
                render = subprocess.Popen(
                    [str(BIN / "storyboard"), "render", DEMO_PROJECT],
                    cwd=REPO,
                    env={**env, "PREFECT_API_URL": api},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            images = data_dir / "projects" / DEMO_PROJECT / "images"
            _until(lambda: len(list(images.glob("*.png"))) >= 2, BOOT_S, "two pictures stored")
            os.killpg(server.pid, signal.SIGKILL)
            killed = time.monotonic()
            code = render.wait(timeout=END_S)
            ended_s = time.monotonic() - killed
        finally:
            for process in (server, render):
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=15)
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert ended_s < END_S
    lines = output.splitlines()
    assert "image-batch: Completed: 8 sentence(s): 8 completed" in lines, output
    assert any(line.startswith("image-batch: not recorded in Prefect: ") for line in lines)
    assert sum(1 for line in lines if line.startswith(f"{DEMO_PROJECT}/s")) == 8  # the table
    assert "Traceback" not in output and "EventsWorker" not in output, output
    assert output.count("the Prefect API stopped answering") == 1, output
    done = Store(data_dir / "storyboard.duckdb")
    sentences = done.sentences(DEMO_PROJECT)
    assert [s.status for s in sentences] == ["completed"] * len(sentences) == ["completed"] * 8
    assert not any(s.image_dirty for s in sentences)
    assert done.running_jobs() == []


def _healthy(api: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "the Prefect server exited"
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False

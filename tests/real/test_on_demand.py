"""Scenario 4: an on-demand render (the generate-image flow, called from a fresh process)
during a batch on the same real server starts right after the render running there."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.real import (
    REPO,
    ComfyUI,
    executions,
    history,
    jobs,
    popen_storyboard,
    storyboard,
    storyboard_env,
    wait_for,
)

ON_DEMAND = (
    "import sys; from flows.generate_image_flow import generate_image_flow; "
    "state = generate_image_flow('lighthouse', 's01', seed=4242, return_state=True); "
    "sys.exit(0 if state.is_completed() else 1)"
)


def test_an_on_demand_render_during_a_batch_goes_next(
    shared_comfyui: ComfyUI,
    prefect_server: dict[str, str],
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    data = tmp_path / "data"
    env = storyboard_env(prefect_server, data, shared_comfyui.url)
    assert storyboard("seed-demo", env=env).returncode == 0
    before = set(history(shared_comfyui))
    batch = popen_storyboard("render", "lighthouse", env=env, log=tmp_path / "render.log")

    first = data / "projects" / "lighthouse" / "images" / "s01.png"

    def busy() -> bool:
        queue = shared_comfyui.get("/queue")
        return bool(queue["queue_running"]) and bool(queue["queue_pending"]) and first.exists()

    # A creator looks at the first picture and asks for another seed while the batch runs.
    wait_for(busy, "the first picture, a render running and one waiting on the server")
    on_demand = subprocess.run(
        [sys.executable, "-c", ON_DEMAND],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert on_demand.returncode == 0, on_demand.stdout + on_demand.stderr
    wait_for(lambda: batch.poll() is not None, "the batch to end", timeout=600)
    assert batch.returncode == 0, (tmp_path / "render.log").read_text()

    ran = [row for row in executions(shared_comfyui) if row["prompt_id"] not in before]
    front = [index for index, row in enumerate(ran) if row["number"] < 0]  # "front": true
    assert len(front) == 1, ran
    index = front[0]
    mine, previous = ran[index], ran[index - 1]
    assert mine["status"] == "success"
    (job,) = [row for row in jobs(data) if row["prompt_id"] == mine["prompt_id"]]
    submitted = mine["start"] - job["queue_s"]
    # It waited only for the render running when it arrived, and went as soon as that ended.
    assert previous["start"] <= submitted + 0.5, (previous, mine, job)
    gap = mine["start"] - previous["end"]
    assert gap < 1.0, (previous, mine)
    jumped = [row for row in ran[index + 1 :] if 0 < row["number"] < -mine["number"]]
    figure(
        f"on demand during a batch: started {gap:.2f} s after the render it found running "
        f"(waited {job['queue_s']:.1f} s); {len(jumped)} batch prompt(s) queued earlier ran after"
    )

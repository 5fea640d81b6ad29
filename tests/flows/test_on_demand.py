"""generate-image during a batch: no wait for the lane the batch holds, the front of the queue,
the least loaded lane, never two prompts executing at once (real simulators, a real Prefect
API, a real DuckDB file)."""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.batch_pictures import THUMB_WIDTH
from flows.batch_report import PICTURE_KEY
from flows.cancel_watch import CANCEL_POLL_S
from flows.generate_image_flow import generate_image_flow
from flows.gpu_limit import ensure_lane_limits, hold_lane
from storyboard.lane import lanes_from_settings
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.clients import graph
from tests.support.flows import cancel_running
from tests.support.reliability import PROJECT, Tiny, carries, make_tiny, prompt_of

pytestmark = pytest.mark.usefixtures("prefect_api")

RENDER_S = 0.8  # each simulated render: long enough that the batch's prompts are still queued
SLOW = SimulatorConfig(steps=10, step_s=RENDER_S / 10)


def queue_batch_prompts(url: str, count: int) -> list[str]:
    """What a feeding batch leaves on its server: one running, the rest pending."""
    ids = []
    for seed in range(count):
        prompt_id = str(uuid.uuid4())
        body = {"prompt": graph(seed), "prompt_id": prompt_id}
        assert httpx.post(f"{url}/prompt", json=body, timeout=5).status_code == 200
        ids.append(prompt_id)
    return ids


def picture_artifact(state: Any) -> str:
    with get_client(sync_client=True) as client:
        [found] = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PICTURE_KEY])),
        )
    return str(found.data)


def artifact_descriptions(state: Any) -> dict[str, str]:
    """The run's artifacts' descriptions by key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return {a.key: a.description or "" for a in found if a.key is not None}


def outcome(state: Any) -> dict[str, Any]:
    [row] = state.result()["outcomes"]
    return dict(row)


@pytest.fixture
def slow_sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SLOW) as thread:
        yield thread


def test_an_on_demand_render_takes_no_lane_and_runs_next_at_the_front_of_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorThread
) -> None:
    # A short queue timeout: a run that waited for the held lane would fail, not hang.
    tiny = make_tiny(tmp_path, monkeypatch, slow_sim, STORYBOARD_QUEUE_TIMEOUT_S="3")
    [lane] = lanes_from_settings(tiny.settings)
    # Many: the window must outlast starting the flow run on a busy machine (seconds).
    batch = queue_batch_prompts(slow_sim.url, 20)
    # The batch's guard, held for the whole call: the lane lock and its Prefect slot.
    logger = logging.getLogger(__name__)
    ensure_lane_limits([lane.limit_tag], logger)
    with hold_lane(lane, str(uuid.uuid4()), wait_s=5, lease_s=60, logger=logger):
        state = generate_image_flow(
            project_id=PROJECT, sentence_id="s1", prompt="on demand", return_state=True
        )
    assert state.is_completed(), state.message

    [ours] = tiny.prompts_for("on demand")
    runs = {run.prompt_id: run for run in slow_sim.sim.runs}
    # It went ahead of the batch's pending prompts: at least one of them, queued before it,
    # ran after it; so it waited for at most the render running when it arrived.
    jumped = [pid for pid in batch if pid not in runs or runs[pid].start > runs[ours].start]
    assert jumped, "the on-demand prompt ran behind every batch prompt queued before it"
    row = outcome(state)
    assert row["status"] == "completed"
    assert row["queue_s"] is None or row["queue_s"] < RENDER_S + 1.0
    assert slow_sim.sim.max_concurrency() == 1
    assert tiny.sentence("s1").status == "completed"
    assert [job.status for job in tiny.store.jobs_for(PROJECT, "s1")] == ["completed"]


def test_an_on_demand_render_goes_to_the_lane_with_the_least_work_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorThread
) -> None:
    with SimulatorThread(SimulatorConfig(steps=2, step_s=0.01)) as idle:
        urls = f"busy={slow_sim.url},idle={idle.url}"
        tiny: Tiny = make_tiny(tmp_path, monkeypatch, slow_sim, STORYBOARD_COMFYUI_URLS=urls)
        monkeypatch.delenv("STORYBOARD_COMFYUI_URL")
        # Many: the busy lane must stay busy while the flow run starts on a loaded machine.
        queue_batch_prompts(slow_sim.url, 20)
        state = generate_image_flow(
            project_id=PROJECT, sentence_id="s2", prompt="to the idle lane", return_state=True
        )
        assert state.is_completed(), state.message
        assert "lane 'idle'" in (state.message or "")
        idle_prompts = [g for g in idle.sim.graphs.values() if "to the idle lane" in str(g)]
        assert len(idle_prompts) == 1
        assert tiny.prompts_for("to the idle lane") == []  # tiny.sim is the busy lane
        assert tiny.sentence("s2").status == "completed"


def test_an_on_demand_run_with_no_lane_answering_fails_in_one_line_changing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, slow_sim)
    before = tiny.sentence("s1")
    monkeypatch.setenv("STORYBOARD_COMFYUI_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STORYBOARD_STARTUP_WAIT_S", "1")
    state = generate_image_flow(
        project_id=PROJECT, sentence_id="s1", prompt="never sent", return_state=True
    )
    assert state.is_failed()
    assert "no ComfyUI lane answered" in (state.message or "")
    assert "lane 'default'" in (state.message or "")
    assert tiny.sentence("s1") == before
    assert tiny.store.jobs_for(PROJECT, "s1") == []


def test_an_event_prompt_no_text_encoder_reads_is_refused_in_one_line_changing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_sim: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, slow_sim)
    before = tiny.sentence("s1")

    state = generate_image_flow(
        project_id=PROJECT, sentence_id="s1", prompt="rain " * 10_000, return_state=True
    )

    assert state.is_failed()
    assert state.message == (
        "sentence 's1': the image prompt is 50,000 characters, over the limit of 32,768"
        " (STORYBOARD_MAX_PROMPT_CHARS): FLUX.2's text encoder reads about 512 tokens, so"
        " shorten it"
    )
    assert tiny.sentence("s1") == before
    assert tiny.store.jobs_for(PROJECT, "s1") == [] and tiny.sim.graphs == {}


def test_an_on_demand_run_cancelled_from_prefect_stops_its_render_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread)
    tiny.sim.faults.hang_next(1)  # it would render until interrupted
    cancelled_at: list[float] = []

    def cancel_once_rendering() -> None:
        deadline = time.monotonic() + 60
        while tiny.sim.running is None:
            assert time.monotonic() < deadline, "the render never started"
            time.sleep(0.01)
        cancel_running("generate-image")
        cancelled_at.append(time.monotonic())

    canceller = threading.Thread(target=cancel_once_rendering, daemon=True)
    canceller.start()
    state = generate_image_flow(project_id=PROJECT, sentence_id="s1", return_state=True)
    ended_s = time.monotonic() - cancelled_at[0]
    canceller.join(5)

    assert state.is_cancelled(), (state.name, state.message)
    assert state.message == f"{PROJECT}/s1: cancelled from Prefect; it stays dirty"
    assert ended_s < CANCEL_POLL_S + 4.0, ended_s
    assert [run.status for run in tiny.sim.runs] == ["interrupted"]
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("pending", True)
    assert tiny.store.running_jobs() == []


def test_an_on_demand_run_shows_the_picture_it_made_beside_its_sentence_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread)
    huge_seed = 2**63 - 25  # a browser would round it: text only

    state = generate_image_flow(
        project_id=PROJECT, sentence_id="s2", seed=huge_seed, return_state=True
    )

    assert state.is_completed(), state.message
    markdown = picture_artifact(state)
    assert markdown.startswith(f"# Picture of {PROJECT}/s2\n")
    [row] = [line for line in markdown.splitlines() if line.startswith("| ![")]
    picture, about, words = row.strip("| ").split(" | ")
    shown = about.split("<br>")
    assert shown[:3] == [f"{PROJECT}/s2", "completed", f"seed {huge_seed}"]
    assert shown[3] == f"render {outcome(state)['seconds']:.2f} s"
    assert words.startswith("Sentence s2.<br><br>prompt: ")
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)", picture)
    assert match is not None, picture
    with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as thumb:
        assert (thumb.format, thumb.width) == ("JPEG", THUMB_WIDTH)
    assert "No picture" not in markdown
    assert tiny.sentence("s2").seed == huge_seed
    # Its artifacts are kept apart from the batches' in the UI: each key is the flow's own.
    described = artifact_descriptions(state)
    keys = set(described)
    assert {"generate-image-picture", "generate-image-results", "generate-image-summary"} <= keys
    assert all(key.startswith("generate-image-") for key in keys), keys
    assert described["generate-image-results"] == "One row per sentence of this on-demand run"
    # What the render cost, from its job (recorded with its lane).
    [job] = tiny.store.jobs_for(PROJECT, "s2")
    gpu = state.result()["gpu"]
    assert job.lane == "default" and gpu["attempts"] == 1
    assert gpu["seconds"] == pytest.approx(job.render_s)


def test_an_on_demand_run_that_made_no_picture_says_so_in_its_picture_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread)
    tiny.store.update_sentence(PROJECT, "s1", seed=4242)
    s1 = prompt_of("s1")
    tiny.sim.faults.fail_matching(lambda graph: carries(graph, s1), "model file is corrupt")

    state = generate_image_flow(project_id=PROJECT, sentence_id="s1", return_state=True)

    assert state.is_failed()
    markdown = picture_artifact(state)
    assert "data:image" not in markdown
    [row] = [line for line in markdown.splitlines() if line.startswith(f"| missing | {PROJECT}/s1")]
    about = row.split(" | ")[1]
    assert about.startswith(f"{PROJECT}/s1<br>failed: ComfyUI failed")
    assert about.endswith("<br>seed 4242")  # the seed it failed with, to try it again
    last = markdown.rstrip().splitlines()[-1]
    assert last.startswith("No picture from this run (failed): ComfyUI failed prompt ")
    assert "model file is corrupt" in last


def test_a_skipped_on_demand_render_says_another_run_has_the_sentence(tmp_path: Path) -> None:
    from flows.batch_report import picture_markdown
    from storyboard.scheduler.outcome import SKIPPED_ERROR, Target, skipped

    markdown = picture_markdown(skipped(Target(PROJECT, "s1"), 0), tmp_path, None)

    assert f"| missing | {PROJECT}/s1<br>skipped: another run is" in markdown
    assert markdown.endswith(f"\nNo picture from this run (skipped): {SKIPPED_ERROR}\n")

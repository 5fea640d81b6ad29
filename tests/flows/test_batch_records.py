"""What a batch records and shows, through real `image-batch` runs on the Prefect test API
against the simulator with a real DuckDB store: render seconds (not queue wait), the seed of a
failed job, per-sentence artifact keys, stale temp files swept at start, a dry run that
uploads nothing."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.batch_report import PROGRESS_KEY, RESULTS_KEY, BatchReport
from flows.image_batch import image_batch
from storyboard.scheduler.outcome import Outcome
from storyboard.store import Character, SentenceInput
from tasks.progress import LaneBoard, run_progress_text
from tests.support.paths import REPO
from tests.support.reliability import PROJECT, Tiny, carries, prompt_of

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_batch(**parameters: Any) -> Any:
    return image_batch(project_id=PROJECT, **parameters, return_state=True)


def outcomes(state: Any) -> dict[str, dict[str, Any]]:
    return {o["sentence_id"]: o for o in state.result(raise_on_failure=False)["outcomes"]}


def png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_results_show_render_seconds_not_the_wait_in_comfyuis_queue(tiny: Tiny) -> None:
    tiny.sim.faults.slow_steps(0.3)  # s2 usually waits in ComfyUI's queue while s1 renders
    state = run_batch(limit=2)
    assert state.is_completed(), state.message
    shown = outcomes(state)
    for sid in ("s1", "s2"):
        job = tiny.store.jobs_for(PROJECT, sid)[-1]
        assert job.render_s is not None and job.duration_s is not None
        assert shown[sid]["seconds"] == round(job.render_s, 3), sid
        assert shown[sid]["seconds"] < job.duration_s  # not the whole attempt
        queue_s = None if job.queue_s is None else round(job.queue_s, 3)
        assert shown[sid]["queue_s"] == queue_s, sid


def test_the_summary_averages_render_seconds_of_rendered_pictures_only() -> None:
    report = BatchReport(3, dry_run=False)
    report.add(Outcome(PROJECT, "s1", "completed", seconds=2.0, queue_s=9.0))
    report.add(Outcome(PROJECT, "s2", "completed", seconds=4.0, queue_s=30.0))
    report.add(Outcome(PROJECT, "s3", "cached", seconds=0.001))
    assert "Mean render time per image: 3.00 s" in report.markdown()


def test_a_failed_job_records_its_seed_and_prompt_id(tiny: Tiny) -> None:
    tiny.store.update_sentence(PROJECT, "s1", seed=4242)
    s1 = prompt_of("s1")
    tiny.sim.faults.fail_matching(lambda graph: carries(graph, s1), "model file is corrupt")
    state = run_batch(limit=1)
    assert state.is_failed()
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert [j.status for j in jobs] == ["failed"] * 3
    assert [j.seed for j in jobs] == [4242] * 3
    assert all(j.prompt_id in tiny.sim.graphs for j in jobs), jobs


def test_a_run_has_one_progress_artifact_not_one_per_sentence(tiny: Tiny) -> None:
    tiny.store.upsert(
        sentences=[
            SentenceInput(id=sid, project_id=PROJECT, position=10 + i, text=sid,
                          image_prompt=prompt_of(sid))
            for i, sid in enumerate(("x_1", "x-1"))
        ]
    )  # fmt: skip

    state = run_batch()
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    progress = [a for a in found if a.type == "progress"]
    assert [a.key for a in progress] == [PROGRESS_KEY]
    assert progress[0].data == 100.0
    done = len(tiny.store.sentences(PROJECT))
    assert progress[0].description.startswith(f"{done}/{done} sentences done")
    assert "default: idle" in progress[0].description  # the one lane, nothing left on it


def test_the_progress_artifact_counts_the_failed_sentences(tiny: Tiny) -> None:
    s1 = prompt_of("s1")
    tiny.sim.faults.fail_matching(lambda graph: carries(graph, s1), "model file is corrupt")
    state = run_batch(limit=2)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        [progress] = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[PROGRESS_KEY])),
        )
    assert progress.description.startswith("2/2 sentences done, 1 failed; default: idle")


# A progress update that ends after the interpreter began its shutdown: a batch waits only a
# moment for the one in flight when it ends (CLOSE_WAIT_S), and on a loaded machine it lasts.
LATE_UPDATE = """
import atexit, sys, uuid
from flows.batch_report import ProgressArtifact
atexit.register(ProgressArtifact(uuid.UUID(sys.argv[1])).update, 50.0, "late")
"""


def test_a_progress_update_that_ends_as_its_process_exits_is_made_and_prints_nothing() -> None:
    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        made = client.create_artifact(ArtifactCreate(type="progress", data=0.0))
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    done = subprocess.run(
        [sys.executable, "-c", LATE_UPDATE, str(made.id)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # once a traceback: an event emitted after Prefect's shutdown
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[made.id]))
        )
    assert (artifact.data, artifact.description) == (50.0, "late")


def test_run_progress_text_counts_names_each_lane_and_estimates_the_rest() -> None:
    board = LaneBoard()
    board.show("a", "p/s03")
    board.show("b", None)
    text = run_progress_text(2, 6, 10.0, lanes=board.text())
    assert text == "2/6 sentences done; a: p/s03, b: idle; ETA 0:00:20"
    assert run_progress_text(0, 6, 1.0) == "0/6 sentences done"  # no ETA before the first
    failing = run_progress_text(3, 6, 9.0, lanes=board.text(), failed=2)
    assert failing == "3/6 sentences done, 2 failed; a: p/s03, b: idle; ETA 0:00:09"
    assert run_progress_text(6, 6, 9.0, verb="validated") == "6/6 sentences validated"


def test_a_temp_file_left_by_a_killed_write_is_removed_by_the_next_batch(tiny: Tiny) -> None:
    images = tiny.image("s1").parent
    images.mkdir(parents=True)
    left = images / ".s9.png.0123456789abcdef.tmp"  # the name write_atomic gives its temp file
    left.write_bytes(b"half a picture")
    old = time.time() - 3600
    os.utime(left, (old, old))
    kept = images / "notes.txt"  # not a temp file of ours: never touched
    kept.write_text("mine")

    state = run_batch(limit=1)

    assert state.is_completed(), state.message
    assert not left.exists()
    assert kept.read_text() == "mine"


def test_a_dry_run_uploads_no_reference(tiny: Tiny) -> None:
    refs = tiny.data_dir / "projects" / PROJECT / "refs"
    refs.mkdir(parents=True)
    (refs / "face.png").write_bytes(png(8))
    tiny.store.upsert(
        characters=[
            Character(id="c1", project_id=PROJECT, name="c1", reference_images=["refs/face.png"])
        ],
        sentences=[
            SentenceInput(id="r1", project_id=PROJECT, position=10, text="r1",
                          image_prompt=prompt_of("r1"), character_ids=["c1"])
        ],
    )  # fmt: skip
    before = tiny.sim.files.input_files()

    state = run_batch(dry_run=True)

    assert state.is_completed(), state.message
    assert outcomes(state)["r1"]["status"] == "valid"
    assert tiny.sim.files.input_files() == before
    assert tiny.sim.graphs == {}


def test_the_results_table_has_render_and_queue_columns(tiny: Tiny) -> None:
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RESULTS_KEY]))
        )
    table = next(a for a in found if a.flow_run_id == state.state_details.flow_run_id)
    assert '"render s"' in str(table.data) and '"queue s"' in str(table.data)
    assert '"seconds"' not in str(table.data)

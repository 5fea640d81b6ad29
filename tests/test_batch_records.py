"""What a batch records and shows, through real `image-batch` runs on the Prefect test API
against the simulator with a real DuckDB store: render seconds (not queue wait), the seed of a
failed job, per-sentence artifact keys, stale temp files swept at start, a dry run that
uploads nothing."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.batch_report import RESULTS_KEY, BatchReport
from flows.image_batch import image_batch
from flows.lane_feed import Outcome
from storyboard.store import Character, SentenceInput
from tasks.progress import artifact_key
from tests.reliability_fixtures import (  # noqa: F401  (fixtures)
    PROJECT,
    Tiny,
    carries,
    prompt_of,
    sim_thread_fixture,
    tiny_fixture,
)

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


def test_two_sentences_whose_ids_fold_alike_get_their_own_artifacts(tiny: Tiny) -> None:
    tiny.store.upsert(
        sentences=[
            SentenceInput(id=sid, project_id=PROJECT, position=10 + i, text=sid,
                          image_prompt=prompt_of(sid))
            for i, sid in enumerate(("x_1", "x-1"))
        ]
    )  # fmt: skip
    keys = {sid: artifact_key("render", PROJECT, sid) for sid in ("x_1", "x-1")}
    assert len(set(keys.values())) == 2
    assert all(key.startswith(f"render-{PROJECT}-x-1-") for key in keys.values())

    state = run_batch()
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys.values())))
        )
    by_key = {a.key: a for a in found if a.flow_run_id == state.state_details.flow_run_id}
    assert set(by_key) == set(keys.values())
    for sid, key in keys.items():
        assert by_key[key].description == f"Render of {PROJECT}/{sid}"
        assert by_key[key].data == 100.0


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

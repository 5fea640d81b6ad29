"""What a creator sees of a batch on the Prefect test API: named task runs, the pictures
artifact with thumbnails, seeds as text, the redrawn contact sheet, the renamed event, an
unknown project failing, the library's warnings in the run's logs."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.logging.handlers import APILogHandler

from flows.batch_pictures import LINE_CHARS, THUMB_WIDTH
from flows.batch_report import PICTURES_KEY, SUMMARY_KEY
from flows.image_batch import image_batch
from flows.run_logs import TASK_RUN_LOGGER, CompletedTaskFilter
from storyboard.contact_sheet import DRAFT_SHEET_NAME, SHEET_NAME
from storyboard.errors import WorkflowFormatError
from storyboard.files import stamp
from storyboard.thumbnails import read_thumbnail
from tests.support.flows import Project, results_table

pytestmark = pytest.mark.usefixtures("prefect_api")

DATA_URI = re.compile(r"!\[[^\]]*\]\((data:image/jpeg;base64,([A-Za-z0-9+/=]+))\)")


def artifact(flow_run_id: Any, key: str) -> str:
    with get_client(sync_client=True) as client:
        [found] = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
        )
    return str(found.data)


def test_render_task_runs_are_named_render_project_sentence(demo: Project) -> None:
    state = image_batch(project_id=demo.project_id, limit=2, return_state=True)

    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = {r.name for r in runs if r.name.startswith("render-")}
    first, second = demo.store.sentences(demo.project_id)[:2]
    assert names == {
        f"render-{demo.project_id}-{first.id}",
        f"render-{demo.project_id}-{second.id}",
    }


def test_pictures_artifact_shows_a_thumbnail_beside_sentence_prompt_seed_status(
    demo: Project,
) -> None:
    huge_seed = 2**63 - 25  # a browser would show 9223372036854775808
    first, second = demo.store.sentences(demo.project_id)[:2]
    demo.store.update_sentence(demo.project_id, first.id, seed=huge_seed)

    state = image_batch(project_id=demo.project_id, limit=2, return_state=True)

    assert state.is_completed(), state.message
    markdown = artifact(state.state_details.flow_run_id, PICTURES_KEY)
    assert "| picture | sentence | text and prompt |" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ![")]
    assert len(rows) == 2
    for row, sentence in zip(rows, (first, second), strict=True):
        stored = demo.store.get_sentence(demo.project_id, sentence.id)
        picture, about, words = row.strip("| ").split(" | ")
        assert about.split("<br>")[:3] == [
            f"{demo.project_id}/{sentence.id}",
            "completed",
            f"seed {stored.seed}",
        ]
        assert re.fullmatch(r"render \d+\.\d\d s", about.split("<br>")[3])
        # Lines short enough to read in a 1600 px page, the prompt below the text.
        shown = words.split("<br>")
        assert all(len(line) <= LINE_CHARS for line in shown)
        assert shown[0] == stored.text[: len(shown[0])]
        assert f"prompt: {stored.image_prompt}".startswith(shown[shown.index("") + 1])
        match = DATA_URI.fullmatch(picture)
        assert match is not None
        with Image.open(io.BytesIO(base64.b64decode(match.group(2)))) as thumb:
            assert thumb.format == "JPEG"
            assert thumb.width == THUMB_WIDTH
    assert f"<br>seed {huge_seed}<br>" in rows[0]


def test_results_table_shows_seeds_exactly_as_text(demo: Project) -> None:
    huge_seed = 2**63 - 25
    first = demo.store.sentences(demo.project_id)[0]
    demo.store.update_sentence(demo.project_id, first.id, seed=huge_seed)

    state = image_batch(project_id=demo.project_id, limit=1, return_state=True)

    assert state.is_completed(), state.message
    assert results_table(state)[first.id]["seed"] == str(huge_seed)


def test_the_contact_sheet_is_redrawn_and_shown_in_the_summary(demo: Project) -> None:
    sheet = demo.data_dir / "projects" / demo.project_id / SHEET_NAME
    assert not sheet.exists()

    state = image_batch(project_id=demo.project_id, limit=2, return_state=True)

    assert state.is_completed(), state.message
    with Image.open(sheet) as picture:
        assert picture.format == "PNG"
    summary = artifact(state.state_details.flow_run_id, SUMMARY_KEY)
    assert f"## Storyboard {demo.project_id}" in summary
    assert DATA_URI.search(summary) is not None


def test_the_summary_and_the_state_show_the_runs_gpu_time_and_cost(
    demo: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_GPU_HOUR_PRICE", "360")  # 0.1 a second: cents show

    state = image_batch(project_id=demo.project_id, limit=2, return_state=True)

    assert state.is_completed(), state.message
    jobs = [j for s in demo.store.sentences(demo.project_id) for j in demo.store.jobs_for(
        demo.project_id, s.id) if j.run_id == str(state.state_details.flow_run_id)]  # fmt: skip
    seconds = sum(j.render_s or 0.0 for j in jobs)
    assert len(jobs) == 2 and seconds > 0
    gpu = state.result()["gpu"]
    assert (gpu["attempts"], gpu["failed_seconds"]) == (2, 0.0)
    assert gpu["seconds"] == pytest.approx(seconds)
    summary = artifact(state.state_details.flow_run_id, SUMMARY_KEY)
    assert (
        f"GPU time of this run: {seconds:.1f} s in 2 attempt(s); cost {seconds * 0.1:.2f}"
        in summary
    ), summary


def test_a_draft_pass_shows_its_drafts_and_the_draft_sheet_at_the_draft_settings(
    demo: Project, simulator: Any
) -> None:
    project_dir = demo.data_dir / "projects" / demo.project_id
    queued = len(simulator.sim.graphs)

    state = image_batch(project_id=demo.project_id, limit=2, draft=True, return_state=True)

    assert state.is_completed(), state.message
    graphs = list(simulator.sim.graphs.values())[queued:]
    inputs = [(node["class_type"], node["inputs"]) for g in graphs for node in g.values()]
    assert [i["steps"] for kind, i in inputs if kind == "Flux2Scheduler"] == [8, 8]
    # Both sentences have reference pictures: drawn at the draft scale.
    scales = {i["megapixels"] for kind, i in inputs if kind == "ImageScaleToTotalPixels"}
    assert scales == {0.25}
    summary = artifact(state.state_details.flow_run_id, SUMMARY_KEY)
    assert summary.startswith("# Draft pass") and f"## Drafts {demo.project_id}" in summary
    assert DATA_URI.search(summary) is not None
    pictures = artifact(state.state_details.flow_run_id, PICTURES_KEY)
    assert len(DATA_URI.findall(pictures)) == 2
    with Image.open(project_dir / DRAFT_SHEET_NAME) as sheet:
        assert sheet.format == "PNG"
    # A draft is no final's stand-in: no contact sheet, no thumbnail, both still dirty.
    assert not (project_dir / SHEET_NAME).exists() and not (project_dir / "thumbs").exists()
    assert all(s.image_dirty for s in demo.store.sentences(demo.project_id)[:2])


def test_a_dry_run_draws_no_sheet_and_no_pictures(demo: Project) -> None:
    state = image_batch(project_id=demo.project_id, limit=1, dry_run=True, return_state=True)

    assert state.is_completed(), state.message
    assert not (demo.data_dir / "projects" / demo.project_id / SHEET_NAME).exists()


def test_an_unknown_project_fails_naming_the_known_ones(demo: Project) -> None:
    state = image_batch(project_id="lighthuose", return_state=True)

    assert state.is_failed()
    assert state.message == (
        "unknown project 'lighthuose'; did you mean 'lighthouse'? the known projects are:"
        " lighthouse"
    )
    assert demo.store.get_sentence(demo.project_id, "s01").image_dirty


def run_logs(flow_run_id: Any) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )


def test_a_broken_workflow_fails_the_run_with_its_message_and_no_traceback(
    demo: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "exported.json"
    broken.write_text("{'single': 'quotes'}", encoding="utf-8")
    monkeypatch.setenv("STORYBOARD_WORKFLOW", str(broken))

    state = image_batch(project_id=demo.project_id, return_state=True)

    assert state.is_failed()
    message = state.message or ""
    assert "not JSON" in message and "\n" not in message
    with pytest.raises(WorkflowFormatError):
        state.result()
    # Logs reach the API in the background: send every one logged so far, then read them.
    APILogHandler().flush()
    logs = run_logs(state.state_details.flow_run_id)
    assert any("not JSON" in log.message for log in logs), [log.message for log in logs]
    assert not [log.message for log in logs if "Traceback" in log.message]


def events_named(name: str, flow_run_id: Any, count: int) -> list[Any]:
    run = f"prefect.flow-run.{flow_run_id}"
    deadline = time.monotonic() + 15
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(name=[name])), limit=50
            )
        events = [e for e in page.events if any(r.id == run for r in e.related)]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_each_picture_is_announced_as_storyboard_image_completed_and_the_old_name(
    demo: Project,
) -> None:
    state = image_batch(project_id=demo.project_id, limit=1, return_state=True)

    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    [new] = events_named("storyboard.image.completed", run_id, 1)
    [old] = events_named("image.completed", run_id, 1)
    stored = demo.store.get_sentence(demo.project_id, "s01")
    assert new.payload == old.payload
    assert new.payload["seed_text"] == str(stored.seed)
    assert new.payload["image_file"] == stored.image_file


def test_a_library_warning_reaches_the_flow_runs_logs(demo: Project, simulator: Any) -> None:
    # The WebSocket drops mid-render: storyboard.comfyui.stream warns from the lane's own
    # event-loop thread (no Prefect context there), reconnects, and the render completes.
    simulator.sim.faults.drop_ws_next(1, after_steps=1)

    state = image_batch(project_id=demo.project_id, limit=1, return_state=True)

    assert state.is_completed(), state.message
    deadline = time.monotonic() + 15
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )
        found = [log for log in logs if log.name == "storyboard.comfyui.stream"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found, json.dumps([log.name for log in logs])
    assert "dropped" in found[0].message


def test_a_picture_gets_three_lines_in_the_run_log_and_no_completed_state_lines(
    demo: Project,
) -> None:
    state = image_batch(project_id=demo.project_id, limit=1, return_state=True)

    assert state.is_completed(), state.message
    APILogHandler().flush()
    messages = [log.message for log in run_logs(state.state_details.flow_run_id)]
    label = f"{demo.project_id}/s01: "
    about = [m.removeprefix(label) for m in messages if m.startswith(label)]
    assert [m.split(" ")[0] for m in about] == ["queued", "started", "saved"], messages
    assert re.fullmatch(r"saved \S+s01\.png \(rendered in \d+\.\d\d s\)", about[2])
    # Task runs' completions are in their states, not in the log; the flow still says its own.
    finished = [m for m in messages if m.startswith("Finished in state")]
    assert finished == ["Finished in state Completed('1 sentence(s): 1 completed')"], messages
    task_runs = logging.getLogger(TASK_RUN_LOGGER)
    assert not [f for f in task_runs.filters if isinstance(f, CompletedTaskFilter)]  # removed


def test_each_picture_of_a_batch_gets_the_thumbnail_the_next_sheet_draws_from(
    demo: Project,
) -> None:
    state = image_batch(project_id=demo.project_id, limit=3, return_state=True)

    assert state.is_completed(), state.message
    project = demo.data_dir / "projects" / demo.project_id
    made = demo.store.sentences(demo.project_id)
    done = [s for s in made if s.status == "completed"]
    assert len(done) == 3
    for sentence in done:
        picture = project / str(sentence.image_file)
        assert read_thumbnail(project, sentence.id, stamp(os.stat(picture))) is not None


def test_a_failed_task_still_logs_its_finished_line() -> None:
    failing = CompletedTaskFilter()
    record = logging.LogRecord(
        TASK_RUN_LOGGER, logging.ERROR, __file__, 1, "Finished in state Failed('x')", None, None
    )
    completed = logging.LogRecord(
        TASK_RUN_LOGGER, logging.INFO, __file__, 1, "Finished in state Completed()", None, None
    )

    assert failing.filter(record) and not failing.filter(completed)


def test_the_pictures_artifact_takes_the_thumbnail_the_contact_sheet_made(
    tmp_path: Path,
) -> None:
    from flows import batch_pictures
    from flows.batch_report import BatchReport
    from storyboard.contact_sheet import write_contact_sheet
    from storyboard.scheduler.outcome import Outcome
    from tests.support.store import seeded_store

    store = seeded_store(tmp_path, sentences=2)
    data_dir = tmp_path / "data"
    images = data_dir / "projects" / "p1" / "images"
    images.mkdir(parents=True)
    Image.effect_noise((1920, 1080), 64).convert("RGB").save(images / "s1.png")
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.complete_job(job.id, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1)
    from_file = batch_pictures.picture_uri(data_dir, "p1", "images/s1.png")
    thumbnails = batch_pictures.Thumbnails({("p1", "images/s1.png")})

    write_contact_sheet(store, data_dir, "p1", on_decoded=thumbnails.keep)
    (images / "s1.png").unlink()  # from here on, a thumbnail can only come from the sheet's
    report = BatchReport(1, dry_run=False)
    report.add(Outcome("p1", "s1", "completed", image_file="images/s1.png"))
    markdown = report.gallery(data_dir, {}, thumbnails)

    assert from_file is not None
    assert thumbnails.uri(data_dir, "p1", "images/s1.png") == from_file
    assert f"]({from_file})" in markdown


def test_a_full_pictures_artifact_names_the_rest_without_reading_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import batch_pictures
    from flows.batch_report import BatchReport
    from storyboard.scheduler.outcome import Outcome

    images = tmp_path / "projects" / "p" / "images"
    images.mkdir(parents=True)
    noisy = Image.effect_noise((1920, 1080), 64).convert("RGB")
    for name in ("s1", "s2"):
        noisy.save(images / f"{name}.png")
    (images / "s3.png").write_bytes(b"not a picture")  # read, it would say "unreadable"
    one = batch_pictures.picture_uri(tmp_path, "p", "images/s1.png")
    assert one is not None
    monkeypatch.setattr(batch_pictures, "MAX_ARTIFACT_BYTES", len(one) + len(one) // 2)
    report = BatchReport(3, dry_run=False)
    for sid in ("s1", "s2", "s3"):
        report.add(Outcome("p", sid, "completed", image_file=f"images/{sid}.png"))

    markdown = report.gallery(tmp_path, {})

    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "p/s" in line]
    assert [("data:image/jpeg" in row) for row in rows] == [True, False, False]
    assert "`images/s2.png`" in rows[1] and "`images/s3.png`" in rows[2]
    assert "unreadable" not in markdown
    assert "2 thumbnail(s) left out" in markdown

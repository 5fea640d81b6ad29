"""Drafts before finals through real `image-batch` runs on the Prefect test API, against the
simulator, with a real DuckDB store: a draft pass draws every sentence at the draft steps into
`images/drafts/` and a draft sheet, leaving every final dirty; the final pass then renders each
sentence at the workflow's steps with the draft's seed (never the draft from the render
cache); a reseed makes a draft stale, and only that one is drawn again."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from flows.image_batch import image_batch
from storyboard import ids
from storyboard.contact_sheet import DRAFT_SHEET_NAME, SHEET_NAME
from tests.support.reliability import PROJECT, Tiny

pytestmark = pytest.mark.usefixtures("prefect_api")

WORKFLOW_STEPS = 20  # workflows/image/flux-2.json's Flux2Scheduler
DRAFT_STEPS = 8  # STORYBOARD_DRAFT_STEPS' default


def _outcomes(state: Any) -> dict[str, dict[str, Any]]:
    return {o["sentence_id"]: o for o in state.result(raise_on_failure=False)["outcomes"]}


def _steps_queued(tiny: Tiny, since: int) -> list[int]:
    """The sampler steps of every graph the simulator accepted after the first `since`."""
    graphs = list(tiny.sim.graphs.values())[since:]
    return [
        node["inputs"]["steps"]
        for graph in graphs
        for node in graph.values()
        if node.get("class_type") == "Flux2Scheduler"
    ]


def test_draft_then_final_keeps_each_seed_and_never_reuses_a_draft(tiny: Tiny) -> None:
    drafted = image_batch(project_id=PROJECT, draft=True, return_state=True)
    assert drafted.is_completed(), drafted.message
    outcomes = _outcomes(drafted)
    assert {sid: o["status"] for sid, o in outcomes.items()} == dict.fromkeys(
        tiny.sentence_ids, "completed"
    )
    assert _steps_queued(tiny, 0) == [DRAFT_STEPS] * 3
    project_dir = ids.project_dir(tiny.data_dir, PROJECT)
    seeds = {}
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        # The draft is recorded beside the final, which is still to be made.
        assert sentence.draft_file == f"images/drafts/{sid}.png" == outcomes[sid]["image_file"]
        assert (sentence.image_dirty, sentence.status, sentence.image_file) == (
            True,
            "pending",
            None,
        )
        assert not sentence.draft_stale and sentence.seed is not None
        seeds[sid] = sentence.seed
        with Image.open(project_dir / sentence.draft_file) as picture:
            assert picture.size == tiny.settings.frame_size
        assert not tiny.image(sid).exists()
    assert (project_dir / DRAFT_SHEET_NAME).is_file()
    assert not (project_dir / SHEET_NAME).exists()

    # Nothing is stale: a second draft pass queues nothing.
    queued = len(tiny.sim.graphs)
    again = image_batch(project_id=PROJECT, draft=True, return_state=True)
    assert again.is_completed(), again.message
    assert _outcomes(again) == {} and len(tiny.sim.graphs) == queued

    # The final pass: every sentence rendered at the workflow's steps with its draft's seed.
    final = image_batch(project_id=PROJECT, return_state=True)
    assert final.is_completed(), final.message
    assert {sid: o["status"] for sid, o in _outcomes(final).items()} == dict.fromkeys(
        tiny.sentence_ids, "completed"
    )
    assert _steps_queued(tiny, queued) == [WORKFLOW_STEPS] * 3
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty, sentence.image_file) == (
            "completed",
            False,
            f"images/{sid}.png",
        )
        assert [job.seed for job in tiny.store.jobs_for(PROJECT, sid)] == [seeds[sid]] * 2
        assert sentence.draft_file == f"images/drafts/{sid}.png" and not sentence.draft_stale
    assert (project_dir / SHEET_NAME).is_file()

    # A reseed makes s2's draft (and final) stale: the next draft pass draws s2 alone.
    tiny.store.reseed(PROJECT, ["s2"])
    assert tiny.sentence("s2").draft_stale
    queued = len(tiny.sim.graphs)
    redrafted = image_batch(project_id=PROJECT, draft=True, return_state=True)
    assert redrafted.is_completed(), redrafted.message
    assert list(_outcomes(redrafted)) == ["s2"]
    assert _steps_queued(tiny, queued) == [DRAFT_STEPS]
    s2 = tiny.sentence("s2")
    assert not s2.draft_stale and s2.image_dirty and s2.image_file == "images/s2.png"

"""Seeds that stay, through real `image-batch` and `generate-image` runs on the Prefect test
API against the simulator with a real DuckDB store: the first render's seed is stored on the
sentence, and every later render, after an edit or through the event path, uses it."""

from __future__ import annotations

from typing import Any

import pytest

from flows.generate_image_flow import generate_image_flow
from flows.image_batch import image_batch
from tests.support.reliability import PROJECT, Tiny, prompt_of

pytestmark = pytest.mark.usefixtures("prefect_api")


def _outcomes(state: Any) -> dict[str, dict[str, Any]]:
    return {o["sentence_id"]: o for o in state.result(raise_on_failure=False)["outcomes"]}


def test_a_drawn_seed_stays_through_edits_the_event_path_and_an_undo_that_hits_the_cache(
    tiny: Tiny,
) -> None:
    assert tiny.sentence("s1").seed is None
    state = image_batch(project_id=PROJECT, limit=1, return_state=True)
    assert state.is_completed(), state.message
    drawn = tiny.store.jobs_for(PROJECT, "s1")[-1].seed
    assert drawn is not None and tiny.sentence("s1").seed == drawn

    # The event's path: a new prompt and no seed.
    event = generate_image_flow(
        project_id=PROJECT, sentence_id="s1", prompt="a gull over the harbour", return_state=True
    )
    assert event.is_completed(), event.message
    assert [j.seed for j in tiny.store.jobs_for(PROJECT, "s1")] == [drawn] * 2

    # An edit to another prompt and back (the CLI's and an import's path): the same graph as
    # the picture on disk, so no GPU work.
    tiny.store.update_sentence(PROJECT, "s1", image_prompt=prompt_of("s1"))
    tiny.store.update_sentence(PROJECT, "s1", image_prompt="a gull over the harbour")
    runs_before = len(tiny.sim.runs)
    undone = image_batch(project_id=PROJECT, limit=1, return_state=True)
    assert undone.is_completed(), undone.message
    assert _outcomes(undone)["s1"]["status"] == "cached"
    assert len(tiny.sim.runs) == runs_before

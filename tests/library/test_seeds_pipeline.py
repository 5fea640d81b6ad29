"""Seeds that stay, through the pipeline on the simulator: a sentence without a seed keeps
the one its first render used, so an edit and its undo render the same graph (the render
cache hits), and a run that prepared with another seed prepares again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storyboard import pipeline
from storyboard.simulator import SimulatorConfig
from storyboard.store import SentenceInput
from tests.support.pipeline import Rig, make_rig, save_picture

PROMPT = "a lighthouse at dusk"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path, SimulatorConfig(steps=1, step_s=0.0)) as made:
        made.store.upsert_sentences(
            [SentenceInput(id="s3", project_id="p1", position=3, text="t", image_prompt=PROMPT)]
        )
        yield made


def _render_and_save(rig: Rig, prepared: pipeline.Prepared, *, reuse: bool) -> pipeline.Stored:
    return save_picture(rig.store, rig.render(prepared, reuse=reuse), rig.config)


def test_the_first_render_s_seed_stays_so_an_edit_and_its_undo_hit_the_render_cache(
    rig: Rig,
) -> None:
    first = rig.prepare("s3")
    assert first.resolved.seed is None
    stored = _render_and_save(rig, first, reuse=False)
    assert stored.current
    assert rig.store.get_sentence("p1", "s3").seed == first.seed == stored.seed

    rig.store.update_sentence("p1", "s3", image_prompt="a lighthouse in a storm")
    rig.store.update_sentence("p1", "s3", image_prompt=PROMPT)
    again = rig.prepare("s3")

    assert again.seed == first.seed
    assert again.graph_hash == first.graph_hash
    rendered = rig.render(again, reuse=True)
    assert rendered.cached  # the picture on disk is reused; ComfyUI was not asked
    assert save_picture(rig.store, rendered, rig.config).current


def test_a_run_that_prepared_with_another_seed_is_told_to_prepare_again(rig: Rig) -> None:
    ours, theirs = rig.prepare("s3"), rig.prepare("s3")
    assert ours.seed != theirs.seed  # each drew its own: the sentence had none

    claimed = pipeline.claim(rig.store, theirs, run_id="run-2", attempt=1, stale_after_s=60)
    assert claimed is not None and pipeline.is_current(theirs, claimed.job)
    rig.store.fail_job(claimed.job.id, "lost", final=False)

    mine = pipeline.claim(rig.store, ours, run_id="run-1", attempt=1, stale_after_s=60)

    assert mine is not None
    assert not pipeline.is_current(ours, mine.job)
    assert rig.prepare("s3").seed == theirs.seed == rig.store.get_sentence("p1", "s3").seed


def test_a_dry_run_prepare_stores_no_seed(rig: Rig) -> None:
    rig.prepare("s3", upload=False)
    assert rig.store.get_sentence("p1", "s3").seed is None

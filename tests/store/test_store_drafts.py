"""Drafts in the store, against real DuckDB files: a draft is claimed, recorded and failed
beside the sentence's final picture without touching it (status, dirty flag, picture), goes
stale with an edit or a reseed, is never a final's render-cache hit, and its GPU time is
counted apart."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb

from storyboard.store import Store
from storyboard.store.migrations import MIGRATIONS, SCHEMA_VERSION, apply_migrations
from tests.support.store import seeded_store


def _draft(store: Store, sentence_id: str, *, run_id: str = "d1", seed: int | None = 5) -> str:
    job = store.start_job(
        "p1", sentence_id, run_id=run_id, attempt=1, stale_after_s=600, seed=seed, draft=True
    )
    assert job is not None and job.draft
    return job.id


def test_a_draft_is_recorded_beside_the_final_and_leaves_it_dirty(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _draft(store, "s1", seed=41)
    claimed = store.get_sentence("p1", "s1")
    # The status tells of the final picture; the draft's seed is kept for the final.
    assert (claimed.status, claimed.seed, claimed.image_dirty) == ("pending", 41, True)

    assert store.complete_job(
        job_id,
        image_file="images/drafts/s1.png",
        seed=41,
        workflow_hash="draft-graph",
        duration_s=1.0,
        render_s=0.5,
    )
    s1 = store.get_sentence("p1", "s1")
    assert (s1.draft_file, s1.draft_revision, s1.draft_stale) == ("images/drafts/s1.png", 1, False)
    assert (s1.status, s1.image_dirty, s1.image_file) == ("pending", True, None)
    assert [s.id for s in store.dirty_sentences("p1")] == ["s1", "s2", "s3"]
    # A second draft pass finds nothing to do for s1; a final pass still renders it.
    drafts = store.dirty_render_inputs("p1", draft=True)
    assert [s.id for s, _ in drafts] == ["s2", "s3"]
    assert (
        store.start_job(
            "p1", "s1", run_id="d2", attempt=1, stale_after_s=600, draft=True, only_dirty=True
        )
        is None
    )
    assert store.status_counts()["p1"]["drafts"] == 1


def test_an_edit_or_a_reseed_makes_the_draft_stale(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    for sentence_id in ("s1", "s2"):
        job_id = _draft(store, sentence_id)
        store.complete_job(
            job_id,
            image_file=f"images/drafts/{sentence_id}.png",
            seed=5,
            workflow_hash=f"g-{sentence_id}",
            duration_s=1.0,
        )
    store.update_sentence("p1", "s1", image_prompt="the harbour at night")
    store.reseed("p1", ["s2"], draw=lambda: 99)
    assert [s.id for s, _ in store.dirty_render_inputs("p1", draft=True)] == ["s1", "s2", "s3"]
    assert all(s.draft_stale for s in store.sentences("p1"))
    assert store.status_counts()["p1"]["drafts"] == 0


def test_a_draft_of_an_edited_sentence_is_not_recorded(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _draft(store, "s1")
    store.update_sentence("p1", "s1", image_prompt="the harbour at night")
    won = store.complete_job(
        job_id, image_file="images/drafts/s1.png", seed=5, workflow_hash="g", duration_s=1.0
    )
    assert won is False
    s1 = store.get_sentence("p1", "s1")
    assert (s1.draft_file, s1.status, s1.image_revision) == (None, "pending", 2)


def test_a_failed_draft_leaves_the_sentence_as_it_was(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    final = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=5)
    assert final is not None
    store.complete_job(
        final.id, image_file="images/s1.png", seed=5, workflow_hash="f", duration_s=1.0
    )
    job_id = _draft(store, "s1")
    store.fail_job(job_id, "ComfyUI said no", final=True, render_s=0.25)
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.image_file, s1.last_error, s1.draft_file) == (
        "completed",
        "images/s1.png",
        None,
        None,
    )
    assert store.get_job(job_id).status == "failed"
    # A failure before any claim (a bad reference) is a failed draft job, not a failed sentence.
    released = store.release_run("d1")
    assert released == 0 and store.get_sentence("p1", "s1").status == "completed"


def test_the_render_cache_never_gives_a_draft_to_a_final(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _draft(store, "s1")
    store.complete_job(
        job_id, image_file="images/drafts/s1.png", seed=5, workflow_hash="same", duration_s=1.0
    )
    # The same graph (draft settings equal to the final's): a draft pass reuses the draft,
    # a final pass does not.
    assert store.picture_hashes() == set()
    assert store.picture_hashes(draft=True) == {"same"}
    assert store.find_render("same") is None
    found = store.find_render("same", draft=True)
    assert found is not None and found.id == job_id
    claimed = store.start_render(
        "p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=5, graph_hash="same"
    )
    assert claimed is not None and claimed.made_before is None


def test_gpu_time_counts_drafts_apart(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _draft(store, "s1")
    store.complete_job(
        job_id,
        image_file="images/drafts/s1.png",
        seed=5,
        workflow_hash="g",
        duration_s=1.0,
        render_s=2.0,
    )
    final = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert final is not None
    store.complete_job(
        final.id,
        image_file="images/s1.png",
        seed=5,
        workflow_hash="f",
        duration_s=6.0,
        render_s=5.0,
    )
    spent = store.gpu_seconds_by_sentence("p1")["s1"]
    assert (spent.attempts, spent.seconds, spent.draft_seconds) == (2, 7.0, 2.0)
    assert spent.text() == "7.0 s in 2 attempt(s), 2.0 s of it drafts"
    assert store.gpu_seconds_of_run("d1").draft_seconds == 2.0


def test_gpu_time_per_lane_of_a_run(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    for sentence_id, lane, render_s in (("s1", "a", 2.0), ("s2", "b", 3.0), ("s3", None, 1.0)):
        job = store.start_job(
            "p1", sentence_id, run_id="r1", attempt=1, stale_after_s=600, lane=lane
        )
        assert job is not None and job.lane == lane
        store.fail_job(job.id, "broke", final=False, render_s=render_s)
    lanes = store.gpu_seconds_by_lane("r1")
    assert {lane: (t.attempts, t.seconds) for lane, t in lanes.items()} == {
        "-": (1, 1.0),
        "a": (1, 2.0),
        "b": (1, 3.0),
    }
    assert store.gpu_seconds_by_lane("another run") == {}


def test_a_store_from_before_drafts_gains_them_empty(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        apply_migrations(con, datetime(2025, 1, 1), MIGRATIONS[:4])
        con.execute(
            "INSERT INTO image_jobs (id, project_id, sentence_id, status, attempt, run_id,"
            " started_at, revision, workflow_hash, result_file) VALUES"
            " ('j1', 'p1', 's1', 'completed', 1, 'r0', '2025-01-01', 1, 'old', 'images/s1.png')"
        )
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION == 6
    job = store.get_job("j1")
    assert job.draft is False
    assert store.picture_hashes() == {"old"} and store.picture_hashes(draft=True) == set()

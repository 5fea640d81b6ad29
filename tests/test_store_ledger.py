"""What an image job row records (queue wait apart from render time, the prompt id and seed of a
failure) and how a run releases the jobs it still holds. A real DuckDB file per test."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from storyboard.errors import StoreError
from storyboard.store import RELEASED_ERROR, SCHEMA_VERSION, Store
from storyboard.store.migrations import MIGRATIONS, apply_migrations
from tests.store_helpers import Clock, seeded_store


def test_complete_job_keeps_queue_wait_and_render_time_apart(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.complete_job(
        job.id,
        image_file="images/s1.png",
        seed=7,
        workflow_hash="h",
        duration_s=40.5,
        render_s=2.5,
        queue_s=38.0,
    )
    recorded = store.get_job(job.id)
    assert (recorded.duration_s, recorded.render_s, recorded.queue_s) == (40.5, 2.5, 38.0)


def test_timings_are_optional_and_bad_ones_are_refused(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(StoreError, match=r"render_s must be a finite number of seconds"):
            store.complete_job(
                job.id, image_file="x.png", seed=1, workflow_hash="h", duration_s=1, render_s=bad
            )
    assert store.get_job(job.id).status == "running"  # nothing written
    store.complete_job(job.id, image_file="x.png", seed=1, workflow_hash="h", duration_s=1)
    recorded = store.get_job(job.id)
    assert (recorded.render_s, recorded.queue_s) == (None, None)


def test_a_failed_job_records_its_prompt_id_seed_and_timings(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.fail_job(
        job.id,
        "execution_error in KSampler",
        final=False,
        prompt_id="prompt-9",
        seed=4242,
        render_s=1.25,
        queue_s=0.5,
    )
    failed = store.get_job(job.id)
    assert (failed.status, failed.prompt_id, failed.seed) == ("failed", "prompt-9", 4242)
    assert (failed.render_s, failed.queue_s) == (1.25, 0.5)


def test_a_failure_without_a_prompt_id_keeps_the_one_already_recorded(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.set_job_prompt(job.id, "prompt-1")
    store.fail_job(job.id, "lost", final=True)
    assert store.get_job(job.id).prompt_id == "prompt-1"


def test_a_store_made_before_the_timing_columns_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations(con, datetime(2025, 1, 1), MIGRATIONS[:1])
    con.execute(
        "INSERT INTO image_jobs (id, project_id, sentence_id, status, attempt, run_id,"
        " started_at, duration_s, revision) VALUES ('j1', 'p1', 's1', 'completed', 1, 'r',"
        " TIMESTAMP '2025-01-01 12:00:00', 3.0, 1)"
    )
    con.close()

    store = Store(path)

    assert store.schema_version() == SCHEMA_VERSION == 2
    old = store.get_job("j1")
    assert (old.duration_s, old.render_s, old.queue_s) == (3.0, None, None)


def _claim(store: Store, sentence_id: str, run_id: str) -> str:
    job = store.start_job("p1", sentence_id, run_id=run_id, attempt=1, stale_after_s=600)
    assert job is not None
    return job.id


def test_release_run_frees_only_that_runs_running_jobs(tmp_path: Path) -> None:
    clock = Clock()
    store = seeded_store(tmp_path, sentences=4, clock=clock)
    mine_1, mine_2 = _claim(store, "s1", "r1"), _claim(store, "s2", "r1")
    done = _claim(store, "s3", "r1")
    store.complete_job(done, image_file="images/s3.png", seed=1, workflow_hash="h", duration_s=1)
    theirs = _claim(store, "s4", "r2")
    clock.advance(5)

    assert store.release_run("r1") == 2

    for job_id in (mine_1, mine_2):
        job = store.get_job(job_id)
        assert (job.status, job.error) == (
            "failed",
            RELEASED_ERROR,
        )
        assert job.duration_s == 5.0
    for sentence_id in ("s1", "s2"):
        s = store.get_sentence("p1", sentence_id)
        assert (s.status, s.image_dirty) == ("pending", True)
    assert store.get_job(done).status == "completed"
    assert store.get_sentence("p1", "s3").status == "completed"
    assert store.get_job(theirs).status == "running"
    assert store.get_sentence("p1", "s4").status == "generating"
    # The released sentences are claimable at once by the next run: nothing waits to go stale.
    assert store.start_job("p1", "s1", run_id="r3", attempt=1, stale_after_s=600) is not None


def test_release_run_is_idempotent(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _claim(store, "s1", "r1")
    assert store.release_run("r1") == 1
    released = store.get_job(job_id)
    assert store.release_run("r1") == 0
    assert store.get_job(job_id) == released
    assert store.release_run("never-ran") == 0


def test_release_run_keeps_a_sentence_another_run_now_renders_generating(tmp_path: Path) -> None:
    clock = Clock()
    store = seeded_store(tmp_path, clock=clock)
    old = _claim(store, "s1", "r1")
    clock.advance(700)  # r1 went quiet; r2 takes s1 over as stale
    new = store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=600)
    assert new is not None

    assert store.release_run("r1") == 0

    assert store.get_job(old).error != RELEASED_ERROR
    assert store.get_job(new.id).status == "running"
    assert store.get_sentence("p1", "s1").status == "generating"


def test_release_run_leaves_an_edited_sentence_dirty_and_pending(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    _claim(store, "s1", "r1")
    store.update_sentence("p1", "s1", image_prompt="the harbour at night")
    assert store.release_run("r1") == 1
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.image_dirty, s1.image_revision) == ("pending", True, 2)


def test_release_run_keeps_an_earlier_final_failure(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job_id = _claim(store, "s1", "r1")
    store.fail_job(job_id, "validation failed", final=True)
    assert store.release_run("r1") == 0
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.last_error) == ("failed", "validation failed")


def test_release_run_refuses_an_empty_run_id(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(StoreError, match="release_run needs a run id"):
        store.release_run("")

"""The image-job ledger against real DuckDB files: claiming a sentence, the revision
compare-and-set, failures and staleness, what a job row records (queue wait apart from render
time, the prompt id and seed of a failure) and how a run releases the jobs it still holds."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from storyboard.errors import NotFoundError, StoreError
from storyboard.store import RELEASED_ERROR, STALE_ERROR, JobLedger, Store
from storyboard.store import ledger as ledger_module
from storyboard.store import store as store_module
from tests.support.store import Clock, seeded_store


def test_revision_race_edit_during_generation_keeps_sentence_dirty(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None and job.revision == 1
    assert store.get_sentence("p1", "s1").status == "generating"

    store.update_sentence("p1", "s1", image_prompt="the harbour at night")
    won = store.complete_job(
        job.id, image_file="images/s1.png", seed=7, workflow_hash="abc", duration_s=12.5
    )

    assert won is False
    s1 = store.get_sentence("p1", "s1")
    assert (s1.image_dirty, s1.status, s1.image_revision, s1.image_file) == (
        True,
        "pending",
        2,
        None,
    )
    finished = store.get_job(job.id)
    assert (finished.status, finished.result_file, finished.seed) == (
        "completed",
        "images/s1.png",
        7,
    )
    assert [s.id for s in store.dirty_sentences("p1")] == ["s1", "s2", "s3"]


def test_complete_job_without_edit_clears_dirty(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s2", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.set_job_prompt(job.id, "prompt-123")
    assert store.complete_job(
        job.id, image_file="images/s2.png", seed=3, workflow_hash="h", duration_s=2.0
    )
    s2 = store.get_sentence("p1", "s2")
    assert (s2.status, s2.image_dirty, s2.image_file) == ("completed", False, "images/s2.png")
    (recorded,) = store.jobs_for("p1", "s2")
    assert (recorded.prompt_id, recorded.workflow_hash, recorded.duration_s) == (
        "prompt-123",
        "h",
        2.0,
    )
    assert [s.id for s in store.dirty_sentences()] == ["s1", "s3"]
    assert [s.id for s in store.dirty_sentences(force=True, limit=2)] == ["s1", "s2"]
    with pytest.raises(StoreError, match="already completed"):
        store.complete_job(job.id, image_file="x.png", seed=1, workflow_hash="h", duration_s=1)


def test_only_dirty_claim_refuses_a_sentence_another_run_just_finished(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    first = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert first is not None
    store.complete_job(
        first.id, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1
    )

    # A second batch that listed s1 while it was still dirty must not render it again...
    late = store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=600, only_dirty=True)
    assert late is None
    assert len(store.jobs_for("p1", "s1")) == 1
    # ...while a forced regeneration still may.
    forced = store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=600)
    assert forced is not None


def test_live_job_blocks_other_runs_until_stale(tmp_path: Path) -> None:
    clock = Clock()
    store = seeded_store(tmp_path, clock=clock)
    first = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=300)
    assert first is not None
    assert store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=300) is None

    clock.advance(301)
    second = store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=300)

    assert second is not None
    old = store.get_job(first.id)
    assert (old.status, old.error) == ("failed", STALE_ERROR)


def test_same_run_retry_supersedes_its_earlier_attempt(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    first = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    second = store.start_job("p1", "s1", run_id="r1", attempt=2, stale_after_s=600)
    assert first is not None and second is not None
    assert store.get_job(first.id).status == "failed"
    assert [j.attempt for j in store.jobs_for("p1", "s1")] == [1, 2]


def test_fail_job_retryable_then_final(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.fail_job(job.id, "connection refused", final=False)
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.last_error, s1.image_dirty) == ("pending", "connection refused", True)

    job = store.start_job("p1", "s1", run_id="r1", attempt=2, stale_after_s=600)
    assert job is not None
    store.fail_job(job.id, "validation failed", final=True)
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.last_error, s1.image_dirty) == ("failed", "validation failed", True)
    assert store.get_job(job.id).error == "validation failed"


def test_final_failure_of_outdated_revision_leaves_sentence_pending(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.update_sentence("p1", "s1", image_prompt="fixed prompt")
    store.fail_job(job.id, "bad prompt", final=True)
    assert store.get_sentence("p1", "s1").status == "pending"


def test_reset_stale(tmp_path: Path) -> None:
    clock = Clock()
    store = seeded_store(tmp_path, clock=clock)
    old = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    clock.advance(100)
    fresh = store.start_job("p1", "s2", run_id="r1", attempt=1, stale_after_s=600)
    assert old is not None and fresh is not None

    assert store.reset_stale(50) == 1

    assert (store.get_job(old.id).status, store.get_job(old.id).error) == ("failed", STALE_ERROR)
    assert store.get_job(fresh.id).status == "running"
    s1, s2 = store.get_sentence("p1", "s1"), store.get_sentence("p1", "s2")
    assert (s1.status, s1.image_dirty) == ("pending", True)
    assert s2.status == "generating"


def test_threads_racing_for_one_sentence_claim_it_once(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    barrier = threading.Barrier(6)
    results: list[object] = []
    errors: list[BaseException] = []

    def claim(run: int) -> None:
        barrier.wait()
        try:
            results.append(
                store.start_job("p1", "s1", run_id=f"run{run}", attempt=1, stale_after_s=600)
            )
        except BaseException as exc:  # collected so the main thread can report it
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(r is not None for r in results) == 1
    assert len(store.jobs_for("p1", "s1")) == 1


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
        assert (job.status, job.error) == ("released", RELEASED_ERROR)
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


def test_the_ledger_is_one_module_and_works_on_a_store_file_by_itself(tmp_path: Path) -> None:
    seeded_store(tmp_path)
    ledger = JobLedger(tmp_path / "store.duckdb")
    job = ledger.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    assert ledger.complete_job(
        job.id, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1
    )
    # The content half sees what the ledger did: one file, one truth.
    store = Store(tmp_path / "store.duckdb")
    assert store.get_sentence("p1", "s1").status == "completed"
    assert [j.id for j in store.jobs_for("p1", "s1")] == [job.id]
    # Only the ledger writes image jobs; the content store's module never does.
    content = Path(store_module.__file__).read_text(encoding="utf-8")
    assert not re.search(r"(INSERT INTO|UPDATE|DELETE FROM) image_jobs", content)
    assert re.search(r"UPDATE image_jobs", Path(ledger_module.__file__).read_text("utf-8"))


def test_complete_job_records_the_prompt_id_in_the_same_call(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    other = store.start_job("p1", "s2", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None and other is not None
    store.complete_job(
        job.id, image_file="images/s1.png", seed=7, workflow_hash="h", duration_s=1,
        prompt_id="prompt-9",
    )  # fmt: skip
    store.set_job_prompt(other.id, "prompt-set-before")
    store.complete_job(other.id, image_file="images/s2.png", seed=7, workflow_hash="h2",
                       duration_s=1)  # fmt: skip
    assert store.get_job(job.id).prompt_id == "prompt-9"
    assert store.get_job(other.id).prompt_id == "prompt-set-before"  # not given: kept


def test_start_jobs_claims_a_group_in_one_call_as_start_job_would(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    held = store.start_job("p1", "s2", run_id="other", attempt=1, stale_after_s=600)
    assert held is not None

    jobs = store.start_jobs(
        [("p1", "s1", 41), ("p1", "s2", 42), ("p1", "s3", None)],
        run_id="r1",
        attempt=1,
        stale_after_s=600,
    )

    s1, s2, s3 = jobs
    assert s2 is None  # another live run holds it
    assert s1 is not None and s3 is not None
    assert (s1.sentence_id, s1.run_id, s1.status) == ("s1", "r1", "running")
    assert store.get_sentence("p1", "s1").seed == 41  # kept, as start_job keeps it
    assert [store.get_sentence("p1", s).status for s in ("s1", "s3")] == ["generating"] * 2
    assert store.start_jobs([], run_id="r1", attempt=1, stale_after_s=600) == []


def test_start_jobs_with_one_bad_claim_claims_none(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(NotFoundError, match="no sentence 'nope'"):
        store.start_jobs(
            [("p1", "s1", 1), ("p1", "nope", 2)], run_id="r1", attempt=1, stale_after_s=600
        )
    assert store.jobs_for("p1", "s1") == []
    assert store.get_sentence("p1", "s1").status == "pending"


def test_start_render_claims_and_finds_the_picture_made_from_the_same_graph(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    first = _claim(store, "s1", "r1")
    store.complete_job(first, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1)

    claimed = store.start_render(
        "p1", "s2", run_id="r1", attempt=1, stale_after_s=600, seed=9, graph_hash="h"
    )
    assert claimed is not None
    assert (claimed.graph_hash, claimed.made_before) == ("h", store.get_job(first))
    assert claimed.job == store.get_job(claimed.job.id)
    assert (claimed.job.status, claimed.job.seed) == ("running", 9)
    assert store.get_sentence("p1", "s2").status == "generating"

    other = store.start_render(
        "p1", "s3", run_id="r1", attempt=1, stale_after_s=600, graph_hash="never-made"
    )
    assert other is not None and other.made_before is None
    unlooked = store.start_render("p1", "s3", run_id="r1", attempt=2, stale_after_s=600)
    assert unlooked is not None and (unlooked.graph_hash, unlooked.made_before) == (None, None)


def test_start_render_of_a_sentence_another_run_holds_claims_nothing(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    _claim(store, "s1", "r1")
    taken = store.start_render("p1", "s1", run_id="r2", attempt=1, stale_after_s=600)
    assert taken is None
    assert [job.run_id for job in store.jobs_for("p1", "s1")] == ["r1"]
    with pytest.raises(NotFoundError, match="no sentence 'nope'"):
        store.start_render("p1", "nope", run_id="r2", attempt=1, stale_after_s=600)

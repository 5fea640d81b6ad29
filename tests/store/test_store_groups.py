"""Claiming and recording in groups against a real DuckDB file: a group does what the same
calls one by one would, in one transaction (all of it or none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.errors import NotFoundError, StoreError
from storyboard.store import Completion, Store
from tests.support.store import seeded_store


def claim(store: Store, *sentence_ids: str, run_id: str = "r1") -> list[str]:
    jobs = store.start_jobs(
        [("p1", s, None) for s in sentence_ids], run_id=run_id, attempt=1, stale_after_s=600
    )
    assert all(job is not None for job in jobs)
    return [job.id for job in jobs if job is not None]


def done(job_id: str, sentence_id: str, graph: str = "h") -> Completion:
    return Completion(
        job_id,
        image_file=f"images/{sentence_id}.png",
        seed=5,
        workflow_hash=graph,
        duration_s=2.0,
        render_s=1.5,
        queue_s=0.25,
        prompt_id=f"prompt-{sentence_id}",
    )


def test_complete_jobs_records_a_group_and_keeps_an_edited_sentence_dirty(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    j1, j2, j3 = claim(store, "s1", "s2", "s3")
    store.update_sentence("p1", "s2", image_prompt="edited while it rendered")

    current = store.complete_jobs([done(j3, "s3"), done(j1, "s1"), done(j2, "s2")])

    assert current == [True, True, False]  # in the order given
    for sid, job_id in (("s1", j1), ("s3", j3)):
        sentence = store.get_sentence("p1", sid)
        assert (sentence.status, sentence.image_dirty, sentence.image_file) == (
            "completed",
            False,
            f"images/{sid}.png",
        )
        job = store.get_job(job_id)
        assert (job.status, job.render_s, job.queue_s, job.prompt_id, job.workflow_hash) == (
            "completed",
            1.5,
            0.25,
            f"prompt-{sid}",
            "h",
        )
    s2 = store.get_sentence("p1", "s2")
    assert (s2.status, s2.image_dirty, s2.image_file) == ("pending", True, None)
    assert store.get_job(j2).status == "completed"  # the picture of the old prompt, on its job
    assert store.complete_jobs([]) == []


def test_complete_jobs_with_one_bad_job_records_none(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    j1, j2 = claim(store, "s1", "s2")
    with pytest.raises(NotFoundError, match="no image job 'nope'"):
        store.complete_jobs([done(j1, "s1"), done("nope", "s9")])
    store.complete_jobs([done(j2, "s2")])
    with pytest.raises(StoreError, match=f"image job {j2} is already completed"):
        store.complete_jobs([done(j1, "s1"), done(j2, "s2")])
    with pytest.raises(StoreError, match="same image job twice"):
        store.complete_jobs([done(j1, "s1"), done(j1, "s1")])
    assert store.get_job(j1).status == "running"
    assert store.get_sentence("p1", "s1").status == "generating"


def test_complete_jobs_refuses_two_jobs_of_one_sentence(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    [first] = claim(store, "s1", run_id="r1")
    [second] = claim(store, "s1", run_id="r1")  # its retry: the first is superseded
    with pytest.raises(StoreError, match="two jobs of one sentence"):
        store.complete_jobs([done(first, "s1"), done(second, "s1")])
    assert store.get_job(second).status == "running"


def test_start_jobs_refuses_a_sentence_twice_in_one_group(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(StoreError, match="same sentence twice"):
        store.start_jobs(
            [("p1", "s1", 1), ("p1", "s1", 2)], run_id="r1", attempt=1, stale_after_s=600
        )
    assert store.jobs_for("p1", "s1") == []


def test_a_group_claim_closes_what_each_sentence_left_running(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    [old] = claim(store, "s1", run_id="r1")
    retried = store.start_jobs(
        [("p1", "s1", None), ("p1", "s2", None)], run_id="r1", attempt=2, stale_after_s=600
    )
    assert [job.attempt for job in retried if job is not None] == [2, 2]
    closed = store.get_job(old)
    assert (closed.status, closed.error) == ("failed", "superseded by attempt 2")
    assert [j.status for j in store.jobs_for("p1", "s2")] == ["running"]


def test_picture_hashes_are_the_graphs_of_completed_pictures(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    j1, j2, _ = claim(store, "s1", "s2", "s3")
    assert store.picture_hashes() == set()
    store.complete_jobs([done(j1, "s1", "made"), done(j2, "s2", "made")])
    store.fail_job(store.jobs_for("p1", "s3")[0].id, "boom", final=True)
    assert store.picture_hashes() == {"made"}


def test_a_group_claim_skips_what_another_run_holds_and_what_is_already_made(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    [held] = claim(store, "s2", run_id="other")
    [made] = claim(store, "s3", run_id="other")
    store.complete_jobs([done(made, "s3")])

    jobs = store.start_jobs(
        [("p1", s, 7) for s in ("s1", "s2", "s3")],
        run_id="r1",
        attempt=1,
        stale_after_s=600,
        only_dirty=True,
    )

    assert [job is not None for job in jobs] == [True, False, False]
    assert store.get_job(held).status == "running"  # another live run's: left alone
    assert store.get_sentence("p1", "s1").seed == 7

"""Run locks: a run killed with SIGKILL is seen dead at once and its claims are released with
no attempt spent; a live run, a run that ended, and a run of another machine are left alone;
the doctor names a dead run's claims and releases them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storyboard.doctor import examine
from storyboard.errors import StoreError
from storyboard.run_lock import Holder, RunLock, holder, lock_path, release_dead_runs
from storyboard.store import RELEASED_ERROR, Store
from tests.support.paths import REPO
from tests.support.store import seeded_store

# Claims two sentences under its run, holding the run's lock, says so, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from storyboard.run_lock import RunLock
from storyboard.store import Store

store, run_id = Store(Path(sys.argv[1])), sys.argv[2]
with RunLock(run_id):
    for sentence in ("s1", "s2"):
        assert store.start_job("p1", sentence, run_id=run_id, attempt=1, stale_after_s=3600)
    print("held", flush=True)
    time.sleep(600)
"""


def a_run() -> str:
    return f"test-{uuid.uuid4()}"  # the lock folder is shared by the whole machine


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return seeded_store(tmp_path, sentences=3)


@pytest.fixture
def live(store: Store, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A run in another process holding s1 and s2."""
    run_id = a_run()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "store.duckdb"), run_id],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "held"
        yield run_id, process
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]
        lock_path(run_id).unlink(missing_ok=True)


def test_a_killed_runs_claims_are_released_at_once_with_no_attempt_spent(
    store: Store, live: tuple[str, subprocess.Popen[str]]
) -> None:
    run_id, process = live
    assert holder(run_id) is Holder.LIVE
    assert release_dead_runs(store) == []  # alive: its claims stand
    assert {s.id: s.status for s in store.sentences("p1")}["s1"] == "generating"

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    assert holder(run_id) is Holder.DEAD
    [taken] = release_dead_runs(store)
    assert (taken.run_id, taken.released) == (run_id, 2)
    for sentence in ("s1", "s2"):
        [job] = store.jobs_for("p1", sentence)
        assert (job.status, job.error) == ("released", RELEASED_ERROR)
        again = store.get_sentence("p1", sentence)
        assert again.status == "pending" and again.image_dirty
        # The next run claims it as its first attempt: none was spent.
        assert store.start_job("p1", sentence, run_id="next", attempt=1, stale_after_s=3600)
    assert not lock_path(run_id).exists() and holder(run_id) is Holder.UNKNOWN


def test_the_doctor_names_a_dead_runs_claims_however_young_and_releases_them(
    store: Store, live: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    run_id, process = live
    assert examine(store, tmp_path / "data", stale_after_s=3600) == []  # live and young

    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    found = examine(store, tmp_path / "data", stale_after_s=3600)

    assert {(f.kind, f.sentence_id) for f in found} >= {
        ("dead-run-job", "s1"),
        ("dead-run-job", "s2"),
    }
    assert all(run_id in f.detail for f in found if f.kind == "dead-run-job")
    repaired = examine(store, tmp_path / "data", stale_after_s=3600, repair=True)
    assert repaired and all(f.repaired for f in repaired)
    assert [j.status for j in store.jobs_for("p1", "s1")] == ["released"]
    assert examine(store, tmp_path / "data", stale_after_s=3600) == []


def test_a_run_that_ended_or_is_not_of_this_machine_is_left_to_its_timeout(
    store: Store,
) -> None:
    ended, elsewhere = a_run(), a_run()
    with RunLock(ended) as lock:
        assert store.start_job("p1", "s1", run_id=ended, attempt=1, stale_after_s=3600)
        lock.released()  # it said so, wrongly: the job stays to its timeout
    assert store.start_job("p1", "s2", run_id=elsewhere, attempt=1, stale_after_s=3600)

    assert holder(ended) is Holder.UNKNOWN and holder(elsewhere) is Holder.UNKNOWN
    assert release_dead_runs(store) == []
    assert {j.status for j in store.running_jobs()} == {"running"}
    assert len(store.running_jobs()) == 2


def test_a_run_that_could_not_release_its_claims_leaves_them_to_the_next_run(
    store: Store,
) -> None:
    run_id = a_run()
    with RunLock(run_id):  # the store refused the release (a full disk): never `released()`
        assert store.start_job("p1", "s1", run_id=run_id, attempt=1, stale_after_s=3600)

    assert holder(run_id) is Holder.DEAD
    assert [(t.run_id, t.released) for t in release_dead_runs(store)] == [(run_id, 1)]
    assert store.get_sentence("p1", "s1").status == "pending"


def test_a_run_never_takes_over_its_own_claims(store: Store) -> None:
    run_id = a_run()
    lock_path(run_id).write_text("{}")  # its file, free: as a killed process leaves it
    try:
        assert store.start_job("p1", "s1", run_id=run_id, attempt=1, stale_after_s=3600)

        assert release_dead_runs(store, own=run_id) == []
        assert [j.status for j in store.running_jobs()] == ["running"]
    finally:
        lock_path(run_id).unlink(missing_ok=True)


def test_a_live_run_id_cannot_be_held_twice() -> None:
    run_id = a_run()
    with RunLock(run_id) as lock:
        with pytest.raises(StoreError, match="another live process"):
            RunLock(run_id, wait_s=0.1).__enter__()
        lock.released()
    assert not lock_path(run_id).exists()


class Clock:
    """The store's clock, moved by hand (the doctor's own clock is the real one)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_run_on_another_machine_is_taken_over_once_its_lease_expires(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = Store(tmp_path / "store.duckdb", clock=clock)
    seeded_store(tmp_path, sentences=2).close()
    remote = a_run()  # no lock file here: only its lease can tell
    store.renew_lease(remote, host="gpu-box-2", pid=4242)
    assert store.start_job("p1", "s1", run_id=remote, attempt=1, stale_after_s=3600)

    clock.now += timedelta(seconds=59)
    assert release_dead_runs(store, lease_s=60) == []  # renewed within the lease: alive
    findings = examine(store, tmp_path / "data", stale_after_s=3600, lease_s=60)
    assert findings == []

    clock.now += timedelta(seconds=2)
    found = examine(store, tmp_path / "data", stale_after_s=3600, lease_s=60)
    assert [(f.kind, f.sentence_id) for f in found if f.kind == "dead-run-job"] == [
        ("dead-run-job", "s1")
    ]
    assert "lease expired" in found[0].detail
    [taken] = release_dead_runs(store, lease_s=60)
    assert (taken.run_id, taken.released) == (remote, 1)
    assert [j.status for j in store.jobs_for("p1", "s1")] == ["released"]
    ended = store.lease(remote)
    assert ended is not None and ended.ended_at is not None


def test_a_held_run_lock_renews_its_lease_and_ends_it_once_released(store: Store) -> None:
    run_id = a_run()
    with RunLock(run_id, store=store, lease_s=0.2) as lock:
        first = store.lease(run_id)
        assert first is not None and first.ended_at is None  # before the run's first claim
        assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
        deadline = time.monotonic() + 10
        while store.lease(run_id) == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.02)
        lock.released()
    ended = store.lease(run_id)
    assert ended is not None and ended.ended_at is not None


def test_a_live_run_here_keeps_its_claims_whatever_its_lease_says(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "store.duckdb", clock=clock)
    seeded_store(tmp_path, sentences=1).close()
    run_id = a_run()
    with RunLock(run_id) as lock:  # its renewals stopped (a stuck store), its process did not
        store.renew_lease(run_id, host="here", pid=os.getpid())
        assert store.start_job("p1", "s1", run_id=run_id, attempt=1, stale_after_s=3600)
        clock.now += timedelta(hours=1)

        assert release_dead_runs(store, lease_s=60) == []
        store.release_run(run_id)
        lock.released()

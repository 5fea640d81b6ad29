"""Two real processes on one DuckDB file: lock conflicts are waited out, or fail clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storyboard.errors import StoreLockedError, is_retryable
from storyboard.store import Store
from tests.support.paths import REPO
from tests.support.store import seeded_store

# Each worker claims, edits and completes its own sentence many times, and
# edits a shared one. Its first backoff announces "blocked" so the test knows
# it really met the other process's lock.
WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from storyboard.backoff import default_backoff
    from storyboard.store import Store

    name, db, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    waits = 0

    def backoff(attempt):
        global waits
        waits += 1
        if waits == 1:
            print("blocked", flush=True)
        return default_backoff(attempt)

    store = Store(db, lock_timeout_s=60, backoff=backoff)
    for i in range(rounds):
        job = store.start_job("p1", name, run_id=name, attempt=1, stale_after_s=600)
        assert job is not None
        store.update_sentence("p1", "s3", text=f"{name} was here {i}")
        assert store.complete_job(
            job.id, image_file=f"images/{name}.png", seed=i, workflow_hash="h", duration_s=0.1
        )
    print(f"done {waits}", flush=True)
    """
)

HOLDER = (
    "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True);"
    " sys.stdin.read(); c.close()"
)


@contextmanager
def holding_lock(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that keeps `db` open until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def test_two_processes_take_turns_without_errors(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    rounds = 15
    with holding_lock(store.path):
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), name, str(store.path), str(rounds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            for name in ("s1", "s2")
        ]
        # Both workers are stuck behind the holder before it lets go.
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "blocked"
    outputs = [worker.communicate(timeout=90) for worker in workers]

    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert (worker.returncode, err) == (0, "")
        assert out.startswith("done ")
    for name in ("s1", "s2"):
        jobs = store.jobs_for("p1", name)
        assert [j.status for j in jobs] == ["completed"] * rounds
        assert store.get_sentence("p1", name).status == "completed"
    assert store.get_sentence("p1", "s3").text.endswith(f"was here {rounds - 1}")


def test_lock_held_past_timeout_is_a_clear_retryable_error(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    slept: list[float] = []
    waiting = Store(store.path, lock_timeout_s=0.5, sleep=slept.append, backoff=lambda n: 0.1)

    with holding_lock(store.path) as holder, pytest.raises(StoreLockedError) as caught:
        waiting.status_counts()

    message = str(caught.value)
    assert str(store.path) in message
    assert f"process {holder.pid}" in message
    assert "close it and retry" in message
    # Five sleeps fill the 0.5 s budget; fewer when the tries themselves took real time (the
    # wait is also bounded by the clock, and each try meets the lock in ~25-100 ms).
    assert 1 <= len(slept) <= 5 and set(slept) == {0.1}, slept
    assert is_retryable(caught.value)
    assert waiting.status_counts()["p1"]["total"] == 3


def test_opening_a_locked_store_fails_after_bounded_backoff(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    Store(db)
    slept: list[float] = []
    with holding_lock(db), pytest.raises(StoreLockedError, match="still locked"):
        Store(db, lock_timeout_s=1.0, sleep=slept.append, backoff=lambda n: 0.01 * 2**n)
    # Retry n (from 1) sleeps backoff(n); the next, 0.64 s, would pass the 1 s budget.
    assert slept == [0.01 * 2**n for n in range(1, 6)]

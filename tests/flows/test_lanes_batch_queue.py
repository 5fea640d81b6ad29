"""What a lost lane needs beyond the queue's rules (tests/scheduler): the per-sentence release
(Store.release_job) on a real DuckDB file, and an idle lane woken when work comes back."""

from __future__ import annotations

import threading
from pathlib import Path

from storyboard.scheduler.work_queue import Item, WorkQueue
from storyboard.store import Store
from storyboard.store.ledger import RELEASED_ERROR
from storyboard.store.models import Project, SentenceInput


def items(keys: str) -> list[Item[str]]:
    return [Item(n, f"{n}{key}", key, frozenset({"a", "b"})) for n, key in enumerate(keys)]


def test_wait_wakes_when_an_item_comes_back() -> None:
    queue = WorkQueue(items("x"))
    taken = queue.take("a")
    assert taken is not None
    woke = threading.Event()

    def idle_lane() -> None:
        queue.wait(5.0)
        woke.set()

    waiter = threading.Thread(target=idle_lane)
    waiter.start()
    queue.put_back(taken)
    waiter.join(5)
    assert woke.is_set()
    assert [i.value for i in queue.drain()] == ["0x"]


def test_release_job_puts_one_sentence_back_without_an_error_of_its_own(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.duckdb")
    store.upsert_projects([Project(id="p", name="P")])
    store.upsert_sentences(
        [
            SentenceInput(id=sid, project_id="p", position=n, text=sid, image_prompt=sid)
            for n, sid in enumerate(("s1", "s2"))
        ]
    )
    jobs = [
        store.start_job("p", sid, run_id="run", attempt=1, stale_after_s=60) for sid in ("s1", "s2")
    ]
    assert all(job is not None for job in jobs)

    assert store.release_job("run", "p", "s1") == 1
    assert store.release_job("other-run", "p", "s2") == 0  # another run's job is left alone

    [released] = store.jobs_for("p", "s1")
    assert (released.status, released.error) == ("released", RELEASED_ERROR)
    sentence = store.get_sentence("p", "s1")
    assert (sentence.status, sentence.image_dirty, sentence.last_error) == ("pending", True, None)
    assert store.get_sentence("p", "s2").status == "generating"
    assert store.release_job("run", "p", "s1") == 0  # idempotent

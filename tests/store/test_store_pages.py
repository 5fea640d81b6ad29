"""Listing a project a page at a time: every sentence once, in position order, whatever the
page size; only the dirty ones when asked; the widths of the short columns read up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.errors import StoreError
from storyboard.store import Project, Store
from tests.support.store import sentence


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store.duckdb")
    # Two sentences share a position: the page boundary falls between them with page=2.
    rows = [sentence("a", 1), sentence("b", 2), sentence("c", 2), sentence("dd", 3)]
    rows += [sentence(f"x{i}", 10 + i) for i in range(5)]
    store.upsert(projects=[Project(id="p1", name="one")], sentences=rows)
    return store


@pytest.mark.parametrize("page", [1, 2, 3, 100])
def test_pages_list_every_sentence_once_in_position_order(store: Store, page: int) -> None:
    pages = list(store.sentence_pages("p1", page=page))

    assert [s.id for p in pages for s in p] == [s.id for s in store.sentences("p1")]
    assert all(0 < len(p) <= page for p in pages)


def test_dirty_pages_only_hold_what_needs_a_picture(store: Store) -> None:
    clean = {"b", "x1"}
    for sid in clean:
        job = store.start_job("p1", sid, run_id="r", attempt=1, stale_after_s=60)
        assert job is not None
        assert store.complete_job(
            job.id, image_file=f"images/{sid}.png", seed=1, workflow_hash="h", duration_s=1.0
        )

    listed = [s.id for p in store.sentence_pages("p1", dirty=True, page=2) for s in p]

    assert listed == [s.id for s in store.dirty_sentences("p1")]
    assert listed == ["a", "c", "dd", "x0", "x2", "x3", "x4"]
    assert store.sentence_widths("p1", dirty=True)["image_file"] == 1  # the clean ones left out


def test_the_widths_of_the_short_columns(store: Store) -> None:
    assert store.sentence_widths("p1") == {
        "position": 2,
        "id": 2,
        "status": len("pending"),
        "image_revision": 1,
        "image_file": 1,  # none yet: "-"
    }


def test_a_page_of_no_rows_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="page must be 1 or more"):
        next(store.sentence_pages("p1", page=0))

"""Seeds that stay, in a real DuckDB file: the first claim keeps its seed on the sentence
without invalidating itself, an edit or a re-import without a seed keeps it, an explicit seed
wins, and `reseed` draws new ones and asks for new pictures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from storyboard.errors import NotFoundError, StoreError
from storyboard.seeds import SEED_MAX
from storyboard.store import Store
from tests.support.store import seeded_store, sentence


def _complete(store: Store, sentence_id: str, seed: int) -> bool:
    job = store.start_job("p1", sentence_id, run_id="r1", attempt=1, stale_after_s=600, seed=seed)
    assert job is not None
    return store.complete_job(
        job.id, image_file=f"images/{sentence_id}.png", seed=seed, workflow_hash="h", duration_s=1
    )


def test_a_claim_keeps_its_seed_on_a_seedless_sentence_and_still_wins(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    before = store.get_sentence("p1", "s1")
    assert before.seed is None

    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=123)

    assert job is not None and job.seed == 123
    kept = store.get_sentence("p1", "s1")
    assert kept.seed == 123
    assert kept.image_revision == before.image_revision == job.revision
    # The compare-and-set of this very attempt is not lost to its own seed.
    assert store.complete_job(
        job.id, image_file="images/s1.png", seed=123, workflow_hash="h", duration_s=1
    )
    done = store.get_sentence("p1", "s1")
    assert (done.status, done.image_dirty, done.seed) == ("completed", False, 123)


def test_a_claim_never_replaces_a_stored_seed_and_the_job_names_the_stored_one(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    store.upsert_sentences([sentence("s1", 1, seed=5)])

    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=9)

    assert job is not None and job.seed == 5
    assert store.get_sentence("p1", "s1").seed == 5


def test_a_claim_that_is_refused_stores_no_seed(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600) is not None
    assert store.start_job("p1", "s1", run_id="r2", attempt=1, stale_after_s=600, seed=7) is None
    assert store.get_sentence("p1", "s1").seed is None


def test_a_claim_with_a_seed_out_of_range_is_refused_naming_the_range(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(StoreError, match=str(SEED_MAX)):
        store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=2**63)
    assert store.jobs_for("p1", "s1") == []


def test_a_prompt_edit_keeps_the_seed_and_so_does_an_edit_to_none(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert _complete(store, "s1", 321)

    edited = store.update_sentence("p1", "s1", image_prompt="a stormy harbour")
    assert (edited.seed, edited.image_dirty) == (321, True)
    assert store.update_sentence("p1", "s1", seed=None).seed == 321


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(seed: object = None, prompt: str = "a quiet harbour, picture s1") -> dict[str, object]:
    row: dict[str, object] = {
        "id": "s1",
        "project_id": "p1",
        "position": 1,
        "text": "Sentence s1.",
        "image_prompt": prompt,
    }
    if seed is not None:
        row["seed"] = seed
    return row


def test_a_reimport_without_a_seed_value_keeps_the_stored_seed_and_its_picture(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    assert _complete(store, "s1", 4242)
    revision = store.get_sentence("p1", "s1").image_revision

    # No seed column at all, then an empty seed cell, then JSON with seed null.
    store.import_file("sentences", _write_csv(tmp_path / "no_column.csv", [_row()]))
    store.import_file("sentences", _write_csv(tmp_path / "empty_cell.csv", [_row(seed="")]))
    as_json = tmp_path / "null.json"
    as_json.write_text(json.dumps([{**_row(), "seed": None}]), encoding="utf-8")
    store.import_file("sentences", as_json)

    kept = store.get_sentence("p1", "s1")
    assert kept.seed == 4242
    # Same prompt, same seed: nothing the picture depends on changed.
    assert (kept.image_revision, kept.image_dirty, kept.status) == (revision, False, "completed")


def test_a_reimport_with_a_new_prompt_and_no_seed_keeps_the_seed(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert _complete(store, "s1", 4242)
    store.import_file("sentences", _write_csv(tmp_path / "p.csv", [_row(prompt="a new dawn")]))
    kept = store.get_sentence("p1", "s1")
    assert (kept.seed, kept.image_dirty, kept.image_prompt) == (4242, True, "a new dawn")


def test_an_explicit_seed_in_the_file_still_wins(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert _complete(store, "s1", 4242)
    store.import_file("sentences", _write_csv(tmp_path / "seed.csv", [_row(seed=77)]))
    replaced = store.get_sentence("p1", "s1")
    assert (replaced.seed, replaced.image_dirty) == (77, True)


def test_an_export_and_reimport_round_trip_keeps_the_drawn_seed(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert _complete(store, "s1", SEED_MAX)
    exported = tmp_path / "sentences.parquet"
    store.export("sentences", exported, project_id="p1")
    fresh = seeded_store(tmp_path / "other")
    fresh.import_file("sentences", exported)
    assert fresh.get_sentence("p1", "s1").seed == SEED_MAX


def test_reseed_draws_new_seeds_for_the_named_sentences_and_marks_them_dirty(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    for sentence_id, seed in (("s1", 1), ("s2", 2), ("s3", 3)):
        assert _complete(store, sentence_id, seed)
    draws = iter([1001, 1002])

    seeds = store.reseed("p1", ["s3", "s1"], draw=lambda: next(draws))

    assert seeds == {"s1": 1001, "s3": 1002}
    after = {s.id: s for s in store.sentences("p1")}
    assert {k: (v.seed, v.image_dirty, v.image_revision) for k, v in after.items()} == {
        "s1": (1001, True, 2),
        "s2": (2, False, 1),
        "s3": (1002, True, 2),
    }


def test_reseed_without_ids_covers_the_whole_project_with_distinct_seeds(tmp_path: Path) -> None:
    store = seeded_store(tmp_path, sentences=5)
    seeds = store.reseed("p1")
    assert sorted(seeds) == ["s1", "s2", "s3", "s4", "s5"]
    assert len(set(seeds.values())) == 5
    assert all(0 <= seed <= SEED_MAX for seed in seeds.values())
    assert [s.id for s in store.dirty_sentences("p1")] == sorted(seeds)
    assert {s.id: s.seed for s in store.sentences("p1")} == seeds


def test_reseed_of_a_running_sentence_makes_its_render_lose_the_compare_and_set(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600, seed=1)
    assert job is not None
    store.reseed("p1", ["s1"], draw=lambda: 2)
    assert not store.complete_job(
        job.id, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1
    )
    assert (store.get_sentence("p1", "s1").seed, store.get_sentence("p1", "s1").image_dirty) == (
        2,
        True,
    )


def test_reseed_refuses_unknown_names_and_bad_draws_changing_nothing(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(NotFoundError, match="no sentence 'nope' in project 'p1'"):
        store.reseed("p1", ["s1", "nope"])
    with pytest.raises(NotFoundError, match="no project 'ghost'"):
        store.reseed("ghost")
    with pytest.raises(StoreError, match="outside"):
        store.reseed("p1", ["s1"], draw=lambda: -1)
    assert [s.seed for s in store.sentences("p1")] == [None, None, None]
    assert all(s.image_revision == 1 for s in store.sentences("p1"))

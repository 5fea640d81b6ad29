"""`storyboard reseed`, through the real entry point on a real store file."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.cli import main
from storyboard.store import Store
from tests.support.store import seeded_store


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's directory
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STORYBOARD_DB_PATH", str(tmp_path / "store.duckdb"))
    made = seeded_store(tmp_path)
    for sentence_id in ("s1", "s2", "s3"):
        job = made.start_job("p1", sentence_id, run_id="r", attempt=1, stale_after_s=60, seed=1)
        assert job is not None
        made.complete_job(
            job.id, image_file=f"images/{sentence_id}.png", seed=1, workflow_hash="h", duration_s=1
        )
    return made


def test_reseed_named_sentences_prints_their_exact_new_seeds_and_marks_them_dirty(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reseed", "p1", "s2", "s3"]) == 0
    out = capsys.readouterr().out

    after = {s.id: s for s in store.sentences("p1")}
    assert "2 sentences of p1" in out
    for sentence_id in ("s2", "s3"):
        assert after[sentence_id].image_dirty and after[sentence_id].seed != 1
        assert str(after[sentence_id].seed) in out  # every digit, even above 2**53
    assert (after["s1"].seed, after["s1"].image_dirty) == (1, False)


def test_reseed_without_ids_reseeds_the_whole_project(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reseed", "p1"]) == 0
    assert "3 sentences of p1" in capsys.readouterr().out
    assert [s.id for s in store.dirty_sentences("p1")] == ["s1", "s2", "s3"]


def test_reseed_of_an_unknown_sentence_is_one_line_and_changes_nothing(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reseed", "p1", "s1", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sentence 'nope' in project 'p1'" in err
    assert all(s.seed == 1 and not s.image_dirty for s in store.sentences("p1"))


def test_reseed_without_a_store_says_so_and_creates_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("STORYBOARD_DB_PATH", raising=False)
    assert main(["reseed", "p1"]) == 1
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()

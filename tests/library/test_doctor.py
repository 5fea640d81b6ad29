"""The doctor against a real DuckDB store and real files: what it finds, what it repairs."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from storyboard.cli import main
from storyboard.doctor import ORPHAN_DIR, examine, remove_stale_temp_files
from storyboard.store import STALE_ERROR, Store
from tests.support.store import Clock, seeded_store

STALE_S = 600.0


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 18), "navy").save(buffer, "PNG")
    return buffer.getvalue()


def complete(store: Store, data_dir: Path, sentence_id: str, *, write: bytes | None) -> Path:
    """Render `sentence_id` the way the pipeline records it; write the file if given."""
    job = store.start_job("p1", sentence_id, run_id="run-a", attempt=1, stale_after_s=STALE_S)
    assert job is not None
    path = data_dir / "projects" / "p1" / "images" / f"{sentence_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if write is not None:
        path.write_bytes(write)
    store.complete_job(
        job.id,
        image_file=f"projects/p1/images/{sentence_id}.png",
        seed=1,
        workflow_hash="h",
        duration_s=1.0,
    )
    return path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    return seeded_store(tmp_path, sentences=4, clock=clock)


def test_a_healthy_store_has_no_findings(tmp_path: Path, store: Store, clock: Clock) -> None:
    complete(store, tmp_path, "s1", write=png())
    assert examine(store, tmp_path, stale_after_s=STALE_S, clock=clock) == []


def test_stale_jobs_and_generating_sentences_are_reported_then_reset(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    dead = store.start_job("p1", "s1", run_id="killed", attempt=1, stale_after_s=STALE_S)
    assert dead is not None
    clock.advance(STALE_S + 1)
    live = store.start_job("p1", "s2", run_id="alive", attempt=1, stale_after_s=STALE_S)
    assert live is not None

    report = examine(store, tmp_path, stale_after_s=STALE_S, clock=clock)

    assert {(f.kind, f.sentence_id) for f in report} == {
        ("stale-job", "s1"),
        ("stale-sentence", "s1"),
    }
    assert not any(f.repaired for f in report)
    assert store.get_sentence("p1", "s1").status == "generating"  # report changes nothing

    repaired = examine(store, tmp_path, stale_after_s=STALE_S, repair=True, clock=clock)

    assert all(f.repaired for f in repaired) and len(repaired) == 2
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.image_dirty) == ("pending", True)
    assert store.get_job(dead.id).status == "failed"
    assert store.get_job(dead.id).error == STALE_ERROR
    assert store.get_job(live.id).status == "running"  # a live run is left alone
    assert store.get_sentence("p1", "s2").status == "generating"
    assert examine(store, tmp_path, stale_after_s=STALE_S, clock=clock) == []


def test_a_missing_or_unreadable_image_makes_its_sentence_dirty_again(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    complete(store, tmp_path, "s1", write=None)  # recorded, never written
    complete(store, tmp_path, "s2", write=png()[:40])  # a partial file at the final path
    complete(store, tmp_path, "s3", write=png())  # fine

    report = examine(store, tmp_path, stale_after_s=STALE_S, clock=clock)
    assert {(f.kind, f.sentence_id) for f in report} == {
        ("missing-image", "s1"),
        ("missing-image", "s2"),
    }
    assert "does not exist" in report[0].detail
    assert "not a readable image" in report[1].detail

    examine(store, tmp_path, stale_after_s=STALE_S, repair=True, clock=clock)

    for sentence_id in ("s1", "s2"):
        sentence = store.get_sentence("p1", sentence_id)
        assert (sentence.status, sentence.image_dirty) == ("pending", True)
    assert not store.get_sentence("p1", "s3").image_dirty


def test_orphan_images_are_moved_aside_and_old_temp_files_deleted(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    kept = complete(store, tmp_path, "s1", write=png())
    images = kept.parent
    orphan = images / "gone-sentence.png"
    orphan.write_bytes(png())
    ghost = tmp_path / "projects" / "ghost" / "images" / "x.png"  # a project not in the store
    ghost.parent.mkdir(parents=True)
    ghost.write_bytes(png())
    old_temp = images / ".s2.png.abc123.tmp"
    old_temp.write_bytes(b"half a picture")
    old = time.time() - 2 * STALE_S
    os.utime(old_temp, (old, old))
    young_temp = images / ".s3.png.def456.tmp"  # may belong to a write in progress
    young_temp.write_bytes(b"being written")
    clock.now = clock.now.fromtimestamp(time.time(), clock.now.tzinfo)

    report = examine(store, tmp_path, stale_after_s=STALE_S, clock=clock)
    assert {(f.kind, f.path) for f in report} == {
        ("orphan-image", orphan),
        ("orphan-image", ghost),
        ("temp-file", old_temp),
    }

    examine(store, tmp_path, stale_after_s=STALE_S, repair=True, clock=clock)

    assert not orphan.exists() and not ghost.exists() and not old_temp.exists()
    assert (images.parent / ORPHAN_DIR / "gone-sentence.png").read_bytes() == png()
    assert (ghost.parent.parent / ORPHAN_DIR / "x.png").is_file()
    assert young_temp.exists() and kept.exists()
    assert examine(store, tmp_path, stale_after_s=STALE_S, clock=clock) == []


def test_a_recorded_draft_is_no_orphan_and_a_stray_one_is(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    drafts = tmp_path / "projects" / "p1" / "images" / "drafts"
    drafts.mkdir(parents=True)
    job = store.start_job("p1", "s1", run_id="run-d", attempt=1, stale_after_s=STALE_S, draft=True)
    assert job is not None
    (drafts / "s1.png").write_bytes(png())
    store.complete_job(
        job.id, image_file="images/drafts/s1.png", seed=1, workflow_hash="d", duration_s=1.0
    )
    stray = drafts / "s2.png"
    stray.write_bytes(png())
    old_temp = drafts / ".s3.png.abc123.tmp"
    old_temp.write_bytes(b"half a draft")
    old = time.time() - 2 * STALE_S
    os.utime(old_temp, (old, old))
    clock.now = clock.now.fromtimestamp(time.time(), clock.now.tzinfo)

    report = examine(store, tmp_path, stale_after_s=STALE_S, clock=clock)

    assert {(f.kind, f.path) for f in report} == {
        ("orphan-image", stray),
        ("temp-file", old_temp),
    }
    assert remove_stale_temp_files(tmp_path, min_age_s=STALE_S) == 1


def test_doctor_command_reports_with_exit_1_and_repairs_with_exit_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(data))
    store = seeded_store(data, sentences=2)
    store_path = data / "storyboard.duckdb"
    (data / "store.duckdb").rename(store_path)
    store = Store(store_path)
    assert store.start_job("p1", "s1", run_id="killed", attempt=1, stale_after_s=STALE_S)
    orphan = data / "projects" / "p1" / "images" / "old.png"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(png())

    assert main(["doctor", "--stale-after", "0"]) == 1
    out = capsys.readouterr().out
    assert "stale-job" in out and "p1/s1" in out and "orphan-image" in out
    assert "storyboard doctor --repair" in out

    assert main(["doctor", "--stale-after", "0", "--repair"]) == 0
    assert "repaired" in capsys.readouterr().out
    assert store.get_sentence("p1", "s1").status == "pending"
    assert not orphan.exists()

    assert main(["doctor", "--stale-after", "0"]) == 0
    assert "healthy" in capsys.readouterr().out


def test_doctor_command_refuses_a_negative_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--stale-after", "-1"])
    assert exited.value.code == 2
    assert "'-1' is not a number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "storyboard.duckdb").exists()

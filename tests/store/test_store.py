"""The store against real DuckDB files: schema and migrations, content, revisions, ids.

The image-job ledger has its own tests (test_store_ledger.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from storyboard.errors import InvalidIdError, NotFoundError, StoreError, StoreLockedError
from storyboard.store import (
    MIGRATIONS,
    RELEASED_ERROR,
    SCHEMA_VERSION,
    Character,
    Project,
    Store,
)
from storyboard.store.migrations import Migration, apply_migrations
from tests.support.store import seeded_store, sentence


def test_open_creates_schema_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "store.duckdb"
    Store(path)
    Store(path)
    con = duckdb.connect(str(path))
    try:
        recorded = con.execute("SELECT version, name FROM _migrations ORDER BY version").fetchall()
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    finally:
        con.close()
    assert recorded == [(m.version, m.name) for m in MIGRATIONS]
    assert {"projects", "characters", "sentences", "image_jobs"} <= tables
    assert Store(path).schema_version() == SCHEMA_VERSION


def test_new_migration_is_applied_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    Store(path)
    extra = (
        *MIGRATIONS,
        Migration(SCHEMA_VERSION + 1, "notes", "ALTER TABLE projects ADD COLUMN note VARCHAR"),
    )
    con = duckdb.connect(str(path))
    try:
        from datetime import datetime

        assert apply_migrations(con, datetime(2025, 1, 1), extra) == [SCHEMA_VERSION + 1]
        assert apply_migrations(con, datetime(2025, 1, 1), extra) == []
        with pytest.raises(StoreError, match="newer than this program"):
            apply_migrations(con, datetime(2025, 1, 1), MIGRATIONS)
        renamed = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "other", "SELECT 1"))
        with pytest.raises(StoreError, match="append-only"):
            apply_migrations(con, datetime(2025, 1, 1), renamed)
    finally:
        con.close()


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

    assert store.schema_version() == SCHEMA_VERSION
    old = store.get_job("j1")
    assert (old.duration_s, old.render_s, old.queue_s) == (3.0, None, None)


def test_jobs_released_before_the_released_status_are_migrated_to_it(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations(con, datetime(2025, 1, 1), MIGRATIONS[:2])
    for job_id, error in (("j1", RELEASED_ERROR), ("j2", "ComfyUI failed prompt x")):
        con.execute(
            "INSERT INTO image_jobs (id, project_id, sentence_id, status, attempt, run_id,"
            " started_at, error, revision, render_s) VALUES (?, 'p1', 's1', 'failed', 1, 'r',"
            " TIMESTAMP '2025-01-01 12:00:00', ?, 1, 2.5)",
            [job_id, error],
        )
    con.close()

    store = Store(path)

    assert store.schema_version() == SCHEMA_VERSION
    released, failed = store.get_job("j1"), store.get_job("j2")
    assert (released.status, released.error) == ("released", RELEASED_ERROR)
    assert (failed.status, failed.render_s) == ("failed", 2.5)
    assert [j.id for j in store.jobs_for("p1", "s1")] == ["j1", "j2"]  # the index came back


def test_a_store_made_before_run_leases_gets_the_table_and_keeps_its_running_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    apply_migrations(con, datetime(2025, 1, 1), MIGRATIONS[:3])
    con.execute(
        "INSERT INTO image_jobs (id, project_id, sentence_id, status, attempt, run_id,"
        " started_at, revision) VALUES ('j1', 'p1', 's1', 'running', 1, 'r',"
        " TIMESTAMP '2025-01-01 12:00:00', 1)"
    )
    con.close()

    store = Store(path)

    assert store.schema_version() == SCHEMA_VERSION
    # A run from before leases has none: it is never taken for an expired one.
    assert store.expired_leases(0) == [] and store.lease("r") is None
    assert [j.id for j in store.running_jobs()] == ["j1"]


def test_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"this is not a database" * 300)
    slept: list[float] = []
    with pytest.raises(StoreError, match=str(path)) as caught:
        Store(path, sleep=slept.append)
    assert slept == []  # only a lock conflict is waited out
    assert not isinstance(caught.value, StoreLockedError)


def test_new_sentences_are_dirty_pending_revision_one(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    s1 = store.get_sentence("p1", "s1")
    assert (s1.status, s1.image_dirty, s1.image_revision) == ("pending", True, 1)
    assert s1.created_at.tzinfo is not None
    assert [s.id for s in store.dirty_sentences()] == ["s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_prompt", "a stormy harbour"),
        ("negative_prompt", "blurry"),
        ("seed", 42),
        ("character_ids", ["ana"]),
        ("lora_name", "other.safetensors"),
        ("lora_strength", 0.5),
    ],
)
def test_change_to_image_input_bumps_revision_and_sets_dirty(
    tmp_path: Path, field: str, value: object
) -> None:
    store = seeded_store(tmp_path)
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.complete_job(job.id, image_file="images/s1.png", seed=1, workflow_hash="h", duration_s=1)
    assert store.get_sentence("p1", "s1").image_dirty is False

    edited = store.update_sentence("p1", "s1", **{field: value})

    assert getattr(edited, field) == value
    assert (edited.image_revision, edited.image_dirty, edited.status) == (2, True, "pending")


def test_text_or_same_value_edit_keeps_revision(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    before = store.get_sentence("p1", "s1")
    edited = store.update_sentence("p1", "s1", text="New words.", image_prompt=before.image_prompt)
    assert edited.text == "New words."
    assert edited.image_revision == before.image_revision


def test_update_sentence_refuses_bad_changes(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(StoreError, match="'status'"):
        store.update_sentence("p1", "s1", status="completed")
    with pytest.raises(StoreError, match="field 'seed'"):
        store.update_sentence("p1", "s1", seed="lots")
    with pytest.raises(StoreError, match="unknown character 'zed'"):
        store.update_sentence("p1", "s1", character_ids=["zed"])
    with pytest.raises(NotFoundError, match="s9"):
        store.update_sentence("p1", "s9", text="x")
    assert store.get_sentence("p1", "s1").image_revision == 1


def test_mark_dirty(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    for sid in ("s1", "s2"):
        job = store.start_job("p1", sid, run_id="r", attempt=1, stale_after_s=600)
        assert job is not None
        store.complete_job(job.id, image_file=f"{sid}.png", seed=1, workflow_hash="h", duration_s=1)
    assert store.mark_dirty("p1", ["s1"]) == 1
    assert [s.id for s in store.dirty_sentences()] == ["s1", "s3"]
    assert store.get_sentence("p1", "s1").image_revision == 2
    assert store.mark_dirty("p1") == 3
    with pytest.raises(NotFoundError, match="s9"):
        store.mark_dirty("p1", ["s1", "s9"])
    with pytest.raises(NotFoundError, match="nope"):
        store.mark_dirty("nope")


def test_character_and_project_style_changes_dirty_dependent_sentences(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    store.update_sentence("p1", "s2", character_ids=["ana"])
    store.update_sentence("p1", "s3", lora_name="own.safetensors")
    for sid in ("s1", "s2", "s3"):
        job = store.start_job("p1", sid, run_id="r", attempt=1, stale_after_s=600)
        assert job is not None
        store.complete_job(job.id, image_file=f"{sid}.png", seed=1, workflow_hash="h", duration_s=1)

    store.upsert_characters(
        [Character(id="ana", project_id="p1", name="Ana", reference_images=["refs/ana2.png"])]
    )
    assert [s.id for s in store.dirty_sentences()] == ["s2"]

    store.upsert_projects([Project(id="p1", name="Renamed", lora_name="style.safetensors")])
    assert [s.id for s in store.dirty_sentences()] == ["s2"]
    store.upsert_projects([Project(id="p1", name="Renamed", lora_name="new.safetensors")])
    assert [s.id for s in store.dirty_sentences()] == ["s1", "s2"]


def test_status_counts(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    store.upsert_projects([Project(id="empty", name="Nothing yet")])
    job = store.start_job("p1", "s1", run_id="r", attempt=1, stale_after_s=600)
    assert job is not None
    assert store.status_counts() == {
        "empty": {
            "pending": 0,
            "generating": 0,
            "completed": 0,
            "failed": 0,
            "dirty": 0,
            "drafts": 0,
            "total": 0,
        },
        "p1": {
            "pending": 2,
            "generating": 1,
            "completed": 0,
            "failed": 0,
            "dirty": 3,
            "drafts": 0,
            "total": 3,
        },
    }


def test_reads_and_characters_for(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    assert store.get_project("p1").lora_name == "style.safetensors"
    assert [c.id for c in store.characters_for("p1", ["ben", "ana"])] == ["ben", "ana"]
    assert store.characters_for("p1", []) == []
    with pytest.raises(NotFoundError, match="'zed'"):
        store.characters_for("p1", ["zed"])
    with pytest.raises(NotFoundError):
        store.get_project("p2")
    with pytest.raises(NotFoundError):
        store.get_job("0123abcd")


def test_render_inputs_read_sentence_project_and_characters_together(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    store.update_sentence("p1", "s2", character_ids=["ben", "ana"])
    inputs = store.render_inputs("p1", "s2")
    assert inputs.sentence.image_revision == store.get_sentence("p1", "s2").image_revision == 2
    assert inputs.project.lora_name == "style.safetensors"
    assert [c.id for c in inputs.characters] == ["ben", "ana"]
    assert store.render_inputs("p1", "s1").characters == []
    with pytest.raises(NotFoundError, match="'s9'"):
        store.render_inputs("p1", "s9")
    with pytest.raises(InvalidIdError):
        store.render_inputs("p1", "../s1")


def test_the_batch_list_carries_what_render_inputs_reads_in_one_call(tmp_path: Path) -> None:
    store = seeded_store(tmp_path, sentences=4)
    store.update_sentence("p1", "s2", character_ids=["ben", "ana"])
    store.upsert(
        projects=[Project(id="p2", name="Two")], sentences=[sentence("t1", 1, project_id="p2")]
    )
    with duckdb.connect(str(tmp_path / "store.duckdb")) as con:  # a character since removed
        con.execute("UPDATE sentences SET character_ids = ['zed'] WHERE id = 's3'")

    listed = store.dirty_render_inputs()

    assert [s.id for s, _ in listed] == ["s1", "s2", "s3", "s4", "t1"]
    for found, inputs in listed:
        if found.id == "s3":
            assert inputs is None  # left to render_inputs, whose error fails s3 alone
            with pytest.raises(NotFoundError, match="'zed'"):
                store.render_inputs("p1", "s3")
        else:
            assert inputs == store.render_inputs(found.project_id, found.id)
    assert [s.id for s, _ in store.dirty_render_inputs("p1", limit=2)] == ["s1", "s2"]
    with pytest.raises(StoreError, match="limit"):
        store.dirty_render_inputs(limit=-1)
    with pytest.raises(InvalidIdError):
        store.dirty_render_inputs("../p1")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 65, "bad id"])
def test_every_api_refuses_unsafe_ids(tmp_path: Path, bad: str) -> None:
    store = seeded_store(tmp_path)
    calls = [
        lambda: store.get_project(bad),
        lambda: store.get_sentence("p1", bad),
        lambda: store.get_sentence(bad, "s1"),
        lambda: store.sentences(bad),
        lambda: store.dirty_sentences(bad),
        lambda: store.characters_for("p1", [bad]),
        lambda: store.update_sentence("p1", bad, text="x"),
        lambda: store.mark_dirty("p1", [bad]),
        lambda: store.start_job(bad, "s1", run_id="r", attempt=1, stale_after_s=1),
        lambda: store.jobs_for("p1", bad),
        lambda: store.fail_job(bad, "e", final=True),
        lambda: store.upsert_sentences([sentence(bad, 1)]),
    ]
    for call in calls:
        with pytest.raises((InvalidIdError, ValueError)):
            call()

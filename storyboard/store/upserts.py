"""Upserts by id, run inside the store's transaction.

Rows arrive validated by pydantic; here they are checked against what is
already stored (the project exists, the characters a sentence names exist),
and every change to what a picture depends on bumps the image revision of the
sentences concerned. Any problem raises ImportDataError naming the row, and
the caller's transaction rolls everything back.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb

from storyboard.errors import ImportDataError
from storyboard.store.models import IMAGE_INPUTS, Character, ImportResult, Project, SentenceInput

# Marks a sentence as needing a new picture. A sentence being generated keeps
# that status: the running job will lose its compare-and-set and leave it dirty.
BUMP = (
    "image_revision = image_revision + 1, image_dirty = TRUE, "
    "status = CASE WHEN status = 'generating' THEN 'generating' ELSE 'pending' END"
)


def _row_error(row: int, field: str, message: str) -> ImportDataError:
    return ImportDataError(f"row {row}, field '{field}': {message}")


def _project_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in con.execute("SELECT id FROM projects").fetchall()}


def _require_project(known: set[str], project_id: str, row: int) -> None:
    if project_id not in known:
        raise _row_error(
            row, "project_id", f"unknown project {project_id!r}: import the project first"
        )


def upsert_projects(
    con: duckdb.DuckDBPyConnection, rows: Sequence[Project], now: datetime
) -> ImportResult:
    existing = {
        row[0]: (row[1], row[2])
        for row in con.execute("SELECT id, lora_name, lora_strength FROM projects").fetchall()
    }
    inserted = 0
    for project in rows:
        values = [project.name, project.lora_name, project.lora_strength, now]
        if project.id not in existing:
            con.execute(
                "INSERT INTO projects (name, lora_name, lora_strength, created_at, updated_at, id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [*values, now, project.id],
            )
            inserted += 1
            continue
        con.execute(
            "UPDATE projects SET name = ?, lora_name = ?, lora_strength = ?, updated_at = ?"
            " WHERE id = ?",
            [*values, project.id],
        )
        if existing[project.id] != (project.lora_name, project.lora_strength):
            # Sentences without their own LoRA use the project's default.
            con.execute(
                f"UPDATE sentences SET {BUMP}, updated_at = ?"
                " WHERE project_id = ? AND lora_name IS NULL",
                [now, project.id],
            )
    return ImportResult(kind="projects", inserted=inserted, updated=len(rows) - inserted)


def upsert_characters(
    con: duckdb.DuckDBPyConnection, rows: Sequence[Character], now: datetime
) -> ImportResult:
    projects = _project_ids(con)
    existing = {
        (row[0], row[1]): (row[2], row[3], row[4])
        for row in con.execute(
            "SELECT project_id, id, reference_images, lora_name, lora_strength FROM characters"
        ).fetchall()
    }
    inserted = 0
    for number, character in enumerate(rows, start=1):
        _require_project(projects, character.project_id, number)
        key = (character.project_id, character.id)
        looks = (character.reference_images, character.lora_name, character.lora_strength)
        values = [character.name, *looks, now, character.project_id, character.id]
        if key not in existing:
            con.execute(
                "INSERT INTO characters (name, reference_images, lora_name, lora_strength,"
                " updated_at, project_id, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [*values, now],
            )
            inserted += 1
            continue
        con.execute(
            "UPDATE characters SET name = ?, reference_images = ?, lora_name = ?,"
            " lora_strength = ?, updated_at = ? WHERE project_id = ? AND id = ?",
            values,
        )
        if existing[key] != looks:
            con.execute(
                f"UPDATE sentences SET {BUMP}, updated_at = ?"
                " WHERE project_id = ? AND list_contains(character_ids, ?)",
                [now, character.project_id, character.id],
            )
    return ImportResult(kind="characters", inserted=inserted, updated=len(rows) - inserted)


def characters_by_project(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    known: dict[str, set[str]] = {}
    for project_id, character_id in con.execute("SELECT project_id, id FROM characters").fetchall():
        known.setdefault(project_id, set()).add(character_id)
    return known


def check_characters(
    known: dict[str, set[str]], sentence: SentenceInput, row: int | None = None
) -> None:
    missing = [c for c in sentence.character_ids if c not in known.get(sentence.project_id, ())]
    if missing:
        message = (
            f"unknown character {missing[0]!r} in project {sentence.project_id!r}: "
            "import the characters first"
        )
        if row is None:
            raise ImportDataError(f"sentence {sentence.id!r}: {message}")
        raise _row_error(row, "character_ids", message)


_SENTENCE_FIELDS = ("position", "text", *IMAGE_INPUTS)


def upsert_sentences(
    con: duckdb.DuckDBPyConnection, rows: Sequence[SentenceInput], now: datetime
) -> ImportResult:
    if not rows:
        return ImportResult(kind="sentences", inserted=0, updated=0)
    projects = _project_ids(con)
    characters = characters_by_project(con)
    columns = ", ".join(_SENTENCE_FIELDS)
    existing = {
        (row[0], row[1]): row[2:]
        for row in con.execute(
            f"SELECT project_id, id, {columns} FROM sentences WHERE list_contains(?, project_id)",
            [sorted({s.project_id for s in rows})],
        ).fetchall()
    }
    inserts, updates, bumps = [], [], []
    for number, sentence in enumerate(rows, start=1):
        _require_project(projects, sentence.project_id, number)
        check_characters(characters, sentence, number)
        values = [getattr(sentence, name) for name in _SENTENCE_FIELDS]
        key = [sentence.project_id, sentence.id]
        before = existing.get((sentence.project_id, sentence.id))
        if before is None:
            inserts.append([*values, now, now, *key])
            continue
        updates.append([*values, now, *key])
        if tuple(before[2:]) != tuple(values[2:]):
            bumps.append([now, *key])
    assignments = ", ".join(f"{name} = ?" for name in _SENTENCE_FIELDS)
    if inserts:
        con.executemany(
            f"INSERT INTO sentences ({columns}, created_at, updated_at, project_id, id)"
            f" VALUES ({', '.join('?' * (len(_SENTENCE_FIELDS) + 4))})",
            inserts,
        )
    if updates:
        con.executemany(
            f"UPDATE sentences SET {assignments}, updated_at = ? WHERE project_id = ? AND id = ?",
            updates,
        )
    if bumps:
        con.executemany(
            f"UPDATE sentences SET {BUMP}, updated_at = ? WHERE project_id = ? AND id = ?", bumps
        )
    return ImportResult(kind="sentences", inserted=len(inserts), updated=len(updates))

"""Upserts by id, run inside the store's transaction.

Rows arrive validated by pydantic; here they are checked against what is
already stored (the project exists, the characters a sentence names exist),
and every change to what a picture depends on bumps the image revision of the
sentences concerned. A sentence row without a seed keeps the seed already stored
(given earlier, or drawn at its first render): a seed is replaced, never cleared.
Any problem raises ImportDataError naming the row, and the caller's transaction
rolls everything back.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime

import duckdb
import pyarrow as pa

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


# The longest image prompt a sentence may carry (STORYBOARD_MAX_PROMPT_CHARS' default). FLUX.2's
# text encoder reads about 512 tokens (a few thousand characters); far longer text only grows
# every graph, /history and /queue answer that carries it.
MAX_PROMPT_CHARS = 32_768


def check_prompt(sentence: SentenceInput, limit: int, row: int | None = None) -> None:
    size = len(sentence.image_prompt)
    if size <= limit:
        return
    message = (
        f"the image prompt is {size:,} characters, over the limit of {limit:,}"
        " (STORYBOARD_MAX_PROMPT_CHARS): FLUX.2's text encoder reads about 512 tokens, so"
        " shorten it"
    )
    if row is None:
        raise ImportDataError(f"sentence {sentence.id!r}: {message}")
    raise _row_error(row, "image_prompt", message)


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
_INCOMING = pa.schema(
    [
        ("project_id", pa.string()),
        ("id", pa.string()),
        ("position", pa.int32()),
        ("text", pa.string()),
        ("image_prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("character_ids", pa.list_(pa.string())),
        ("lora_name", pa.string()),
        ("lora_strength", pa.float64()),
        ("seed", pa.int64()),
        ("is_new", pa.bool_()),
        ("bump", pa.bool_()),
    ]
)
_COLUMNS = ", ".join(_SENTENCE_FIELDS)
_SEED = _SENTENCE_FIELDS.index("seed")
# Set-based writes from one registered Arrow table: row-by-row executemany
# takes seconds for a few thousand sentences.
_INSERT_SENTENCES = (
    f"INSERT INTO sentences ({_COLUMNS}, project_id, id, created_at, updated_at)"
    f" SELECT {_COLUMNS}, project_id, id, $now, $now FROM incoming WHERE is_new"
)
_UPDATE_SENTENCES = (
    "UPDATE sentences SET "
    + ", ".join(f"{name} = i.{name}" for name in _SENTENCE_FIELDS)
    + ", updated_at = $now,"
    " image_revision = sentences.image_revision + CASE WHEN i.bump THEN 1 ELSE 0 END,"
    " image_dirty = sentences.image_dirty OR i.bump,"
    " status = CASE WHEN i.bump AND sentences.status <> 'generating' THEN 'pending'"
    " ELSE sentences.status END"
    " FROM incoming i WHERE sentences.project_id = i.project_id AND sentences.id = i.id"
    " AND NOT i.is_new"
)


def upsert_sentences(
    con: duckdb.DuckDBPyConnection,
    rows: Sequence[SentenceInput],
    now: datetime,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> ImportResult:
    if not rows:
        return ImportResult(kind="sentences", inserted=0, updated=0)
    projects = _project_ids(con)
    characters = characters_by_project(con)
    existing = {
        (row[0], row[1]): row[2:]
        for row in con.execute(
            f"SELECT project_id, id, {_COLUMNS} FROM sentences WHERE list_contains(?, project_id)",
            [sorted({s.project_id for s in rows})],
        ).fetchall()
    }
    incoming = []
    for number, sentence in enumerate(rows, start=1):
        _require_project(projects, sentence.project_id, number)
        check_characters(characters, sentence, number)
        check_prompt(sentence, max_prompt_chars, number)
        row = sentence.model_dump(include={"project_id", "id", *_SENTENCE_FIELDS})
        before = existing.get((sentence.project_id, sentence.id))
        if before is not None and row["seed"] is None:
            # An export without seeds, or a spreadsheet that never had them, must not throw
            # away the composition the first render chose.
            row["seed"] = before[_SEED]
        looks = tuple(row[name] for name in IMAGE_INPUTS)
        row["is_new"] = before is None
        row["bump"] = before is not None and tuple(before[2:]) != looks
        incoming.append(row)
    con.register("incoming", pa.Table.from_pylist(incoming, schema=_INCOMING))
    try:
        con.execute(_INSERT_SENTENCES, {"now": now})
        con.execute(_UPDATE_SENTENCES, {"now": now})
    finally:
        # After a write conflict the transaction is aborted and unregistering fails too: the
        # conflict (retryable) is the error to report, not that.
        with contextlib.suppress(duckdb.Error):
            con.unregister("incoming")
    inserted = sum(row["is_new"] for row in incoming)
    return ImportResult(kind="sentences", inserted=inserted, updated=len(incoming) - inserted)

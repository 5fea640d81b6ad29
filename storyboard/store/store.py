"""The sentence store: projects, characters and sentences in one DuckDB file.

`Store` is the content half (reads, upserts, imports and exports, edits that
make a picture dirty) over the image-job ledger it inherits (`ledger`), so one
object serves a store file's content and its jobs. Every public method is one
transaction (see `connection`): because one process at a time owns the file
and a method is one transaction, a claim (`start_job`) is atomic across
processes; threads of one process each get their own connection, and a
write-write conflict between them is retried like a lock.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from storyboard.errors import NotFoundError, StoreError
from storyboard.ids import validate_id
from storyboard.seeds import check_seed, random_seed
from storyboard.store import interchange, upserts
from storyboard.store.connection import Connection
from storyboard.store.ledger import JobLedger
from storyboard.store.models import (
    SENTENCE_STATUSES,
    Character,
    ImportResult,
    Project,
    RenderInputs,
    Sentence,
    SentenceInput,
)
from storyboard.store.tables import SENTENCE_COLUMNS

_CHARACTER_COLUMNS = ", ".join(Character.model_fields)
_PROJECT_COLUMNS = ", ".join(Project.model_fields)

_EDITABLE = frozenset(SentenceInput.model_fields) - {"id", "project_id"}


# Rows per page of `Store.sentence_pages`.
PAGE_ROWS = 2000


# A sentence a draft pass draws: no draft, or one of an older revision (Sentence.draft_stale).
_DRAFT_STALE = "(draft_file IS NULL OR draft_revision IS DISTINCT FROM image_revision)"


def _dirty_query(
    project_id: str | None, limit: int | None, force: bool, draft: bool = False
) -> tuple[str, list[Any]]:
    """The sentences that need a picture (a draft with `draft`; all with `force`), by
    project and position."""
    if project_id is not None:
        validate_id(project_id, "project id")
    if limit is not None and limit < 0:
        raise StoreError(f"limit must be 0 or more, got {limit}")
    needed = _DRAFT_STALE if draft else "image_dirty"
    sql = (
        f"SELECT {SENTENCE_COLUMNS} FROM sentences"
        f" WHERE (? OR {needed}) AND (? IS NULL OR project_id = ?)"
        " ORDER BY project_id, position, id LIMIT ?"
    )
    return sql, [force, project_id, project_id, limit]


class Store(JobLedger):
    """The sentence table, its projects and characters, and (inherited) its image jobs.

    Reference image and image file paths are stored relative to the project's
    directory, `data/projects/{project}/`.
    """

    def __init__(
        self, path: Path, *, max_prompt_chars: int = upserts.MAX_PROMPT_CHARS, **options: Any
    ) -> None:
        """`max_prompt_chars`: the longest image prompt a write accepts (an import, an edit,
        an event's prompt); `options`: the file's (see Tables)."""
        self.max_prompt_chars = max_prompt_chars
        super().__init__(path, **options)

    # -- reading ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        return self._run(
            lambda con: int(con.execute("SELECT max(version) FROM _migrations").fetchall()[0][0])
        )

    def projects(self) -> list[Project]:
        return self._run(
            lambda con: self._rows(
                con, Project, f"SELECT {_PROJECT_COLUMNS} FROM projects ORDER BY id", []
            )
        )

    def get_project(self, project_id: str) -> Project:
        validate_id(project_id, "project id")
        found = self._run(
            lambda con: self._rows(
                con, Project, f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?", [project_id]
            )
        )
        if not found:
            raise NotFoundError(f"no project {project_id!r}")
        return found[0]  # type: ignore[no-any-return]

    def characters(self, project_id: str) -> list[Character]:
        validate_id(project_id, "project id")
        return self._run(
            lambda con: self._rows(
                con,
                Character,
                f"SELECT {_CHARACTER_COLUMNS} FROM characters WHERE project_id = ? ORDER BY id",
                [project_id],
            )
        )

    def characters_for(self, project_id: str, ids: Iterable[str]) -> list[Character]:
        """The named characters of a project, in the order asked."""
        wanted = [validate_id(i, "character id") for i in ids]
        if not wanted:
            return []
        return self._run(lambda con: self._characters_for(con, project_id, wanted))

    def render_inputs(self, project_id: str, sentence_id: str) -> RenderInputs:
        """A sentence with its project and characters: one open, one consistent snapshot."""
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")

        def op(con: Connection) -> RenderInputs:
            sentence = self._sentence(con, project_id, sentence_id)
            projects = self._rows(
                con, Project, f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?", [project_id]
            )
            if not projects:
                raise NotFoundError(f"no project {project_id!r}")
            characters = self._characters_for(con, project_id, sentence.character_ids)
            return RenderInputs(sentence=sentence, project=projects[0], characters=characters)

        return self._run(op)

    def _characters_for(
        self, con: Connection, project_id: str, wanted: Sequence[str]
    ) -> list[Character]:
        by_id: dict[str, Character] = {
            c.id: c
            for c in self._rows(
                con,
                Character,
                f"SELECT {_CHARACTER_COLUMNS} FROM characters WHERE project_id = ?",
                [project_id],
            )
        }
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise NotFoundError(f"no character {missing[0]!r} in project {project_id!r}")
        return [by_id[i] for i in wanted]

    def get_sentence(self, project_id: str, sentence_id: str) -> Sentence:
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")
        return self._run(lambda con: self._sentence(con, project_id, sentence_id))

    def sentences(self, project_id: str) -> list[Sentence]:
        validate_id(project_id, "project id")
        return self._run(
            lambda con: self._rows(
                con,
                Sentence,
                f"SELECT {SENTENCE_COLUMNS} FROM sentences WHERE project_id = ?"
                " ORDER BY position, id",
                [project_id],
            )
        )

    def sentence_pages(
        self, project_id: str, *, dirty: bool = False, page: int | None = None
    ) -> Iterator[list[Sentence]]:
        """The project's sentences (only those that need a picture with `dirty`) in position
        order, `page` at a time. Each page is one short store call that starts after the last
        one's row, so a slow reader (`| less`) never holds the file and memory stays flat
        whatever the count."""
        validate_id(project_id, "project id")
        page = PAGE_ROWS if page is None else page
        if page < 1:
            raise StoreError(f"page must be 1 or more, got {page}")
        sql = (
            f"SELECT {SENTENCE_COLUMNS} FROM sentences WHERE project_id = ?"
            " AND (NOT ? OR image_dirty)"
            " AND (? IS NULL OR position > ? OR (position = ? AND id > ?))"
            " ORDER BY position, id LIMIT ?"
        )
        after: tuple[int, str] | tuple[None, None] = (None, None)
        while True:
            position, sentence_id = after
            params = [project_id, dirty, position, position, position, sentence_id, page]
            rows: list[Sentence] = self._run(
                partial(self._rows, model=Sentence, sql=sql, params=params)
            )
            if rows:
                yield rows
            if len(rows) < page:
                return
            after = (rows[-1].position, rows[-1].id)

    def sentence_widths(self, project_id: str, *, dirty: bool = False) -> dict[str, int]:
        """The widest text of each short column of `sentence_pages`' rows (position, id,
        status, image_revision, image_file), for a listing aligned before its rows are read."""
        validate_id(project_id, "project id")
        columns = ("position", "id", "status", "image_revision", "image_file")
        widest = ", ".join(f"max(length(coalesce(CAST({c} AS VARCHAR), '-')))" for c in columns)
        sql = f"SELECT {widest} FROM sentences WHERE project_id = ? AND (NOT ? OR image_dirty)"
        found = self._run(lambda con: con.execute(sql, [project_id, dirty]).fetchone())
        return {c: int(w or 0) for c, w in zip(columns, found or (), strict=False)}

    def dirty_sentences(
        self, project_id: str | None = None, limit: int | None = None, force: bool = False
    ) -> list[Sentence]:
        """Sentences that need a picture (all of them with `force`), by project and position."""
        sql, params = _dirty_query(project_id, limit, force)
        return self._run(lambda con: self._rows(con, Sentence, sql, params))

    def dirty_render_inputs(
        self,
        project_id: str | None = None,
        limit: int | None = None,
        force: bool = False,
        *,
        draft: bool = False,
    ) -> list[tuple[Sentence, RenderInputs | None]]:
        """`dirty_sentences`, each with its project and characters (`render_inputs`), in one
        transaction: a batch reads what it renders once, not once per sentence. None for a
        sentence naming a character its project lacks: `render_inputs` of that sentence
        raises the error, so it fails alone. With `draft`: the sentences whose draft is
        missing or stale instead."""
        sql, params = _dirty_query(project_id, limit, force, draft)

        def op(con: Connection) -> list[tuple[Sentence, RenderInputs | None]]:
            sentences: list[Sentence] = self._rows(con, Sentence, sql, params)
            wanted = {s.project_id for s in sentences}
            projects = {
                p.id: p
                for p in self._rows(con, Project, f"SELECT {_PROJECT_COLUMNS} FROM projects", [])
                if p.id in wanted
            }
            cast: dict[str, dict[str, Character]] = {pid: {} for pid in wanted}
            for c in self._rows(con, Character, f"SELECT {_CHARACTER_COLUMNS} FROM characters", []):
                if c.project_id in cast:
                    cast[c.project_id][c.id] = c
            found: list[tuple[Sentence, RenderInputs | None]] = []
            for sentence in sentences:
                by_id = cast[sentence.project_id]
                if any(i not in by_id for i in sentence.character_ids):
                    found.append((sentence, None))
                    continue
                inputs = RenderInputs(
                    sentence=sentence,
                    project=projects[sentence.project_id],
                    characters=[by_id[i] for i in sentence.character_ids],
                )
                found.append((sentence, inputs))
            return found

        return self._run(op)

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Per project: sentences by status, plus `dirty`, `drafts` (a draft of the current
        revision) and `total`."""
        sql = (
            "SELECT p.id, s.status, count(s.id), count(s.id) FILTER (WHERE s.image_dirty),"
            " count(s.id) FILTER (WHERE s.draft_file IS NOT NULL"
            " AND s.draft_revision = s.image_revision)"
            " FROM projects p LEFT JOIN sentences s ON s.project_id = p.id"
            " GROUP BY ALL ORDER BY p.id"
        )
        rows = self._run(lambda con: con.execute(sql).fetchall())
        counts: dict[str, dict[str, int]] = {}
        for project_id, status, count, dirty, drafts in rows:
            entry = counts.setdefault(
                project_id,
                {**dict.fromkeys(SENTENCE_STATUSES, 0), "dirty": 0, "drafts": 0, "total": 0},
            )
            if status is not None:
                entry[status] += count
                entry["dirty"] += dirty
                entry["drafts"] += drafts
                entry["total"] += count
        return counts

    # -- writing content --------------------------------------------------------------------

    def upsert_projects(self, rows: Sequence[Project]) -> ImportResult:
        return self._run(lambda con: upserts.upsert_projects(con, rows, self._now()))

    def upsert_characters(self, rows: Sequence[Character]) -> ImportResult:
        return self._run(lambda con: upserts.upsert_characters(con, rows, self._now()))

    def upsert_sentences(self, rows: Sequence[SentenceInput]) -> ImportResult:
        return self._run(
            lambda con: upserts.upsert_sentences(con, rows, self._now(), self.max_prompt_chars)
        )

    def upsert(
        self,
        *,
        projects: Sequence[Project] = (),
        characters: Sequence[Character] = (),
        sentences: Sequence[SentenceInput] = (),
    ) -> list[ImportResult]:
        """Upsert projects, then characters, then sentences, in one transaction."""

        def op(con: Connection) -> list[ImportResult]:
            now = self._now()
            return [
                upserts.upsert_projects(con, projects, now),
                upserts.upsert_characters(con, characters, now),
                upserts.upsert_sentences(con, sentences, now, self.max_prompt_chars),
            ]

        return self._run(op)

    def import_file(
        self, kind: interchange.Table, path: Path, *, fmt: str | None = None
    ) -> ImportResult:
        """Upsert the rows of a Parquet, CSV or JSON file, all or nothing."""
        rows = interchange.load(kind, path, fmt)
        now = self._now()

        def op(con: Connection) -> ImportResult:
            if kind == "projects":
                return upserts.upsert_projects(con, rows, now)
            if kind == "characters":
                return upserts.upsert_characters(con, rows, now)
            return upserts.upsert_sentences(con, rows, now, self.max_prompt_chars)

        try:
            return self._run(op)
        except StoreError as exc:
            raise type(exc)(interchange.one_line(f"{path}: {exc}")) from exc

    def export(self, kind: interchange.Table, path: Path, *, project_id: str | None = None) -> int:
        """Write one table (optionally one project's rows) in the format the path's suffix
        names (Parquet, CSV, JSON, JSON lines); return the row count."""
        if kind not in interchange.TABLES:
            raise StoreError(f"unknown kind {kind!r}: use one of {', '.join(interchange.TABLES)}")
        rows: list[Any]
        if kind == "projects":
            rows = [p for p in self.projects() if project_id in (None, p.id)]
        elif project_id is not None:
            rows = (
                self.characters(project_id) if kind == "characters" else self.sentences(project_id)
            )
        else:
            rows = [
                row
                for p in self.projects()
                for row in (self.characters(p.id) if kind == "characters" else self.sentences(p.id))
            ]
        interchange.write_rows(kind, rows, path)
        return len(rows)

    def update_sentence(self, project_id: str, sentence_id: str, **changes: Any) -> Sentence:
        """Edit a sentence; a change to what its picture depends on makes it dirty.

        `seed=None` keeps the stored seed (see upserts); `reseed` draws a new one.
        """
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")
        unknown = sorted(set(changes) - _EDITABLE)
        if unknown:
            raise StoreError(f"cannot change {unknown[0]!r}: editable are {sorted(_EDITABLE)}")

        def op(con: Connection) -> Sentence:
            now = self._now()
            current = self._sentence(con, project_id, sentence_id)
            base = current.model_dump(include=set(SentenceInput.model_fields))
            try:
                edited = SentenceInput.model_validate({**base, **changes})
            except ValidationError as exc:
                raise StoreError(
                    f"invalid change to sentence {sentence_id!r}: {interchange.describe(exc)}"
                ) from exc
            upserts.check_characters(upserts.characters_by_project(con), edited)
            upserts.check_prompt(edited, self.max_prompt_chars)
            upserts.upsert_sentences(con, [edited], now, self.max_prompt_chars)
            return self._sentence(con, project_id, sentence_id)

        return self._run(op)

    def mark_dirty(self, project_id: str, sentence_ids: Iterable[str] | None = None) -> int:
        """Ask for new pictures (all of a project's, or the given sentences'); return the count."""
        validate_id(project_id, "project id")
        ids = _sentence_ids(sentence_ids)

        def op(con: Connection) -> int:
            targets = _targets(con, project_id, ids)
            con.execute(
                f"UPDATE sentences SET {upserts.BUMP}, updated_at = ?"
                " WHERE project_id = ? AND list_contains(?::VARCHAR[], id)",
                [self._now(), project_id, targets],
            )
            return len(targets)

        return self._run(op)

    def reseed(
        self,
        project_id: str,
        sentence_ids: Iterable[str] | None = None,
        *,
        draw: Callable[[], int] = random_seed,
    ) -> dict[str, int]:
        """New seeds (all of a project's sentences, or the given ones'), each drawn with
        `draw`; the sentences become dirty. Returns the new seed of each sentence."""
        validate_id(project_id, "project id")
        ids = _sentence_ids(sentence_ids)

        def op(con: Connection) -> dict[str, int]:
            targets = _targets(con, project_id, ids)
            try:
                seeds = {sentence_id: check_seed(draw()) for sentence_id in targets}
            except ValueError as exc:
                raise StoreError(str(exc)) from exc
            now = self._now()
            for sentence_id, seed in seeds.items():
                con.execute(
                    f"UPDATE sentences SET seed = ?, {upserts.BUMP}, updated_at = ?"
                    " WHERE project_id = ? AND id = ?",
                    [seed, now, project_id, sentence_id],
                )
            return seeds

        return self._run(op)


def _sentence_ids(sentence_ids: Iterable[str] | None) -> list[str] | None:
    return None if sentence_ids is None else [validate_id(s, "sentence id") for s in sentence_ids]


def _targets(con: Connection, project_id: str, ids: list[str] | None) -> list[str]:
    """The sentence ids asked for (all of the project's with None), each known, sorted."""
    known = {
        r[0]
        for r in con.execute(
            "SELECT id FROM sentences WHERE project_id = ?", [project_id]
        ).fetchall()
    }
    if (
        ids is None
        and not con.execute("SELECT 1 FROM projects WHERE id = ?", [project_id]).fetchall()
    ):
        raise NotFoundError(f"no project {project_id!r}")
    missing = [s for s in ids or () if s not in known]
    if missing:
        raise NotFoundError(f"no sentence {missing[0]!r} in project {project_id!r}")
    return sorted(known) if ids is None else sorted(set(ids))

"""The sentence store: one DuckDB file, opened for one transaction at a time.

Every public method is one transaction (see `connection`). Because one
process at a time owns the file and a method is one transaction, `start_job`
is atomic across processes; threads of one process each get their own
connection, and a write-write conflict between them is retried like a lock.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from storyboard.errors import NotFoundError, StoreError
from storyboard.ids import validate_id
from storyboard.store import interchange, upserts
from storyboard.store.connection import Connection, Database, default_backoff
from storyboard.store.migrations import apply_migrations
from storyboard.store.models import (
    SENTENCE_STATUSES,
    Character,
    ImageJob,
    ImportResult,
    Project,
    RenderInputs,
    Sentence,
    SentenceInput,
)

T = TypeVar("T")

STALE_ERROR = "stale: orchestrator died"
RELEASED_ERROR = "released: the run ended before this attempt finished"
_SENTENCE_COLUMNS = ", ".join(Sentence.model_fields)
_JOB_COLUMNS = ", ".join(ImageJob.model_fields)
_CHARACTER_COLUMNS = ", ".join(Character.model_fields)
_PROJECT_COLUMNS = ", ".join(Project.model_fields)
_EDITABLE = frozenset(SentenceInput.model_fields) - {"id", "project_id"}
# Puts a sentence whose last live job just ended back in the queue.
_RELEASE = (
    "UPDATE sentences SET status = ?, last_error = coalesce(?, last_error), updated_at = ?"
    " WHERE project_id = ? AND id = ? AND status IN ('generating', 'pending')"
    " AND NOT EXISTS (SELECT 1 FROM image_jobs j WHERE j.project_id = sentences.project_id"
    " AND j.sentence_id = sentences.id AND j.status = 'running')"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _seconds(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _timings(render_s: float | None, queue_s: float | None) -> list[float | None]:
    return [
        None if value is None else _seconds(name, value)
        for name, value in (("render_s", render_s), ("queue_s", queue_s))
    ]


class Store:
    """The sentence table and its image jobs in one DuckDB file.

    Reference image and image file paths are stored relative to the project's
    directory, `data/projects/{project}/`.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Callable[[int], float] = default_backoff,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._db = Database(self.path, lock_timeout_s=lock_timeout_s, sleep=sleep, backoff=backoff)
        self._clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for {self.path}: {exc}") from exc
        self._run(lambda con: apply_migrations(con, self._now()))

    # -- plumbing ---------------------------------------------------------------------------

    def _now(self) -> datetime:
        # TIMESTAMP columns hold naive UTC.
        return self._clock().astimezone(UTC).replace(tzinfo=None)

    def _run(self, op: Callable[[Connection], T]) -> T:
        return self._db.run(op)

    @staticmethod
    def _rows(con: Connection, model: type[Any], sql: str, params: Sequence[object]) -> list[Any]:
        cursor = con.execute(sql, params)
        names = [d[0] for d in cursor.description or ()]
        return [
            model.model_validate(dict(zip(names, row, strict=True))) for row in cursor.fetchall()
        ]

    def _sentence(self, con: Connection, project_id: str, sentence_id: str) -> Sentence:
        found = self._rows(
            con,
            Sentence,
            f"SELECT {_SENTENCE_COLUMNS} FROM sentences WHERE project_id = ? AND id = ?",
            [project_id, sentence_id],
        )
        if not found:
            raise NotFoundError(f"no sentence {sentence_id!r} in project {project_id!r}")
        return found[0]  # type: ignore[no-any-return]

    def _job(self, con: Connection, job_id: str) -> ImageJob:
        found = self._rows(
            con, ImageJob, f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE id = ?", [job_id]
        )
        if not found:
            raise NotFoundError(f"no image job {job_id!r}")
        return found[0]  # type: ignore[no-any-return]

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
                f"SELECT {_SENTENCE_COLUMNS} FROM sentences WHERE project_id = ?"
                " ORDER BY position, id",
                [project_id],
            )
        )

    def dirty_sentences(
        self, project_id: str | None = None, limit: int | None = None, force: bool = False
    ) -> list[Sentence]:
        """Sentences that need a picture (all of them with `force`), by project and position."""
        if project_id is not None:
            validate_id(project_id, "project id")
        if limit is not None and limit < 0:
            raise StoreError(f"limit must be 0 or more, got {limit}")
        sql = (
            f"SELECT {_SENTENCE_COLUMNS} FROM sentences"
            " WHERE (? OR image_dirty) AND (? IS NULL OR project_id = ?)"
            " ORDER BY project_id, position, id LIMIT ?"
        )
        params = [force, project_id, project_id, limit]
        return self._run(lambda con: self._rows(con, Sentence, sql, params))

    def jobs_for(self, project_id: str, sentence_id: str) -> list[ImageJob]:
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")
        return self._run(
            lambda con: self._rows(
                con,
                ImageJob,
                f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE project_id = ? AND sentence_id = ?"
                " ORDER BY started_at, attempt",
                [project_id, sentence_id],
            )
        )

    def find_render(self, workflow_hash: str) -> ImageJob | None:
        """The newest completed job that made a picture from exactly this graph, if any."""
        found = self._run(
            lambda con: self._rows(
                con,
                ImageJob,
                f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE workflow_hash = ?"
                " AND status = 'completed' AND result_file IS NOT NULL"
                " ORDER BY finished_at DESC LIMIT 1",
                [workflow_hash],
            )
        )
        return found[0] if found else None

    def running_jobs(self) -> list[ImageJob]:
        """Every image job still marked running (live, or left by a dead run), oldest first."""
        return self._run(
            lambda con: self._rows(
                con,
                ImageJob,
                f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE status = 'running'"
                " ORDER BY started_at",
                [],
            )
        )

    def get_job(self, job_id: str) -> ImageJob:
        validate_id(job_id, "image job id")
        return self._run(lambda con: self._job(con, job_id))

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Per project: sentences by status, plus `dirty` and `total`."""
        sql = (
            "SELECT p.id, s.status, count(s.id), count(s.id) FILTER (WHERE s.image_dirty)"
            " FROM projects p LEFT JOIN sentences s ON s.project_id = p.id"
            " GROUP BY ALL ORDER BY p.id"
        )
        rows = self._run(lambda con: con.execute(sql).fetchall())
        counts: dict[str, dict[str, int]] = {}
        for project_id, status, count, dirty in rows:
            entry = counts.setdefault(
                project_id, {**dict.fromkeys(SENTENCE_STATUSES, 0), "dirty": 0, "total": 0}
            )
            if status is not None:
                entry[status] += count
                entry["dirty"] += dirty
                entry["total"] += count
        return counts

    # -- writing content --------------------------------------------------------------------

    def upsert_projects(self, rows: Sequence[Project]) -> ImportResult:
        return self._run(lambda con: upserts.upsert_projects(con, rows, self._now()))

    def upsert_characters(self, rows: Sequence[Character]) -> ImportResult:
        return self._run(lambda con: upserts.upsert_characters(con, rows, self._now()))

    def upsert_sentences(self, rows: Sequence[SentenceInput]) -> ImportResult:
        return self._run(lambda con: upserts.upsert_sentences(con, rows, self._now()))

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
                upserts.upsert_sentences(con, sentences, now),
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
            return upserts.upsert_sentences(con, rows, now)

        try:
            return self._run(op)
        except StoreError as exc:
            raise type(exc)(interchange.one_line(f"{path}: {exc}")) from exc

    def export(self, kind: interchange.Table, path: Path, *, project_id: str | None = None) -> int:
        """Write one table (optionally one project's rows) to Parquet; return the row count."""
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
        interchange.write_parquet(kind, rows, path)
        return len(rows)

    def update_sentence(self, project_id: str, sentence_id: str, **changes: Any) -> Sentence:
        """Edit a sentence; a change to what its picture depends on makes it dirty."""
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
            upserts.upsert_sentences(con, [edited], now)
            return self._sentence(con, project_id, sentence_id)

        return self._run(op)

    def mark_dirty(self, project_id: str, sentence_ids: Iterable[str] | None = None) -> int:
        """Ask for new pictures (all of a project's, or the given sentences'); return the count."""
        validate_id(project_id, "project id")
        ids = (
            None if sentence_ids is None else [validate_id(s, "sentence id") for s in sentence_ids]
        )

        def op(con: Connection) -> int:
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
            targets = sorted(known) if ids is None else sorted(set(ids))
            con.execute(
                f"UPDATE sentences SET {upserts.BUMP}, updated_at = ?"
                " WHERE project_id = ? AND list_contains(?::VARCHAR[], id)",
                [self._now(), project_id, targets],
            )
            return len(targets)

        return self._run(op)

    # -- image jobs -------------------------------------------------------------------------

    def start_job(
        self,
        project_id: str,
        sentence_id: str,
        *,
        run_id: str,
        attempt: int,
        stale_after_s: float,
        only_dirty: bool = False,
    ) -> ImageJob | None:
        """Claim a sentence for one attempt; None if another run's job on it is still live.

        With `only_dirty`, a sentence whose image is already up to date is not
        claimed either (None): a batch working from an older list must not
        render again what a concurrent run has just finished.
        Running jobs that are stale, or earlier attempts of the same run that
        never reported back, are closed as failed first.
        """
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")
        if not run_id or attempt < 1:
            raise StoreError(
                f"start_job needs a run id and an attempt >= 1, got {run_id!r}, {attempt}"
            )

        def op(con: Connection) -> ImageJob | None:
            now = self._now()
            sentence = self._sentence(con, project_id, sentence_id)
            if only_dirty and not sentence.image_dirty:
                return None
            cutoff = now - timedelta(seconds=stale_after_s)
            running = con.execute(
                "SELECT id, run_id, started_at FROM image_jobs"
                " WHERE project_id = ? AND sentence_id = ? AND status = 'running'",
                [project_id, sentence_id],
            ).fetchall()
            if any(run != run_id and started > cutoff for _, run, started in running):
                return None
            for old_id, run, _ in running:
                reason = STALE_ERROR if run != run_id else f"superseded by attempt {attempt}"
                con.execute(
                    "UPDATE image_jobs SET status = 'failed', error = ?, finished_at = ?"
                    " WHERE id = ?",
                    [reason, now, old_id],
                )
            job = ImageJob(
                id=uuid.uuid4().hex,
                project_id=project_id,
                sentence_id=sentence_id,
                status="running",
                attempt=attempt,
                run_id=run_id,
                started_at=now,
                revision=sentence.image_revision,
            )
            con.execute(
                f"INSERT INTO image_jobs ({_JOB_COLUMNS}) VALUES"
                f" ({', '.join('?' * len(ImageJob.model_fields))})",
                [now if k == "started_at" else v for k, v in job.model_dump().items()],
            )
            con.execute(
                "UPDATE sentences SET status = 'generating', updated_at = ?"
                " WHERE project_id = ? AND id = ?",
                [now, project_id, sentence_id],
            )
            return job

        return self._run(op)

    def set_job_prompt(self, job_id: str, prompt_id: str) -> None:
        validate_id(job_id, "image job id")

        def op(con: Connection) -> None:
            self._job(con, job_id)
            con.execute("UPDATE image_jobs SET prompt_id = ? WHERE id = ?", [prompt_id, job_id])

        self._run(op)

    def complete_job(
        self,
        job_id: str,
        *,
        image_file: str,
        seed: int,
        workflow_hash: str,
        duration_s: float,
        render_s: float | None = None,
        queue_s: float | None = None,
    ) -> bool:
        """Record the picture; mark the sentence done only if it was not edited meanwhile.

        `render_s` is the prompt's own execution and `queue_s` its wait in the
        server's queue; `duration_s` stays the whole attempt.
        Compare-and-set on the revision the job started from. False: the
        sentence changed while the picture was made, so it stays dirty.
        """
        validate_id(job_id, "image job id")
        timings = [_seconds("duration_s", duration_s), *_timings(render_s, queue_s)]

        def op(con: Connection) -> bool:
            now = self._now()
            job = self._job(con, job_id)
            if job.status == "completed":
                raise StoreError(f"image job {job_id} is already completed")
            con.execute(
                "UPDATE image_jobs SET status = 'completed', finished_at = ?, duration_s = ?,"
                " render_s = ?, queue_s = ?,"
                " seed = ?, workflow_hash = ?, result_file = ?, error = NULL WHERE id = ?",
                [now, *timings, seed, workflow_hash, image_file, job_id],
            )
            won = con.execute(
                "UPDATE sentences SET status = 'completed', image_dirty = FALSE, image_file = ?,"
                " last_error = NULL, updated_at = ?"
                " WHERE project_id = ? AND id = ? AND image_revision = ? RETURNING id",
                [image_file, now, job.project_id, job.sentence_id, job.revision],
            ).fetchall()
            if not won:
                con.execute(_RELEASE, ["pending", None, now, job.project_id, job.sentence_id])
            return bool(won)

        return self._run(op)

    def fail_job(
        self,
        job_id: str,
        error: str,
        *,
        final: bool,
        prompt_id: str | None = None,
        seed: int | None = None,
        render_s: float | None = None,
        queue_s: float | None = None,
    ) -> None:
        """Close a failed attempt; `final`: no attempts are left, the sentence is failed (dirty).

        The prompt id and seed, when given, are recorded so a failure can be
        looked up on the server and reproduced; a value not given keeps what
        the job already holds (`set_job_prompt`).
        """
        validate_id(job_id, "image job id")
        timings = _timings(render_s, queue_s)

        def op(con: Connection) -> None:
            now = self._now()
            job = self._job(con, job_id)
            if job.status == "completed":
                raise StoreError(f"image job {job_id} is already completed")
            con.execute(
                "UPDATE image_jobs SET status = 'failed', error = ?, finished_at = ?,"
                " duration_s = ?, prompt_id = coalesce(?, prompt_id), seed = coalesce(?, seed),"
                " render_s = coalesce(?, render_s), queue_s = coalesce(?, queue_s) WHERE id = ?",
                [
                    error,
                    now,
                    (now - job.started_at.replace(tzinfo=None)).total_seconds(),
                    prompt_id,
                    seed,
                    *timings,
                    job_id,
                ],
            )
            current = self._sentence(con, job.project_id, job.sentence_id)
            # A final failure of an outdated revision says nothing about the new prompt.
            failed = final and current.image_revision == job.revision
            status = "failed" if failed else "pending"
            con.execute(_RELEASE, [status, error, now, job.project_id, job.sentence_id])

        self._run(op)

    def release_run(self, run_id: str) -> int:
        """Close every job of `run_id` still running; return how many. Idempotent.

        For the end of a batch, however it ends (signal, crash of a worker, a
        failure that could not be recorded): each job becomes a failed, not
        final, attempt, and its sentence goes back to pending, still dirty, as
        `fail_job(final=False)` would leave it, so the next run needs no stale
        timeout. Other runs' jobs, and sentences another run now holds, are
        left alone.
        """
        if not run_id:
            raise StoreError("release_run needs a run id, got an empty one")

        def op(con: Connection) -> int:
            now = self._now()
            released = con.execute(
                "UPDATE image_jobs SET status = 'failed', error = ?, finished_at = ?,"
                " duration_s = date_diff('microsecond', started_at, ?::TIMESTAMP) / 1e6"
                " WHERE run_id = ? AND status = 'running' RETURNING project_id, sentence_id",
                [RELEASED_ERROR, now, now, run_id],
            ).fetchall()
            for project_id, sentence_id in sorted(set(released)):
                # No last_error: the attempt was cut short, it said nothing about the prompt.
                con.execute(_RELEASE, ["pending", None, now, project_id, sentence_id])
            return len(released)

        return self._run(op)

    def reset_stale(self, older_than_s: float) -> int:
        """Fail jobs running longer than `older_than_s` (their orchestrator died); return how many.

        Sentences left 'generating' with no live job go back to 'pending', still dirty.
        """

        def op(con: Connection) -> int:
            now = self._now()
            stale = con.execute(
                "UPDATE image_jobs SET status = 'failed', error = ?, finished_at = ?"
                " WHERE status = 'running' AND started_at < ? RETURNING project_id, sentence_id",
                [STALE_ERROR, now, now - timedelta(seconds=older_than_s)],
            ).fetchall()
            con.execute(
                "UPDATE sentences SET status = 'pending', updated_at = ?"
                " WHERE status = 'generating' AND NOT EXISTS (SELECT 1 FROM image_jobs j"
                " WHERE j.project_id = sentences.project_id AND j.sentence_id = sentences.id"
                " AND j.status = 'running')",
                [now],
            )
            return len(stale)

        return self._run(op)

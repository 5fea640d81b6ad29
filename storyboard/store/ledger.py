"""The image-job ledger: one row per attempt at a sentence's picture.

A batch claims a sentence (`start_job`, which also keeps the attempt's seed on a
sentence that has none; `start_render` also finds, in the same transaction, a picture
already made from the same graph), then closes the attempt as completed (compare-and-set
on the sentence's image revision; it records the ComfyUI prompt too, which
`set_job_prompt` records apart when storing failed) or failed; `release_run`
and `reset_stale` close what a run left running. Every method is one
transaction, so a claim is atomic across processes. `Store` inherits this
ledger: callers keep one object for a store file's content and its jobs.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from storyboard.errors import NotFoundError, StoreError
from storyboard.ids import validate_id
from storyboard.seeds import check_seed
from storyboard.store.connection import Connection
from storyboard.store.models import ImageJob
from storyboard.store.tables import Tables

STALE_ERROR = "stale: orchestrator died"
RELEASED_ERROR = "released: the run ended before this attempt finished"
_JOB_COLUMNS = ", ".join(ImageJob.model_fields)
# Puts a sentence whose last live job just ended back in the queue.
_RELEASE = (
    "UPDATE sentences SET status = ?, last_error = coalesce(?, last_error), updated_at = ?"
    " WHERE project_id = ? AND id = ? AND status IN ('generating', 'pending')"
    " AND NOT EXISTS (SELECT 1 FROM image_jobs j WHERE j.project_id = sentences.project_id"
    " AND j.sentence_id = sentences.id AND j.status = 'running')"
)


def _seconds(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise StoreError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _How:
    """How a run claims: the same for every sentence of one `start_jobs` group."""

    run_id: str
    attempt: int
    stale_after_s: float
    only_dirty: bool


@dataclass(frozen=True)
class Claimed:
    """A claimed attempt, and what the render cache needs, read in the claim's transaction."""

    job: ImageJob
    # The graph `made_before` was looked up for; None: not looked up (no reuse wanted).
    graph_hash: str | None
    made_before: ImageJob | None = None  # newest completed job made from exactly that graph


def _check_claim(
    project_id: str, sentence_id: str, run_id: str, attempt: int, seed: int | None
) -> None:
    validate_id(project_id, "project id")
    validate_id(sentence_id, "sentence id")
    if not run_id or attempt < 1:
        raise StoreError(f"start_job needs a run id and an attempt >= 1, got {run_id!r}, {attempt}")
    if seed is not None:
        try:
            check_seed(seed)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc


def _timings(render_s: float | None, queue_s: float | None) -> list[float | None]:
    return [
        None if value is None else _seconds(name, value)
        for name, value in (("render_s", render_s), ("queue_s", queue_s))
    ]


class JobLedger(Tables):
    """The `image_jobs` table: claiming, recording and closing attempts, and reading them."""

    # -- reading ---------------------------------------------------------------------------

    def _job(self, con: Connection, job_id: str) -> ImageJob:
        found = self._rows(
            con, ImageJob, f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE id = ?", [job_id]
        )
        if not found:
            raise NotFoundError(f"no image job {job_id!r}")
        return found[0]  # type: ignore[no-any-return]

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
        return self._run(lambda con: self._render_of(con, workflow_hash))

    def _render_of(self, con: Connection, workflow_hash: str) -> ImageJob | None:
        found = self._rows(
            con,
            ImageJob,
            f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE workflow_hash = ?"
            " AND status = 'completed' AND result_file IS NOT NULL"
            " ORDER BY finished_at DESC LIMIT 1",
            [workflow_hash],
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

    # -- writing ---------------------------------------------------------------------------

    def start_job(
        self,
        project_id: str,
        sentence_id: str,
        *,
        run_id: str,
        attempt: int,
        stale_after_s: float,
        only_dirty: bool = False,
        seed: int | None = None,
    ) -> ImageJob | None:
        """Claim a sentence for one attempt; None if another run's job on it is still live.

        With `only_dirty`, a sentence whose image is already up to date is not
        claimed either (None): a batch working from an older list must not
        render again what a concurrent run has just finished.
        Running jobs that are stale, or earlier attempts of the same run that
        never reported back, are closed as failed first.

        `seed` is the seed this attempt renders with. A sentence without one
        keeps it (its image revision unchanged), so later renders after prompt
        edits keep the composition. The job records the sentence's seed: one
        other than `seed` means another run stored its own first, and the
        caller must prepare again with it.
        """
        claimed = self.start_render(
            project_id,
            sentence_id,
            run_id=run_id,
            attempt=attempt,
            stale_after_s=stale_after_s,
            only_dirty=only_dirty,
            seed=seed,
        )
        return None if claimed is None else claimed.job

    def start_render(
        self,
        project_id: str,
        sentence_id: str,
        *,
        run_id: str,
        attempt: int,
        stale_after_s: float,
        only_dirty: bool = False,
        seed: int | None = None,
        graph_hash: str | None = None,
    ) -> Claimed | None:
        """`start_job`, and in the same transaction `find_render(graph_hash)` when a hash is
        given: a render needs both, and one transaction is one store call instead of two."""
        _check_claim(project_id, sentence_id, run_id, attempt, seed)
        how = _How(run_id, attempt, stale_after_s, only_dirty)

        def op(con: Connection) -> Claimed | None:
            job = self._claim(con, self._now(), project_id, sentence_id, seed, how)
            if job is None:
                return None
            made_before = None if graph_hash is None else self._render_of(con, graph_hash)
            return Claimed(job, graph_hash, made_before)

        return self._run(op)

    def start_jobs(
        self,
        claims: Sequence[tuple[str, str, int | None]],
        *,
        run_id: str,
        attempt: int,
        stale_after_s: float,
        only_dirty: bool = False,
    ) -> list[ImageJob | None]:
        """`start_job` for several sentences in one transaction: (project id, sentence id,
        seed) each; one result per claim, in order (None: not claimed, as `start_job`).

        For a feed that claims a few sentences ahead: one store open for the group instead
        of one per sentence. One transaction: a store error claims none of them.
        """
        for project_id, sentence_id, seed in claims:
            _check_claim(project_id, sentence_id, run_id, attempt, seed)

        how = _How(run_id, attempt, stale_after_s, only_dirty)

        def op(con: Connection) -> list[ImageJob | None]:
            now = self._now()
            return [self._claim(con, now, p, s, seed, how) for p, s, seed in claims]

        return self._run(op) if claims else []

    def _claim(
        self,
        con: Connection,
        now: datetime,
        project_id: str,
        sentence_id: str,
        seed: int | None,
        how: _How,
    ) -> ImageJob | None:
        run_id, attempt = how.run_id, how.attempt
        cutoff = now - timedelta(seconds=how.stale_after_s)
        # One statement decides and marks the claim (fewer statements: each one waits for the
        # GIL again while the batch's other threads compute). A sentence without a seed keeps
        # this attempt's: not a change of what the picture is asked to be, so no revision bump,
        # and this attempt still wins its compare-and-set when it completes.
        claimed = con.execute(
            "UPDATE sentences SET status = 'generating', updated_at = ?, seed = coalesce(seed, ?)"
            " WHERE project_id = ? AND id = ? AND (image_dirty OR NOT ?)"
            " AND NOT EXISTS (SELECT 1 FROM image_jobs j WHERE j.project_id = sentences.project_id"
            " AND j.sentence_id = sentences.id AND j.status = 'running' AND j.run_id <> ?"
            " AND j.started_at > ?) RETURNING seed, image_revision",
            [now, seed, project_id, sentence_id, how.only_dirty, run_id, cutoff],
        ).fetchall()
        if not claimed:
            self._sentence(con, project_id, sentence_id)  # a missing one is NotFoundError
            return None
        (kept_seed, revision), superseded = claimed[0], f"superseded by attempt {attempt}"
        # Stale jobs of other runs, and this run's earlier attempts that never reported back.
        con.execute(
            "UPDATE image_jobs SET status = 'failed', finished_at = ?,"
            " error = CASE WHEN run_id <> ? THEN ? ELSE ? END"
            " WHERE project_id = ? AND sentence_id = ? AND status = 'running'",
            [now, run_id, STALE_ERROR, superseded, project_id, sentence_id],
        )
        job = ImageJob(
            id=uuid.uuid4().hex,
            project_id=project_id,
            sentence_id=sentence_id,
            status="running",
            attempt=attempt,
            run_id=run_id,
            started_at=now,
            seed=kept_seed,
            revision=revision,
        )
        con.execute(
            f"INSERT INTO image_jobs ({_JOB_COLUMNS}) VALUES"
            f" ({', '.join('?' * len(ImageJob.model_fields))})",
            [now if k == "started_at" else v for k, v in job.model_dump().items()],
        )
        return job

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
        prompt_id: str | None = None,
    ) -> bool:
        """Record the picture; mark the sentence done only if it was not edited meanwhile.

        `render_s` is the prompt's own execution and `queue_s` its wait in the
        server's queue; `duration_s` stays the whole attempt. `prompt_id`, when
        given, is the ComfyUI prompt that made it (saves a `set_job_prompt` call).
        Compare-and-set on the revision the job started from. False: the
        sentence changed while the picture was made, so it stays dirty.
        """
        validate_id(job_id, "image job id")
        timings = [_seconds("duration_s", duration_s), *_timings(render_s, queue_s)]

        def op(con: Connection) -> bool:
            now = self._now()
            closed = con.execute(
                "UPDATE image_jobs SET status = 'completed', finished_at = ?, duration_s = ?,"
                " render_s = ?, queue_s = ?, prompt_id = coalesce(?, prompt_id),"
                " seed = ?, workflow_hash = ?, result_file = ?, error = NULL"
                " WHERE id = ? AND status <> 'completed'"
                " RETURNING project_id, sentence_id, revision",
                [now, *timings, prompt_id, seed, workflow_hash, image_file, job_id],
            ).fetchall()
            if not closed:
                self._job(con, job_id)  # an unknown job is NotFoundError
                raise StoreError(f"image job {job_id} is already completed")
            project_id, sentence_id, revision = closed[0]
            won = con.execute(
                "UPDATE sentences SET status = 'completed', image_dirty = FALSE, image_file = ?,"
                " last_error = NULL, updated_at = ?"
                " WHERE project_id = ? AND id = ? AND image_revision = ? RETURNING id",
                [image_file, now, project_id, sentence_id, revision],
            ).fetchall()
            if not won:
                con.execute(_RELEASE, ["pending", None, now, project_id, sentence_id])
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

    def release_job(self, run_id: str, project_id: str, sentence_id: str) -> int:
        """`release_run` for one sentence: its lane went away, not its prompt. The sentence
        goes back to pending, still dirty, with no error of its own; returns how many."""
        if not run_id:
            raise StoreError("release_job needs a run id, got an empty one")
        validate_id(project_id, "project id")
        validate_id(sentence_id, "sentence id")

        def op(con: Connection) -> int:
            now = self._now()
            released = con.execute(
                "UPDATE image_jobs SET status = 'failed', error = ?, finished_at = ?,"
                " duration_s = date_diff('microsecond', started_at, ?::TIMESTAMP) / 1e6"
                " WHERE run_id = ? AND project_id = ? AND sentence_id = ? AND status = 'running'"
                " RETURNING id",
                [RELEASED_ERROR, now, now, run_id, project_id, sentence_id],
            ).fetchall()
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

"""The image-job ledger: one row per attempt at a sentence's picture.

A batch claims a sentence (`start_job`, which also keeps the attempt's seed on a
sentence that has none; `start_render` also finds, in the same transaction, a picture
already made from the same graph), then closes the attempt as completed (compare-and-set
on the sentence's image revision; it records the ComfyUI prompt too, which
`set_job_prompt` records apart when storing failed) or failed; `release_run`
and `release_job` give back what a run left running (`released`: nothing failed),
`reset_stale` fails what a dead run left. Every method is one
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
from storyboard.store.models import ImageJob, RunLease
from storyboard.store.tables import Tables

STALE_ERROR = "stale: orchestrator died"
# What recording a picture sets on its sentence (`_record_pictures`): a final, a draft.
_RECORD_FINAL = (
    "status = 'completed', image_dirty = FALSE, image_file = c.image_file, last_error = NULL"
)
_RECORD_DRAFT = "draft_file = c.image_file, draft_revision = c.revision"
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
    draft: bool = False
    lane: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A claimed attempt, and what the render cache needs, read in the claim's transaction."""

    job: ImageJob
    # The graph `made_before` was looked up for; None: not looked up (no reuse wanted).
    graph_hash: str | None
    made_before: ImageJob | None = None  # newest completed job made from exactly that graph


@dataclass(frozen=True)
class Completion:
    """One picture to record with `complete_jobs`: the arguments of `complete_job`."""

    job_id: str
    image_file: str
    seed: int
    workflow_hash: str
    duration_s: float
    render_s: float | None = None
    queue_s: float | None = None
    prompt_id: str | None = None

    def row(self) -> tuple[object, ...]:
        """The values in the order `complete_jobs` binds them (the timings checked)."""
        duration_s = _seconds("duration_s", self.duration_s)
        render_s, queue_s = _timings(self.render_s, self.queue_s)
        return (
            self.job_id,
            duration_s,
            render_s,
            queue_s,
            self.prompt_id,
            self.seed,
            self.workflow_hash,
            self.image_file,
        )


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


@dataclass(frozen=True)
class GpuTime:
    """GPU seconds of some renders: how many attempts ran, their seconds, the failed ones'
    and the drafts' (both included in `seconds`)."""

    attempts: int
    seconds: float
    failed_seconds: float
    draft_seconds: float = 0.0

    def text(self, hour_price: float | None = None) -> str:
        """`25.5 s in 3 attempt(s), 3.0 s of it failed, 4.0 s drafts; cost 0.03` (the cost
        with a price)."""
        line = f"{self.seconds:.1f} s in {self.attempts} attempt(s)"
        if self.failed_seconds:
            line += f", {self.failed_seconds:.1f} s of it failed"
        if self.draft_seconds:
            line += f", {self.draft_seconds:.1f} s of it drafts"
        if hour_price is not None:
            line += f"; cost {self.cost(hour_price):.2f}"
        return line

    def cost(self, hour_price: float) -> float:
        return self.seconds / 3600 * hour_price


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

    def find_render(self, workflow_hash: str, *, draft: bool = False) -> ImageJob | None:
        """The newest completed job that made a picture from exactly this graph, if any: a
        final's for a final, a draft's for a draft (a draft never stands in for a final,
        even when the draft settings make the same graph)."""
        return self._run(lambda con: self._render_of(con, workflow_hash, draft))

    def _render_of(self, con: Connection, workflow_hash: str, draft: bool) -> ImageJob | None:
        found = self._rows(
            con,
            ImageJob,
            f"SELECT {_JOB_COLUMNS} FROM image_jobs WHERE workflow_hash = ?"
            " AND status = 'completed' AND result_file IS NOT NULL AND draft = ?"
            " ORDER BY finished_at DESC LIMIT 1",
            [workflow_hash, draft],
        )
        return found[0] if found else None

    def picture_hashes(self, *, draft: bool = False) -> set[str]:
        """The graph hash of every completed job that made a picture (a draft with `draft`):
        a batch reads them once and asks `find_render` only for a graph among them (a render
        cache miss costs no store call)."""

        def op(con: Connection) -> set[str]:
            rows = con.execute(
                "SELECT DISTINCT workflow_hash FROM image_jobs WHERE status = 'completed'"
                " AND result_file IS NOT NULL AND workflow_hash IS NOT NULL AND draft = ?",
                [draft],
            ).fetchall()
            return {row[0] for row in rows}

        return self._run(op)

    def gpu_seconds(self) -> dict[str, GpuTime]:
        """Per project: the seconds its prompts executed on a GPU (`render_s`, ComfyUI's own
        execution, not the wait in its queue), every attempt counted, failed ones apart."""
        return self._gpu_time("project_id", "TRUE", [])

    def gpu_seconds_of_run(self, run_id: str) -> GpuTime:
        """`gpu_seconds` of one run's attempts, whatever their project."""
        return self._gpu_time("run_id", "run_id = ?", [run_id]).get(run_id, GpuTime(0, 0.0, 0.0))

    def gpu_seconds_by_lane(self, run_id: str) -> dict[str, GpuTime]:
        """`gpu_seconds` of one run's attempts per GPU lane ("-": not recorded)."""
        return self._gpu_time("coalesce(lane, '-')", "run_id = ?", [run_id])

    def gpu_seconds_by_sentence(self, project_id: str) -> dict[str, GpuTime]:
        """`gpu_seconds` of one project, per sentence (those with any GPU time), by id."""
        validate_id(project_id, "project id")
        return self._gpu_time("sentence_id", "project_id = ?", [project_id])

    def _gpu_time(self, key: str, where: str, params: list[object]) -> dict[str, GpuTime]:
        """GPU time of the attempts matching `where`, by `key` (a column or an expression of
        ours, never a user's)."""
        sql = (
            f"SELECT {key}, count(*), sum(render_s),"
            " coalesce(sum(render_s) FILTER (WHERE status = 'failed'), 0),"
            " coalesce(sum(render_s) FILTER (WHERE draft), 0)"
            f" FROM image_jobs WHERE render_s IS NOT NULL AND {where}"
            f" GROUP BY {key} ORDER BY {key}"
        )
        rows = self._run(lambda con: con.execute(sql, params).fetchall())
        return {name: GpuTime(n, total, failed, drafts) for name, n, total, failed, drafts in rows}

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
        draft: bool = False,
        lane: str | None = None,
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

        With `draft`, the attempt makes the sentence's draft: `only_dirty` then asks for a
        draft that is missing or stale, and the sentence's status stays as it is (it tells
        of its final picture). `lane` is the GPU lane the attempt runs on (its costs per lane).
        """
        claimed = self.start_render(
            project_id,
            sentence_id,
            run_id=run_id,
            attempt=attempt,
            stale_after_s=stale_after_s,
            only_dirty=only_dirty,
            seed=seed,
            draft=draft,
            lane=lane,
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
        draft: bool = False,
        lane: str | None = None,
    ) -> Claimed | None:
        """`start_job`, and in the same transaction `find_render(graph_hash)` when a hash is
        given: a render needs both, and one transaction is one store call instead of two."""
        _check_claim(project_id, sentence_id, run_id, attempt, seed)
        how = _How(run_id, attempt, stale_after_s, only_dirty, draft, lane)

        def op(con: Connection) -> Claimed | None:
            job = self._claim(con, self._now(), [(project_id, sentence_id, seed)], how)[0]
            if job is None:
                return None
            if graph_hash is None:
                return Claimed(job, None)
            made_before = self._render_of(con, graph_hash, draft)
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
        draft: bool = False,
        lane: str | None = None,
    ) -> list[ImageJob | None]:
        """`start_job` for several sentences in one transaction: (project id, sentence id,
        seed) each; one result per claim, in order (None: not claimed, as `start_job`).

        For a feed that claims a few sentences ahead: one store open for the group instead
        of one per sentence. One transaction: a store error claims none of them.
        """
        for project_id, sentence_id, seed in claims:
            _check_claim(project_id, sentence_id, run_id, attempt, seed)

        if len({(p, s) for p, s, _ in claims}) < len(claims):
            raise StoreError("start_jobs got the same sentence twice in one group")
        how = _How(run_id, attempt, stale_after_s, only_dirty, draft, lane)
        return self._run(lambda con: self._claim(con, self._now(), claims, how)) if claims else []

    def _claim(
        self,
        con: Connection,
        now: datetime,
        claims: Sequence[tuple[str, str, int | None]],
        how: _How,
    ) -> list[ImageJob | None]:
        """Claim a group in three statements, whatever its size: each statement costs ~1-5 ms
        and waits for the GIL again while the batch's other threads compute, so a group of
        eight costs about what one sentence alone does."""
        run_id, attempt = how.run_id, how.attempt
        cutoff = now - timedelta(seconds=how.stale_after_s)
        rows = ", ".join("(?, ?, ?::BIGINT)" for _ in claims)
        keys = [value for claim in claims for value in claim]
        # One statement decides and marks every claim. A sentence without a seed keeps this
        # attempt's: not a change of what the picture is asked to be, so no revision bump,
        # and this attempt still wins its compare-and-set when it completes; a draft's seed
        # is the final's too, so the final keeps the draft's composition. A draft leaves the
        # status alone: it tells of the final picture.
        needed = (
            "(sentences.draft_file IS NULL"
            " OR sentences.draft_revision IS DISTINCT FROM sentences.image_revision)"
            if how.draft
            else "sentences.image_dirty"
        )
        status = "sentences.status" if how.draft else "'generating'"
        claimed = con.execute(
            f"UPDATE sentences SET status = {status}, updated_at = ?,"
            " seed = coalesce(sentences.seed, c.seed)"
            f" FROM (VALUES {rows}) AS c(project_id, sentence_id, seed)"
            " WHERE sentences.project_id = c.project_id AND sentences.id = c.sentence_id"
            f" AND ({needed} OR NOT ?)"
            " AND NOT EXISTS (SELECT 1 FROM image_jobs j WHERE j.project_id = sentences.project_id"
            " AND j.sentence_id = sentences.id AND j.status = 'running' AND j.run_id <> ?"
            " AND j.started_at > ?)"
            " RETURNING sentences.project_id, sentences.id, sentences.seed,"
            " sentences.image_revision",
            [now, *keys, how.only_dirty, run_id, cutoff],
        ).fetchall()
        won = {(p, s): (seed, revision) for p, s, seed, revision in claimed}
        for project_id, sentence_id, _ in claims:
            if (project_id, sentence_id) not in won:
                self._sentence(con, project_id, sentence_id)  # a missing one is NotFoundError
        if not won:
            return [None] * len(claims)
        pairs = ", ".join("(?, ?)" for _ in won)
        ids = [value for key in won for value in key]
        # Stale jobs of other runs, and this run's earlier attempts that never reported back.
        con.execute(
            "UPDATE image_jobs SET status = 'failed', finished_at = ?,"
            " error = CASE WHEN run_id <> ? THEN ? ELSE ? END"
            f" FROM (VALUES {pairs}) AS c(project_id, sentence_id)"
            " WHERE image_jobs.project_id = c.project_id"
            " AND image_jobs.sentence_id = c.sentence_id AND image_jobs.status = 'running'",
            [now, run_id, STALE_ERROR, f"superseded by attempt {attempt}", *ids],
        )
        jobs = {
            key: ImageJob(
                id=uuid.uuid4().hex,
                project_id=key[0],
                sentence_id=key[1],
                status="running",
                attempt=attempt,
                run_id=run_id,
                started_at=now,
                seed=seed,
                revision=revision,
                draft=how.draft,
                lane=how.lane,
            )
            for key, (seed, revision) in won.items()
        }
        row = f"({', '.join('?' * len(ImageJob.model_fields))})"
        con.execute(
            f"INSERT INTO image_jobs ({_JOB_COLUMNS}) VALUES {', '.join([row] * len(jobs))}",
            [
                now if name == "started_at" else value
                for job in jobs.values()
                for name, value in job.model_dump().items()
            ],
        )
        return [jobs.get((p, s)) for p, s, _ in claims]

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
        completion = Completion(
            job_id,
            image_file=image_file,
            seed=seed,
            workflow_hash=workflow_hash,
            duration_s=duration_s,
            render_s=render_s,
            queue_s=queue_s,
            prompt_id=prompt_id,
        )
        return self.complete_jobs([completion])[0]

    def complete_jobs(self, completions: Sequence[Completion]) -> list[bool]:
        """`complete_job` for several jobs (of different sentences) in one transaction and
        three statements, whatever their number; one result per completion, in order.

        One transaction: an unknown or already completed job completes none of them.
        """
        for completion in completions:
            validate_id(completion.job_id, "image job id")
        rows = [completion.row() for completion in completions]
        if len({row[0] for row in rows}) < len(rows):
            raise StoreError("complete_jobs got the same image job twice in one group")

        def op(con: Connection) -> list[bool]:
            now = self._now()
            values = ", ".join(
                "(?::VARCHAR, ?::DOUBLE, ?::DOUBLE, ?::DOUBLE, ?::VARCHAR, ?::BIGINT,"
                " ?::VARCHAR, ?::VARCHAR)"
                for _ in rows
            )
            closed = con.execute(
                "UPDATE image_jobs SET status = 'completed', finished_at = ?,"
                " duration_s = c.duration_s, render_s = c.render_s, queue_s = c.queue_s,"
                " prompt_id = coalesce(c.prompt_id, image_jobs.prompt_id), seed = c.seed,"
                " workflow_hash = c.workflow_hash, result_file = c.result_file, error = NULL"
                f" FROM (VALUES {values}) AS c(id, duration_s, render_s, queue_s, prompt_id,"
                " seed, workflow_hash, result_file)"
                " WHERE image_jobs.id = c.id AND image_jobs.status <> 'completed'"
                " RETURNING image_jobs.id, image_jobs.project_id, image_jobs.sentence_id,"
                " image_jobs.revision, image_jobs.result_file, image_jobs.draft",
                [now, *(value for row in rows for value in row)],
            ).fetchall()
            if len(closed) < len(rows):
                done = {job_id for job_id, *_ in closed}
                missing = next(str(row[0]) for row in rows if row[0] not in done)
                self._job(con, missing)  # an unknown job is NotFoundError
                raise StoreError(f"image job {missing} is already completed")
            sentences = [(p, s) for _, p, s, _, _, _ in closed]
            if len(set(sentences)) < len(sentences):
                raise StoreError("complete_jobs got two jobs of one sentence in one group")
            finals = [row[1:5] for row in closed if not row[5]]
            drafts = [row[1:5] for row in closed if row[5]]
            current = self._record_pictures(con, now, finals, draft=False)
            current |= self._record_pictures(con, now, drafts, draft=True)
            for project_id, sentence_id, *_ in finals:
                if (project_id, sentence_id) not in current:
                    con.execute(_RELEASE, ["pending", None, now, project_id, sentence_id])
            by_job = {job_id: (p, s) in current for job_id, p, s, *_ in closed}
            return [by_job[row[0]] for row in rows]

        return self._run(op) if rows else []

    def _record_pictures(
        self,
        con: Connection,
        now: datetime,
        closed: Sequence[tuple[str, str, int, str]],
        *,
        draft: bool,
    ) -> set[tuple[str, str]]:
        """The sentences of completed pictures (project, sentence, revision, file) that were
        not edited meanwhile, now recorded. A final: the sentence done, its dirty flag off. A
        draft: the draft and its revision, nothing else of the sentence touched (its final
        stays dirty, its status its final's)."""
        if not closed:
            return set()
        recorded = _RECORD_DRAFT if draft else _RECORD_FINAL
        pairs = ", ".join("(?, ?, ?::INTEGER, ?)" for _ in closed)
        won = con.execute(
            f"UPDATE sentences SET {recorded}, updated_at = ?"
            f" FROM (VALUES {pairs}) AS c(project_id, sentence_id, revision, image_file)"
            " WHERE sentences.project_id = c.project_id AND sentences.id = c.sentence_id"
            " AND sentences.image_revision = c.revision"
            " RETURNING sentences.project_id, sentences.id",
            [now, *(value for row in closed for value in row)],
        ).fetchall()
        return set(won)

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
            if job.draft:
                return  # a failed draft says nothing of the final: the job row tells it
            current = self._sentence(con, job.project_id, job.sentence_id)
            # A final failure of an outdated revision says nothing about the new prompt.
            failed = final and current.image_revision == job.revision
            status = "failed" if failed else "pending"
            con.execute(_RELEASE, [status, error, now, job.project_id, job.sentence_id])

        self._run(op)

    def release_run(self, run_id: str) -> int:
        """Close every job of `run_id` still running; return how many. Idempotent.

        For the end of a batch, however it ends (signal, crash of a worker, a
        failure that could not be recorded): each job becomes `released` (no
        attempt spent: nothing failed), and its sentence goes back to pending,
        still dirty, as `fail_job(final=False)` would leave it, so the next run
        needs no stale timeout. Other runs' jobs, and sentences another run now holds, are
        left alone.
        """
        if not run_id:
            raise StoreError("release_run needs a run id, got an empty one")

        def op(con: Connection) -> int:
            now = self._now()
            released = con.execute(
                "UPDATE image_jobs SET status = 'released', error = ?, finished_at = ?,"
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
                "UPDATE image_jobs SET status = 'released', error = ?, finished_at = ?,"
                " duration_s = date_diff('microsecond', started_at, ?::TIMESTAMP) / 1e6"
                " WHERE run_id = ? AND project_id = ? AND sentence_id = ? AND status = 'running'"
                " RETURNING id",
                [RELEASED_ERROR, now, now, run_id, project_id, sentence_id],
            ).fetchall()
            con.execute(_RELEASE, ["pending", None, now, project_id, sentence_id])
            return len(released)

        return self._run(op)

    # -- run leases ------------------------------------------------------------------

    def renew_lease(self, run_id: str, *, host: str, pid: int) -> None:
        """Record that run `run_id` (process `pid` on `host`) is alive now."""
        if not run_id:
            raise StoreError("renew_lease needs a run id, got an empty one")

        def op(con: Connection) -> None:
            con.execute(
                "INSERT INTO run_leases VALUES (?, ?, ?, ?, NULL) ON CONFLICT (run_id) DO UPDATE"
                " SET host = excluded.host, pid = excluded.pid, renewed_at = excluded.renewed_at,"
                " ended_at = NULL",
                [run_id, host, pid, self._now()],
            )

        self._run(op)

    def end_lease(self, run_id: str) -> None:
        """Record that run `run_id` holds no claim any more (it released them, or they were
        taken over): its lease never expires and it is known to have ended."""
        self._run(
            lambda con: con.execute(
                "UPDATE run_leases SET ended_at = ? WHERE run_id = ? AND ended_at IS NULL",
                [self._now(), run_id],
            )
        )

    def lease(self, run_id: str) -> RunLease | None:
        """Run `run_id`'s lease; None for a run that never had one."""
        found = self._run(
            lambda con: self._rows(
                con,
                RunLease,
                "SELECT run_id, host, pid, renewed_at, ended_at FROM run_leases WHERE run_id = ?",
                [run_id],
            )
        )
        return found[0] if found else None

    def expired_leases(self, older_than_s: float) -> list[str]:
        """Runs holding running jobs whose lease was last renewed more than `older_than_s`
        ago, in order. A run with no lease (from before leases) is not among them."""
        seconds = _seconds("older_than_s", older_than_s)

        def op(con: Connection) -> list[str]:
            rows = con.execute(
                "SELECT run_id FROM run_leases WHERE ended_at IS NULL AND renewed_at < ?"
                " AND run_id IN (SELECT run_id FROM image_jobs WHERE status = 'running')"
                " ORDER BY run_id",
                [self._now() - timedelta(seconds=seconds)],
            ).fetchall()
            return [str(row[0]) for row in rows]

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

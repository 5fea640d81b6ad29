"""The Prefect tasks of one sentence: prepare (no GPU), render (the GPU lane), store (no GPU).

`render_image` runs only inside a lane feed (flows/lane_feed.py), which holds the lane
(its OS lock and its `gpu` concurrency slot, flows.gpu_limit) for as long as it feeds it:
that is the cross-run guard that keeps one ComfyUI server to one feeder. Preparing the next
sentence and storing the previous one overlap the render. The one exception is an on-demand
render (flows/on_demand.py): it holds no lane, and its session queues its one prompt at the
front of the server (storyboard.lane_choice), which still executes one prompt at a time.

Render task runs are named `render-{project}-{sentence}`, so a run's timeline names each
picture. Progress artifacts and the `storyboard.image.completed` event (and, deprecated, kept
for one release, the same event as `image.completed`) are best effort; once the batch is
stopping (`ctx.stopping`) a task neither retries nor records its failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import TaskRunContext
from prefect.events import emit_event
from prefect.runtime import task_run
from prefect.states import Cancelled

from storyboard import pipeline
from storyboard.errors import ComfyUIConnectionError
from storyboard.pipeline import Prepared, Rendered, Stored, Written
from storyboard.store import Claimed, ImageJob, RenderInputs
from tasks.context import RenderContext, is_final_attempt, retry_if_retryable
from tasks.progress import RenderProgress, best_effort

IMAGE_COMPLETED = "storyboard.image.completed"
# The event's name before it joined `storyboard.image.requested`; emitted too, for one release.
IMAGE_COMPLETED_DEPRECATED = "image.completed"


@dataclass(frozen=True)
class RenderedImage:
    """What the GPU task hands to the storing task."""

    rendered: Rendered


@dataclass(frozen=True)
class GivenBack:
    """A render not made because its lane went away (not the sentence's failure): the feed
    gives the sentence to another lane. Returned, not raised, so the task run ends
    Completed and nothing is logged as an error."""

    cause: BaseException


# What a task ends in when the run's stop (a signal, a cancel, another lane's failure with
# one lane) interrupted it: Cancelled, its message saying so. Its sentence is released still
# dirty by the flow. Raised instead, the error would show the task Failed, most often with
# the empty CancelledError of the session the stop closed. The state carries the error, so a
# caller's `result(raise_on_failure=False)` gets it, as it would have got the raised one
# (without it, None: a skipped render).
Stopped = State[Any]


def _stopped(label: str, exc: BaseException) -> Stopped:
    reason = str(exc) or type(exc).__name__
    return Cancelled(message=f"{label}: stopped with the run ({reason}); it stays dirty", data=exc)


def _attempt() -> tuple[int, int]:
    """(this attempt, 1-based; retries configured) of the running task."""
    context = TaskRunContext.get()
    retries = context.task.retries if context is not None else 0
    return task_run.run_count, retries


def _record_failure(
    ctx: RenderContext,
    project_id: str,
    sentence_id: str,
    exc: BaseException,
    *,
    job: ImageJob | None,
    final: bool,
    attempt: int,
    seed: int | None = None,
) -> None:
    """Record a task's failed attempt in the store, with this run's id and stale limit."""
    pipeline.record_failure(
        ctx.store,
        project_id,
        sentence_id,
        exc,
        job=job,
        final=final,
        run_id=ctx.run_id,
        attempt=attempt,
        stale_after_s=ctx.stale_after_s,
        seed=seed,
        draft=ctx.config.draft,
        lane=ctx.lane.name,
    )


def sentence_resource(project_id: str, sentence_id: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"storyboard.sentence.{project_id}.{sentence_id}",
        "prefect.resource.name": f"{project_id}/{sentence_id}",
        "storyboard.project": project_id,
    }


@task(
    name="prepare-image",
    task_run_name="prepare-{sentence_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_retryable,
)
def prepare_image(
    ctx: RenderContext,
    project_id: str,
    sentence_id: str,
    reference_paths: Sequence[str] | None = None,
    record_failure: bool = True,
    upload: bool = True,
    inputs: RenderInputs | None = None,
    job: ImageJob | None = None,
) -> Prepared | Stopped:
    """Resolve, inject, validate, upload references. Changes no sentence unless it fails for
    good (then the sentence is `failed` with the reason). A dry run passes
    `record_failure=False, upload=False`: nothing is recorded and nothing sent to ComfyUI.
    `inputs`: the sentence as the batch listed it (else read from the store now).
    `job`: the attempt already claimed for it (a batch claims ahead): prepared with the seed
    and revision it claimed, and closed if this fails for good."""
    attempt, retries = _attempt()
    ctx.count_attempt(project_id, sentence_id, attempt)
    try:
        if (
            job is not None
            and inputs is not None
            and inputs.sentence.image_revision != job.revision
        ):
            inputs = None  # edited since the batch listed it: read it as claimed
        resolved = pipeline.resolve(
            ctx.store, project_id, sentence_id, reference_paths=reference_paths, inputs=inputs
        )
        if job is not None and job.seed is not None:
            resolved = replace(resolved, seed=job.seed)
        return pipeline.prepare(ctx.session, ctx.workflow, resolved, ctx.config, upload=upload)
    except Exception as exc:
        if ctx.stopping.is_set():
            return _stopped(f"{project_id}/{sentence_id}", exc)
        if record_failure and not ctx.withholds(exc) and is_final_attempt(exc, attempt, retries):
            _record_failure(ctx, project_id, sentence_id, exc, job=job, final=True, attempt=attempt)
        raise


def _claimed_ahead(ctx: RenderContext, prepared: Prepared, job: ImageJob) -> Claimed:
    """A job the batch claimed ahead, with the render cache's answer for its graph: a store
    call only when the batch's list of made graphs has it."""
    if not ctx.only_dirty:  # `force` asks for new renders, not the cached pictures
        return Claimed(job, None)
    graph_hash = prepared.graph_hash
    made = (
        ctx.store.find_render(graph_hash, draft=ctx.config.draft)
        if ctx.has_picture(graph_hash)
        else None
    )
    return Claimed(job, graph_hash, made)


@task(
    name="render-image",
    task_run_name="render-{project_id}-{sentence_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_retryable,
)
def render_image(
    ctx: RenderContext,
    prepared: Prepared,
    project_id: str,
    sentence_id: str,
    reference_paths: Sequence[str] | None = None,
    job: ImageJob | None = None,
) -> RenderedImage | GivenBack | Stopped | None:
    """Claim the sentence and render it on the lane. None: another live run is rendering it;
    GivenBack: its lane went away (several lanes), another lane will render it.

    `job`: the first attempt, already claimed (a batch claims ahead, in groups); a retry
    claims its own. The render cache is asked only for a graph `ctx.has_picture`.
    """
    attempt = _attempt()[0]
    ctx.count_attempt(project_id, sentence_id, attempt)
    ctx.retry_wait((project_id, sentence_id), False)  # back from its retry delay, if it did
    label = f"{project_id}/{sentence_id}"
    try:
        with ctx.place_on_server(label):
            return _generate(ctx, prepared, project_id, sentence_id, reference_paths, job)
    except Exception as exc:
        if ctx.stopping.is_set():
            return _stopped(label, exc)
        raise


def _generate(
    ctx: RenderContext,
    prepared: Prepared,
    project_id: str,
    sentence_id: str,
    reference_paths: Sequence[str] | None,
    job: ImageJob | None,
) -> RenderedImage | GivenBack | None:
    logger = get_run_logger()
    attempt, retries = _attempt()
    if ctx.gone():
        raise ComfyUIConnectionError(
            f"{project_id}/{sentence_id}: not started, the batch is ending"
        )
    claimed = (
        _claimed_ahead(ctx, prepared, job)
        if job is not None and attempt == 1
        else pipeline.claim(
            ctx.store,
            prepared,
            run_id=ctx.run_id,
            attempt=attempt,
            stale_after_s=ctx.stale_after_s,
            only_dirty=ctx.only_dirty,
            reuse=ctx.only_dirty,  # `force` asks for new renders, not the cached pictures
            draft=ctx.config.draft,
            lane=ctx.lane.name,
        )
    )
    if claimed is None:
        logger.warning(
            "%s/%s: another run is rendering it or has just made it; skipped",
            project_id,
            sentence_id,
        )
        return None
    job, label = claimed.job, f"{project_id}/{sentence_id}"
    try:
        if not pipeline.is_current(prepared, job):
            logger.info("%s: edited since it was prepared; preparing again", label)
            resolved = pipeline.resolve(
                ctx.store, project_id, sentence_id, reference_paths=reference_paths
            )
            prepared = pipeline.prepare(ctx.session, ctx.workflow, resolved, ctx.config)
        progress = RenderProgress(label, logger.info, queued=ctx.prompt_queued, debug=logger.debug)
        rendered = pipeline.render(
            ctx.session,
            ctx.store,
            prepared,
            claimed,
            ctx.config,
            on_event=progress.on_event,
            wait=progress.wait,
        )
    except Exception as exc:
        if ctx.withholds(exc):
            if not ctx.stopping.is_set():  # the lane, not the batch, is gone
                logger.warning("%s: not rendered, its lane went away (%s)", label, exc)
                return GivenBack(exc)  # the feed releases this job for another lane
            raise  # the batch is ending: the flow releases this job
        final = is_final_attempt(exc, attempt, retries)
        _record_failure(
            ctx,
            project_id,
            sentence_id,
            exc,
            job=job,
            final=final,
            attempt=attempt,
            seed=prepared.seed,
        )
        if not final:  # it waits out its retry delay off the server: the lane feeds others
            ctx.retry_wait((project_id, sentence_id), True)
        raise
    progress.flush_lines()
    if rendered.cached:
        logger.info("%s: same graph as a picture already made; reused, GPU not used", label)
    else:
        # The store's "saved" line tells a person the seconds and the file; this is for tracing.
        logger.debug(
            "%s: rendered in %.2f s (prompt %s)", label, rendered.render_s, rendered.prompt_id
        )
    return RenderedImage(rendered)


@task(
    name="store-image",
    task_run_name="store-{sentence_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_retryable,
)
def store_image(
    ctx: RenderContext, result: RenderedImage, sentence_id: str, record: bool = True
) -> Stored | Written | Stopped:
    """Finish to the frame, write atomically, compare-and-set; announce the picture.

    `record=False` (a batch, which records its pictures in groups, `announce`-ing them
    after): only write it, and return what recording needs.
    """
    rendered = result.rendered
    attempt, retries = _attempt()
    resolved = rendered.prepared.resolved
    try:
        written = pipeline.write_picture(ctx.store, rendered, ctx.config, ctx.session)
        if not record:
            return written
        stored = pipeline.record_pictures(ctx.store, [written])[0]
    except Exception as exc:
        if ctx.stopping.is_set():
            return _stopped(f"{resolved.project_id}/{resolved.sentence_id}", exc)
        if is_final_attempt(exc, attempt, retries):
            _record_failure(
                ctx,
                resolved.project_id,
                resolved.sentence_id,
                exc,
                job=rendered.job,
                final=True,
                attempt=attempt,
                seed=rendered.prepared.seed,
            )
        raise
    announce(ctx, written, stored)
    return stored


def announce(ctx: RenderContext, written: Written, stored: Stored) -> None:
    """Log a recorded picture and, when it is the sentence's picture now, emit its event."""
    logger = get_run_logger()
    prepared = written.prepared
    resolved = prepared.resolved
    label = f"{resolved.project_id}/{resolved.sentence_id}"
    if not stored.current:
        logger.warning(
            "%s: saved %s, but the sentence was edited while rendering; it stays dirty",
            label,
            stored.image_path,
        )
        return
    ctx.made_picture(prepared.graph_hash)
    if ctx.config.draft:  # the sentence's picture is still to come: nothing to announce
        saved = (label, stored.image_path, stored.render_s)
        logger.info("%s: draft saved %s (rendered in %.2f s)", *saved)
        return
    payload = {
        "project": resolved.project_id,
        "sentence": resolved.sentence_id,
        "image_file": stored.image_file,
        "seed": prepared.seed,
        # JavaScript rounds integers above 2**53: the exact seed for such consumers.
        "seed_text": str(prepared.seed),
        "workflow_hash": prepared.graph_hash,
    }
    for name in (IMAGE_COMPLETED, IMAGE_COMPLETED_DEPRECATED):
        best_effort(
            f"{label}: event {name}",
            emit_event,
            event=name,
            resource=sentence_resource(resolved.project_id, resolved.sentence_id),
            payload=payload,
        )
    logger.info("%s: saved %s (rendered in %.2f s)", label, stored.image_path, stored.render_s)

"""One sentence through the image tasks, in a row, on a lane this run does not hold.

prepare-image, then render-image (it claims the sentence in the store, so no batch renders
it at the same time, and renders it), then store-image: the batch's tasks with the batch's
retry policy (only what `is_retryable` accepts, the network's failures, is retried). No lane
lock or slot is taken here: the caller's session queues at the front (lane_choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from prefect.utilities.annotations import quote

from flows.lane_feed import Outcome
from storyboard.pipeline import Prepared, Stored, error_text
from tasks.context import BatchContext, retry_options
from tasks.images import RenderedImage, prepare_image, render_image, store_image


def render_one(
    ctx: BatchContext,
    project_id: str,
    sentence_id: str,
    reference_paths: Sequence[str] | None = None,
) -> Outcome:
    """Prepare, claim and render, store: the sentence's row of the results table."""
    options = retry_options(ctx.settings, ctx.stopping)
    # Prefect must neither hash nor walk the live context (see tasks.context).
    quoted = cast(BatchContext, quote(ctx))

    def failed(exc: BaseException) -> Outcome:
        attempts = ctx.take_attempts(project_id, sentence_id)
        return Outcome(project_id, sentence_id, "failed", attempts=attempts, error=error_text(exc))

    prepared = (
        prepare_image.with_options(**options)
        .submit(quoted, project_id, sentence_id, reference_paths)
        .result(raise_on_failure=False)
    )
    if isinstance(prepared, BaseException):
        return failed(prepared)
    rendered = (
        render_image.with_options(**options)
        .submit(quoted, cast(Prepared, quote(prepared)), project_id, sentence_id, reference_paths)
        .result(raise_on_failure=False)
    )
    if isinstance(rendered, BaseException):
        return failed(rendered)
    if rendered is None:
        return Outcome(
            project_id,
            sentence_id,
            "skipped",
            attempts=ctx.take_attempts(project_id, sentence_id),
            error="another run is rendering it or has just made it",
        )
    stored = (
        store_image.with_options(**options)
        .submit(quoted, cast(RenderedImage, quote(rendered)), sentence_id)
        .result(raise_on_failure=False)
    )
    if isinstance(stored, BaseException):
        return failed(stored)
    return _stored_row(ctx, project_id, sentence_id, cast(Stored, stored))


def _stored_row(ctx: BatchContext, project_id: str, sentence_id: str, stored: Stored) -> Outcome:
    return Outcome(
        project_id,
        sentence_id,
        ("cached" if stored.cached else "completed") if stored.current else "stale",
        seconds=round(stored.render_s, 3),
        queue_s=None if stored.queue_s is None else round(stored.queue_s, 3),
        attempts=ctx.take_attempts(project_id, sentence_id),
        seed=stored.seed,
        image_file=stored.image_file,
    )

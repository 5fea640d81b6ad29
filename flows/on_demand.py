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

from storyboard.pipeline import Prepared, Stored
from storyboard.scheduler import outcome
from storyboard.scheduler.outcome import Outcome, Target
from tasks.context import RenderContext, retry_options
from tasks.images import RenderedImage, prepare_image, render_image, store_image


def render_one(
    ctx: RenderContext,
    project_id: str,
    sentence_id: str,
    reference_paths: Sequence[str] | None = None,
) -> Outcome:
    """Prepare, claim and render, store: the sentence's row of the results table."""
    options = retry_options(ctx.settings, ctx.stopping)
    # Prefect must neither hash nor walk the live context (see tasks.context).
    quoted = cast(RenderContext, quote(ctx))
    target = Target(project_id, sentence_id, reference_paths)

    def attempts() -> int:
        return ctx.take_attempts(project_id, sentence_id)

    prepared = (
        prepare_image.with_options(**options)
        .submit(quoted, project_id, sentence_id, reference_paths)
        .result(raise_on_failure=False)
    )
    if isinstance(prepared, BaseException):
        return outcome.failed(target, prepared, attempts())
    rendered = (
        render_image.with_options(**options)
        .submit(quoted, cast(Prepared, quote(prepared)), project_id, sentence_id, reference_paths)
        .result(raise_on_failure=False)
    )
    if isinstance(rendered, BaseException):
        return outcome.failed(target, rendered, attempts())
    if rendered is None:
        return outcome.skipped(target, attempts())
    stored = (
        store_image.with_options(**options)
        .submit(quoted, cast(RenderedImage, quote(rendered)), sentence_id)
        .result(raise_on_failure=False)
    )
    if isinstance(stored, BaseException):
        return outcome.failed(target, stored, attempts())
    return outcome.stored(target, cast(Stored, stored), attempts())

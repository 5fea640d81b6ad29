"""Feeding one GPU lane from a flow: one render at a time, everything else around it.

Why not `generate_image.map(...)` over a tag limit of 1: Prefect then queues every task run
on the slot, and a waiting run polls for it with backoff -- measured median 2.8 s (max 8.5 s)
of idle GPU between renders, and one thread per mapped task. Here the flow submits the next
`generate_image` only when the previous one has returned, so its `gpu` slot is free when it
asks (immediate acquisition), while

    prepare-image  of sentence k+1   (read/upload references, inject, validate)
    store-image    of sentence k-1   (crop, PNG encode, atomic write, compare-and-set, event)

run on the same bounded thread pool during render k. Between two renders there is only
the task hand-off, the claim in the store and the submission to ComfyUI. Threads stay bounded
(the task runner's workers plus one event-loop thread per lane) however many sentences there
are, and at most `STORE_BACKLOG` rendered images wait in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prefect.futures import PrefectFuture
from prefect.utilities.annotations import quote

from storyboard.pipeline import Prepared, Stored, error_text
from tasks.context import BatchContext, retry_options
from tasks.images import RenderedImage, generate_image, prepare_image, store_image

STORE_BACKLOG = 2


@dataclass(frozen=True)
class Target:
    project_id: str
    sentence_id: str
    reference_paths: Sequence[str] | None = None


@dataclass(frozen=True)
class Outcome:
    """One row of the batch table."""

    project_id: str
    sentence_id: str
    status: str  # completed | stale | failed | skipped | valid | invalid
    seconds: float | None = None
    attempts: int = 0
    seed: int | None = None
    image_file: str | None = None
    error: str | None = None


OnOutcome = Callable[[Outcome], None]


def _failure(
    ctx: BatchContext, target: Target, exc: BaseException, status: str = "failed"
) -> Outcome:
    return Outcome(
        target.project_id,
        target.sentence_id,
        status,
        attempts=ctx.attempts(target.project_id, target.sentence_id),
        error=error_text(exc),
    )


def validate_all(ctx: BatchContext, targets: Sequence[Target], on_outcome: OnOutcome) -> None:
    """Dry run: prepare and validate every sentence against the server; render nothing and
    record nothing. Failures are reported, not retried."""
    prepare = prepare_image.with_options(retries=0)
    for target in targets:
        future = prepare.submit(
            quote(ctx),
            target.project_id,
            target.sentence_id,
            reference_paths=target.reference_paths,
            record_failure=False,
        )
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            on_outcome(_failure(ctx, target, result, "invalid"))
        else:
            on_outcome(Outcome(target.project_id, target.sentence_id, "valid", seed=result.seed))


def feed_lane(ctx: BatchContext, targets: Sequence[Target], on_outcome: OnOutcome) -> None:
    """Render every target on `ctx.lane`; call `on_outcome` once per target, in any order."""
    options = retry_options(ctx.settings)
    prepare = prepare_image.with_options(**options)
    generate = generate_image.with_options(**options, tags=[ctx.lane.limit_tag])
    store = store_image.with_options(**options)
    storing: deque[tuple[Target, PrefectFuture[Stored]]] = deque()

    def submit_prepare(target: Target) -> PrefectFuture[Prepared]:
        return prepare.submit(
            quote(ctx), target.project_id, target.sentence_id, target.reference_paths
        )

    def collect(block: bool) -> None:
        # Oldest first; bounded so rendered bytes never pile up in memory.
        while storing and (block or len(storing) > STORE_BACKLOG or _done(storing[0][1])):
            target, future = storing.popleft()
            on_outcome(_stored_outcome(ctx, target, future))

    rendering: tuple[Target, PrefectFuture[RenderedImage | None]] | None = None
    upcoming: Iterator[Target] = iter(targets)
    next_target = next(upcoming, None)
    preparing = submit_prepare(next_target) if next_target is not None else None
    while next_target is not None and preparing is not None:
        target, prepared_future = next_target, preparing
        prepared = prepared_future.result(raise_on_failure=False)
        finished = _finish_render(ctx, rendering, on_outcome)  # waits for the previous render
        rendering = None
        if isinstance(prepared, BaseException):
            on_outcome(_failure(ctx, target, prepared))
        else:
            rendering = (
                target,
                generate.submit(
                    quote(ctx),
                    quote(prepared),
                    target.project_id,
                    target.sentence_id,
                    target.reference_paths,
                ),
            )
        if finished is not None:
            storing.append(
                (finished[0], store.submit(quote(ctx), quote(finished[1]), finished[0].sentence_id))
            )
        next_target = next(upcoming, None)
        preparing = submit_prepare(next_target) if next_target is not None else None
        collect(block=False)
    finished = _finish_render(ctx, rendering, on_outcome)
    if finished is not None:
        storing.append(
            (finished[0], store.submit(quote(ctx), quote(finished[1]), finished[0].sentence_id))
        )
    collect(block=True)


def _done(future: PrefectFuture[Any]) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    return bool(wrapped is not None and wrapped.done())


def _finish_render(
    ctx: BatchContext,
    rendering: tuple[Target, PrefectFuture[RenderedImage | None]] | None,
    on_outcome: OnOutcome,
) -> tuple[Target, RenderedImage] | None:
    """Wait for the render in flight; return it when it has an image to store."""
    if rendering is None:
        return None
    target, future = rendering
    result = future.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        on_outcome(_failure(ctx, target, result))
        return None
    if result is None:
        on_outcome(
            Outcome(
                target.project_id,
                target.sentence_id,
                "skipped",
                attempts=ctx.attempts(target.project_id, target.sentence_id),
                error="another run is rendering this sentence",
            )
        )
        return None
    return target, result


def _stored_outcome(ctx: BatchContext, target: Target, future: PrefectFuture[Stored]) -> Outcome:
    attempts = ctx.attempts(target.project_id, target.sentence_id)
    result = future.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return Outcome(
            target.project_id,
            target.sentence_id,
            "failed",
            attempts=attempts,
            error=error_text(result),
        )
    return Outcome(
        target.project_id,
        target.sentence_id,
        "completed" if result.current else "stale",
        seconds=round(result.seconds, 3),
        attempts=attempts,
        seed=result.seed,
        image_file=result.image_file,
    )

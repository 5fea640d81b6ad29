"""Feeding one GPU lane from a flow: one render at a time, everything else around it.

The lane's guard (flows.gpu_limit) is an OS lock per ComfyUI server on this machine and its
Prefect concurrency limit (`tag:gpu`, limit 1). The feed takes both once, holds them (the slot
as a lease, renewed in the background) while it feeds the lane, and gives them back at the
end; a second batch, an on-demand run or any task tagged `gpu` waits meanwhile.

Why not a `gpu`-tagged task per render: each task run then acquires and releases the slot
through the API. On the SQLite database of a default Prefect server (and of the ephemeral
API) the acquisition right after the previous release is regularly refused with a retryable
503 ("database is locked") and the client backs off 2 s: measured median gap 2.5 s between
renders (duty cycle 23% at 0.5 s renders, ~80% at 10 s) -- the 2.8 s the issue measured.
Mapping tasks onto the limit adds a thread per task on top. So here the flow submits the next
`generate_image` while the previous one renders (at most LANE_DEPTH = 2 on the lane: ComfyUI
executes its FIFO queue one prompt at a time, so the next prompt starts the moment the
current one ends), without any slot traffic, while

    prepare-image  of sentence k+1   (read/upload references, inject, validate)
    store-image    of sentence k-1   (crop, PNG encode, atomic write, compare-and-set, event)

run on the same bounded thread pool during render k. Between two renders there is only
the task hand-off, the claim in the store and the submission to ComfyUI. Threads stay bounded
(the task runner's workers plus one event-loop thread per lane) however many sentences there
are, and at most `STORE_BACKLOG` rendered images wait in memory.

A server that stays unreachable past the reconnect wait (`ComfyUIUnavailableError`) ends
the feed: what is on it fails that attempt once, every sentence not yet submitted is
reported `not attempted` and stays dirty. A signal (Ctrl-C, SIGTERM) or any other error in
the feed stops it at once: `ctx.stopping` is set so no task retries or records, the session
is closed (our prompts leave the server, blocked waits end), and the feed waits briefly for
its tasks to let go, so the flow can then release this run's jobs (`Store.release_run`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.utilities.annotations import quote

from flows.gpu_limit import hold_lane
from storyboard.errors import ComfyUIUnavailableError
from storyboard.pipeline import Prepared, Stored, error_text
from tasks.context import BatchContext, retry_options
from tasks.images import RenderedImage, generate_image, prepare_image, store_image

STORE_BACKLOG = 2
# Prompts given to ComfyUI at once: the one it executes and the next, waiting in its queue.
# ComfyUI executes its queue one prompt at a time, so this never runs two at once.
LANE_DEPTH = 2
# The slot's lease is renewed while we feed; a killed feed frees it this long after on a server.
LANE_LEASE_S = 60.0
# How long a stopping feed waits for its tasks to let go once the session is closed.
STOP_WAIT_S = 5.0
NOT_ATTEMPTED: Literal["not attempted"] = "not attempted"

Status = Literal[
    "completed", "cached", "stale", "failed", "skipped", "not attempted", "valid", "invalid"
]
T = TypeVar("T")


def _quoted(value: T) -> T:
    """`quote(value)` typed as the value: Prefect unwraps the quote before the task runs, so
    the task receives `value` itself (quote only keeps Prefect from hashing or walking it)."""
    return cast(T, quote(value))


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
    status: Status
    seconds: float | None = None  # render time: the prompt's own execution on ComfyUI
    queue_s: float | None = None  # its wait in ComfyUI's queue, when it waited
    attempts: int = 0
    seed: int | None = None
    image_file: str | None = None
    error: str | None = None


OnOutcome = Callable[[Outcome], None]


def _failure(
    ctx: BatchContext, target: Target, exc: BaseException, status: Status = "failed"
) -> Outcome:
    return Outcome(
        target.project_id,
        target.sentence_id,
        status,
        attempts=ctx.take_attempts(target.project_id, target.sentence_id),
        error=error_text(exc),
    )


def validate_all(ctx: BatchContext, targets: Sequence[Target], on_outcome: OnOutcome) -> None:
    """Dry run: prepare and validate every sentence against the server; upload, render and
    record nothing. Failures are reported, not retried."""
    prepare = prepare_image.with_options(retries=0)
    for target in targets:
        future = prepare.submit(
            _quoted(ctx),
            target.project_id,
            target.sentence_id,
            reference_paths=target.reference_paths,
            record_failure=False,
            upload=False,
        )
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            on_outcome(_failure(ctx, target, result, "invalid"))
        else:
            on_outcome(Outcome(target.project_id, target.sentence_id, "valid", seed=result.seed))


def feed_lane(ctx: BatchContext, targets: Sequence[Target], on_outcome: OnOutcome) -> None:
    """Render every target on `ctx.lane`; call `on_outcome` once per target, in any order."""
    # One feeder per server (flows.gpu_limit): the lane lock of this machine, then the slot.
    with hold_lane(
        ctx.lane,
        ctx.run_id,
        wait_s=ctx.settings.queue_timeout_s,
        lease_s=LANE_LEASE_S,
        logger=get_run_logger(),
    ):
        _feed(ctx, targets, on_outcome)


def _not_attempted(ctx: BatchContext, target: Target, down: BaseException) -> Outcome:
    ctx.take_attempts(target.project_id, target.sentence_id)  # a prepare may have counted one
    return Outcome(
        target.project_id,
        target.sentence_id,
        NOT_ATTEMPTED,
        error=f"not submitted: ComfyUI at {ctx.lane.comfyui_url} is unreachable ({down})",
    )


def _stop(ctx: BatchContext, futures: Sequence[PrefectFuture[Any] | None]) -> None:
    """End the feed early: no more retries or records, our prompts off the server, and the
    tasks given a moment to let go of their jobs (released by the flow afterwards)."""
    ctx.stopping.set()
    ctx.session.close()
    wait([future for future in futures if future is not None], timeout=STOP_WAIT_S)


def _feed(ctx: BatchContext, targets: Sequence[Target], on_outcome: OnOutcome) -> None:
    options = retry_options(ctx.settings, ctx.stopping)
    prepare = prepare_image.with_options(**options)
    generate = generate_image.with_options(**options)
    store = store_image.with_options(**options)
    # Each stored future with its "finished" flag, so the backlog is checked without blocking.
    storing: deque[tuple[Target, PrefectFuture[Stored], threading.Event]] = deque()

    def submit_prepare(target: Target) -> PrefectFuture[Prepared]:
        return prepare.submit(
            _quoted(ctx), target.project_id, target.sentence_id, target.reference_paths
        )

    def collect(block: bool) -> None:
        # Oldest first; bounded so rendered bytes never pile up in memory.
        while storing and (block or len(storing) > STORE_BACKLOG or storing[0][2].is_set()):
            target, future, _ = storing.popleft()
            on_outcome(_stored_outcome(ctx, target, future))

    def submit_store(finished: tuple[Target, RenderedImage] | None) -> None:
        if finished is not None:
            target, result = finished
            future = store.submit(_quoted(ctx), _quoted(result), target.sentence_id)
            storing.append((target, future, _finished_flag(future)))

    # Renders submitted to the lane and not yet returned: the one ComfyUI is executing and
    # the next one, already in ComfyUI's queue so the GPU never waits for us.
    rendering: deque[tuple[Target, PrefectFuture[RenderedImage | None]]] = deque()
    upcoming: Iterator[Target] = iter(targets)
    next_target = next(upcoming, None)
    preparing = submit_prepare(next_target) if next_target is not None else None
    down: BaseException | None = None  # the lane's server is gone for good

    def finish(item: tuple[Target, PrefectFuture[RenderedImage | None]]) -> None:
        nonlocal down
        result = item[1].result(raise_on_failure=False)
        if isinstance(result, ComfyUIUnavailableError) and down is None:
            down = result
        submit_store(_finish_render(ctx, item, on_outcome))

    try:
        while next_target is not None and preparing is not None and down is None:
            target, prepared_future = next_target, preparing
            prepared = prepared_future.result(raise_on_failure=False)
            next_target = next(upcoming, None)
            preparing = submit_prepare(next_target) if next_target is not None else None
            if isinstance(prepared, BaseException):
                if isinstance(prepared, ComfyUIUnavailableError):
                    down = prepared
                on_outcome(_failure(ctx, target, prepared))
                continue
            while len(rendering) >= LANE_DEPTH and down is None:
                finish(_first_done(rendering))
            if down is not None:
                on_outcome(_not_attempted(ctx, target, down))
                break
            future = generate.submit(
                _quoted(ctx),
                _quoted(prepared),
                target.project_id,
                target.sentence_id,
                target.reference_paths,
            )
            rendering.append((target, future))
            collect(block=False)
        while rendering:
            finish(rendering.popleft())
        collect(block=True)
    except BaseException:
        in_flight = [preparing, *(f for _, f in rendering), *(f for _, f, _ in storing)]
        _stop(ctx, in_flight)
        raise
    if down is not None:
        _report_not_attempted(ctx, next_target, preparing, upcoming, down, on_outcome)


def _report_not_attempted(
    ctx: BatchContext,
    next_target: Target | None,
    preparing: PrefectFuture[Prepared] | None,
    upcoming: Iterator[Target],
    down: BaseException,
    on_outcome: OnOutcome,
) -> None:
    """Every target the feed never submitted, once its lane is gone: still dirty."""
    if next_target is not None and preparing is not None:
        prepared = preparing.result(raise_on_failure=False)  # its own failure, if any, stands
        if isinstance(prepared, BaseException):
            on_outcome(_failure(ctx, next_target, prepared))
        else:
            on_outcome(_not_attempted(ctx, next_target, down))
    for target in upcoming:
        on_outcome(_not_attempted(ctx, target, down))


def _first_done(
    rendering: deque[tuple[Target, PrefectFuture[RenderedImage | None]]],
) -> tuple[Target, PrefectFuture[RenderedImage | None]]:
    """Take the render that finishes first, not the oldest: a sentence waiting out its retry
    delay must not keep the next sentences off the GPU meanwhile."""
    first = next(as_completed([future for _, future in rendering]))
    index = next(i for i, (_, future) in enumerate(rendering) if future is first)
    taken = rendering[index]
    del rendering[index]
    return taken


def _finished_flag(future: PrefectFuture[Any]) -> threading.Event:
    """An event set once `future` is done (Prefect's public done callback)."""
    finished = threading.Event()
    future.add_done_callback(lambda _: finished.set())
    return finished


def _finish_render(
    ctx: BatchContext,
    rendering: tuple[Target, PrefectFuture[RenderedImage | None]],
    on_outcome: OnOutcome,
) -> tuple[Target, RenderedImage] | None:
    """Wait for a render; return it when it has an image to store."""
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
                attempts=ctx.take_attempts(target.project_id, target.sentence_id),
                error="another run is rendering it or has just made it",
            )
        )
        return None
    return target, result


def _stored_outcome(ctx: BatchContext, target: Target, future: PrefectFuture[Stored]) -> Outcome:
    attempts = ctx.take_attempts(target.project_id, target.sentence_id)
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
        ("cached" if result.cached else "completed") if result.current else "stale",
        seconds=round(result.render_s, 3),
        queue_s=None if result.queue_s is None else round(result.queue_s, 3),
        attempts=attempts,
        seed=result.seed,
        image_file=result.image_file,
    )

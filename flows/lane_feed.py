"""Feeding the GPU lanes of a batch: every lane busy, one render at a time on each.

A batch feeds every lane it can hold (flows.gpu_limit: the lane's OS lock on this machine
and its Prefect limit of 1, `tag:{lane.limit_tag}`): one lane alone is waited for
(`hold_lane`: with nowhere else to render, the batch can only wait its turn); of several, each
is tried without waiting (`try_hold_lane`), a lane another run holds is skipped and tried again
every LANE_RETRY_S while the batch runs.

Each held lane gets its own thread, its own context (`BatchContext.on_lane`: its session,
i.e. its own ComfyUI client) and pulls from one shared queue (flows.work_queue) whenever it
has room: at most LANE_DEPTH = 2 of our prompts on its server, the one ComfyUI executes and
the next, already waiting, so the GPU never waits for us and ComfyUI (which runs its FIFO
queue one prompt at a time) never runs two. A sentence is claimed in the store by one job
before it is prepared, in groups (flows.lane_groups: a lane claims a few it takes at once and
leaves the rest, claimed, in the queue for any lane), and taken by one lane; its picture is
recorded in a group too, on the batch's recorder thread. An edit made after the claim makes
the recorded picture stale: the sentence goes back to the queue once and is rendered again as
edited. The queue keeps a lane on sentences of
the same LoRA and references while any are left (warm models) and gives each sentence only
to lanes whose server has its model and LoRA (flows.lane_plan; a sentence no lane can
render fails before queueing).

Why not a `gpu`-tagged task per render: each task run then acquires and releases the slot
through the API. On the SQLite database of a default Prefect server (and of the ephemeral
API) the acquisition right after the previous release is regularly refused with a retryable
503 ("database is locked") and the client backs off 2 s: measured median gap 2.5 s between
renders (duty cycle 23% at 0.5 s renders, ~80% at 10 s). So each lane's thread submits the
next `render_image` while the previous one renders, without any slot traffic, while

    prepare-image  of sentence k+1   (read/upload references, inject, validate)
    store-image    of sentence k-1   (crop, PNG encode, atomic write; the recorder then does
                                      the compare-and-set and the event)

run on the flow's bounded thread pool during render k. A render waiting out its retry delay
(Prefect's task retry) holds no place on the server (`tasks.context.RetryWaits`): the lane
sends the next sentences meanwhile, and the retry takes a place again when it comes back.
Threads stay bounded (the task runner's workers plus two per lane: its feeder and its
session's event loop) however many sentences there are, and at most `STORE_BACKLOG` rendered
images per lane wait in memory.

A lane that dies -- its server unreachable past the reconnect wait (`ComfyUIUnavailableError`)
or DEAD_AFTER server-side failures in a row (connection, 5xx, timeout: not the sentence's
fault) -- is set aside while other lanes feed: its prompts are cancelled, its prepared and
queued sentences go back to the queue without spending an attempt (`Store.release_job`),
the other lanes finish them, and it is probed (`wait_until_up`, PROBE_WAIT_S, every
PROBE_EVERY_S; after failing prompts, COOL_DOWN_S first) and rejoins when it answers. With
one lane, or once no held lane that could render the rest is left feeding, the feed ends:
what was on a lost server fails that attempt once (one lane) or goes back unspent (several),
and every sentence not yet submitted is reported `not attempted` and stays dirty.

A signal (Ctrl-C, SIGTERM) or any other error stops it at once: `ctx.stopping` is set so
no task retries or records, every session is closed (our prompts leave the servers, blocked
waits end), and the feed waits briefly for its tasks to let go, so the flow can then release
this run's jobs (`Store.release_run`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.utilities.annotations import quote

from flows.lane_groups import START_LINE_WAIT_S, OnRecorded, Shared, claim_group
from flows.lane_plan import plan
from flows.target import Target
from flows.work_queue import Item, WorkQueue
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIServerError,
    ComfyUITimeoutError,
    ComfyUIUnavailableError,
    WorkflowError,
)
from storyboard.pipeline import (
    Prepared,
    Stored,
    Written,
    error_text,
)
from storyboard.store import ImageJob
from tasks.context import LANE_DEPTH, BatchContext, retry_options
from tasks.images import (
    GivenBack,
    RenderedImage,
    announce,
    prepare_image,
    render_image,
    store_image,
)

STORE_BACKLOG = 2
# The slot's lease is renewed while we feed; a killed feed frees it this long after on a server.
LANE_LEASE_S = 60.0
# How long a stopping feed waits for its tasks to let go once the session is closed.
STOP_WAIT_S = 5.0
# How often a lane waiting for room on its server looks whether the batch is ending: a
# backstop only, since a render ending (a stop closes the sessions, which ends them) and
# `RetryWaits.poke` wake it at once. At 0.1 s it was ten wake-ups a second per lane while
# its GPU rendered.
STOP_POLL_S = 1.0
# How often a lane at the start line looks whether its first prompt reached its server.
START_LINE_POLL_S = 0.01
NOT_ATTEMPTED: Literal["not attempted"] = "not attempted"

Status = Literal[
    "completed", "cached", "stale", "failed", "skipped", "not attempted", "valid", "invalid"
]
T = TypeVar("T")
K = TypeVar("K")


def _quoted(value: T) -> T:
    """`quote(value)` typed as the value: Prefect unwraps the quote before the task runs, so
    the task receives `value` itself (quote only keeps Prefect from hashing or walking it)."""
    return cast(T, quote(value))


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


def validate_all(
    lanes: Sequence[BatchContext], targets: Sequence[Target], on_outcome: OnOutcome
) -> None:
    """Dry run: prepare and validate every sentence against each lane that could render it;
    upload, render and record nothing. Failures are reported, not retried."""
    ctx = lanes[0]
    prepare = prepare_image.with_options(retries=0)
    planned = plan(lanes, [(t.project_id, t.sentence_id, t.reference_paths) for t in targets])
    for target, found in zip(targets, planned, strict=True):
        if found.refused is not None:
            error = WorkflowError(f"{target.project_id}/{target.sentence_id}: {found.refused}")
            on_outcome(_failure(ctx, target, error, "invalid"))
            continue
        result: Prepared | BaseException | None = None
        for lane in (c for c in lanes if c.lane.name in found.lanes):
            result = prepare.submit(
                _quoted(lane),
                target.project_id,
                target.sentence_id,
                reference_paths=target.reference_paths,
                record_failure=False,
                upload=False,
            ).result(raise_on_failure=False)
            if isinstance(result, BaseException):
                break
        if isinstance(result, BaseException):
            on_outcome(_failure(ctx, target, result, "invalid"))
        elif result is not None:
            on_outcome(Outcome(target.project_id, target.sentence_id, "valid", seed=result.seed))


# Server-side failures in a row (on different sentences) after which a lane is set aside.
DEAD_AFTER = 3
_SERVER_SIDE = (ComfyUIConnectionError, ComfyUIServerError, ComfyUITimeoutError)
_LANE_GONE = (ComfyUIUnavailableError, CancelledError)

Queue = WorkQueue[Target]
QItem = Item[Target]


def not_attempted(ctx: BatchContext, target: Target, down: BaseException) -> Outcome:
    ctx.take_attempts(target.project_id, target.sentence_id)  # a prepare may have counted one
    return Outcome(
        target.project_id,
        target.sentence_id,
        NOT_ATTEMPTED,
        error=f"not submitted: ComfyUI at {ctx.lane.comfyui_url} is unreachable ({down})",
    )


def stop(ctx: BatchContext, futures: Sequence[PrefectFuture[Any] | None]) -> None:
    """End the feed early: no more retries or records, our prompts off the server, and the
    tasks given a moment to let go of their jobs (released by the flow afterwards)."""
    ctx.stopping.set()
    ctx.session.close()
    wait([future for future in futures if future is not None], timeout=STOP_WAIT_S)


class LaneDown(Exception):
    """The lane a feed ran on is gone (the reason is its cause)."""


def feed(
    ctx: BatchContext, queue: Queue, on_outcome: OnOutcome, shared: Shared
) -> BaseException | None:
    """Feed `ctx.lane` from `queue` until it has nothing for this lane; the lane's failure
    when it died (its sentences then went back to the queue, or failed with one lane).

    Sentences are claimed as they are taken, a group at a time, and pictures recorded a group
    at a time once written (flows.lane_groups)."""
    options = retry_options(ctx.settings, ctx.stopping, ctx.lane_down)
    prepare = prepare_image.with_options(**options)
    generate = render_image.with_options(**options)
    store = store_image.with_options(**options)
    lane = ctx.lane.name
    storing: deque[tuple[QItem, PrefectFuture[Stored | Written], threading.Event]] = deque()
    rendering: deque[tuple[QItem, PrefectFuture[RenderedImage | GivenBack | None]]] = deque()
    sizes = shared.sizes
    down: BaseException | None = None
    server_failures = 0
    waits = ctx.retry_waits
    ended: set[int] = set()  # id() of the renders whose task has ended

    def room() -> bool:
        """A place on the server: renders waiting out a retry delay hold none."""
        return len(rendering) - waits.waiting < LANE_DEPTH

    def render_ended(future: PrefectFuture[RenderedImage | GivenBack | None]) -> None:
        with waits.changed:
            ended.add(id(future))
            waits.changed.notify_all()

    def ended_or_room() -> tuple[QItem, PrefectFuture[RenderedImage | GivenBack | None]] | None:
        """A render that has ended, or None once there is room (or the batch is ending)."""
        with waits.changed:
            while True:
                for index, entry in enumerate(rendering):
                    if id(entry[1]) in ended:
                        del rendering[index]
                        ended.discard(id(entry[1]))
                        return entry
                if room() or ctx.stopping.is_set():
                    return None
                waits.changed.wait(STOP_POLL_S)

    def show() -> None:
        now = rendering[0][0].value if rendering else None
        ctx.board.show(lane, None if now is None else f"{now.project_id}/{now.sentence_id}")

    def report(item: QItem, outcome: Outcome) -> None:
        on_outcome(outcome)
        queue.settle(item)

    def give_back(item: QItem) -> None:
        """Back to the queue for another lane, its job released: no attempt spent."""
        target = item.value
        ctx.store.release_job(ctx.run_id, target.project_id, target.sentence_id)
        ctx.take_attempts(target.project_id, target.sentence_id)
        queue.put_back(replace(item, value=replace(target, job=None)), without=lane)

    def take() -> QItem | None:
        """The next sentence for this lane, claimed: one the queue holds claimed already, or
        the first of a group claimed now, the rest of which goes back to the queue."""
        while True:
            first = queue.take(lane)
            if first is None or first.value.job is not None:
                return first
            group = [first]
            while len(group) < sizes.size:
                more = queue.take(lane, key=first.key)
                if more is None:
                    break
                if more.value.job is not None:
                    queue.put_back(more)
                    break
                group.append(more)
            mine: QItem | None = None
            for taken, job in zip(group, claim_group(ctx, [i.value for i in group]), strict=True):
                if isinstance(job, ImageJob):
                    claimed = replace(taken, value=replace(taken.value, job=job))
                    if mine is None:
                        mine = claimed
                    else:
                        queue.put_back(claimed)
                elif job is None:
                    report(taken, _skipped(ctx, taken.value))
                else:
                    report(taken, _failure(ctx, taken.value, job))
            if mine is not None:
                return mine

    def submit_prepare(item: QItem | None) -> PrefectFuture[Prepared] | None:
        if item is None:
            return None
        target = item.value
        return prepare.submit(
            _quoted(ctx),
            target.project_id,
            target.sentence_id,
            target.reference_paths,
            inputs=_quoted(target.inputs),
            job=_quoted(target.job),
        )

    def recorded(item: QItem, picture: Written | None) -> OnRecorded:
        """What to do once the recorder has recorded `picture` (or its write failed)."""

        def done(result: Stored | BaseException) -> None:
            if isinstance(result, BaseException) or picture is None:
                error = result if isinstance(result, BaseException) else None
                report(item, _failure(ctx, item.value, error or LaneDown("nothing written")))
            elif not result.current and shared.first_edit(item.value):
                # Edited after its claim: rendered again, as edited, in this batch (once).
                ctx.take_attempts(item.value.project_id, item.value.sentence_id)
                get_run_logger().info(
                    "%s: edited while it rendered; rendering it again", picture.prepared.label
                )
                queue.put_back(replace(item, value=replace(item.value, inputs=None, job=None)))
            else:
                announce(ctx, picture, result)
                report(item, _stored_outcome(ctx, item.value, result))

        return done

    def hand_over(
        item: QItem, handed_over: threading.Event
    ) -> Callable[[PrefectFuture[Stored | Written]], None]:
        """The store task's done callback: its picture (or failure) to the recorder."""

        def then(future: PrefectFuture[Stored | Written]) -> None:
            try:
                result = future.result(raise_on_failure=False)
                picture = result if isinstance(result, Written) else None
                failure = result if isinstance(result, BaseException) else None
                shared.recorder.add(ctx, picture or failure or LaneDown("no picture"),
                                    recorded(item, picture))  # fmt: skip
            finally:
                handed_over.set()

        return then

    def collect(block: bool) -> None:
        while storing and (block or len(storing) > STORE_BACKLOG or storing[0][2].is_set()):
            _, _, handed_over = storing.popleft()
            handed_over.wait()  # its task is done and its picture with the recorder
        if block:
            shared.recorder.flush()

    def lane_failed(exc: BaseException) -> None:
        nonlocal down, server_failures
        if isinstance(exc, ComfyUIUnavailableError) and down is None:
            down = exc
        elif ctx.requeue_when_down and isinstance(exc, _SERVER_SIDE):
            server_failures += 1
            if server_failures >= DEAD_AFTER and down is None:
                down = LaneDown(f"{DEAD_AFTER} server-side failures in a row, the last: {exc}")
        if down is not None and ctx.requeue_when_down and not ctx.lane_down.is_set():
            ctx.lane_down.set()  # nothing more is recorded or retried on this lane
            ctx.session.cancel_all()

    def finish(entry: tuple[QItem, PrefectFuture[RenderedImage | GivenBack | None]]) -> None:
        nonlocal server_failures
        item, future = entry
        ended.discard(id(future))
        waits.end((item.value.project_id, item.value.sentence_id))
        result = _outcome_of(future)
        sizes.finished()
        show()
        if isinstance(result, BaseException):
            withheld = ctx.requeue_when_down and (
                isinstance(result, _LANE_GONE) or ctx.lane_down.is_set()
            )
            lane_failed(result)
            if withheld:
                give_back(item)
                return
        else:
            server_failures = 0
        finished = _finish_render(ctx, (item.value, future), lambda o: report(item, o))
        if finished is not None:
            target, image = finished
            stored = store.submit(_quoted(ctx), _quoted(image), target.sentence_id, record=False)
            handed_over = threading.Event()
            stored.add_done_callback(hand_over(item, handed_over))
            storing.append((item, stored, handed_over))

    def wait_at_start_line(first: PrefectFuture[RenderedImage | GivenBack | None]) -> None:
        """Our first prompt is on its way: once the server has it, let the lanes started with
        us send theirs (while it renders) before we claim and prepare our second."""
        rendered = threading.Event()

        def ended(_: PrefectFuture[RenderedImage | GivenBack | None]) -> None:
            rendered.set()
            shared.start_line.wake()

        first.add_done_callback(ended)
        deadline = time.monotonic() + START_LINE_WAIT_S
        while not (ctx.prompt_queued.is_set() or rendered.is_set()) and time.monotonic() < deadline:
            ctx.prompt_queued.wait(START_LINE_POLL_S)
        shared.start_line.leave(lane)
        shared.start_line.wait(rendered.is_set, max(0.0, deadline - time.monotonic()))

    first_prompt = True
    item = take()
    preparing = submit_prepare(item)
    try:
        while item is not None and preparing is not None and down is None:
            if ctx.stopping.is_set():  # the batch is ending: the flow releases the jobs
                collect(block=True)  # what is written is recorded, so it is not made again
                return down
            current, prepared_future = item, preparing
            prepared = prepared_future.result(raise_on_failure=False)
            # The GPU first: with room on the server the render goes out before the next
            # sentence is claimed and prepared (at a batch's start every lane's first prompt
            # then waits for no lane's second prepare); without room, the next is prepared
            # while the server works.
            has_room = not isinstance(prepared, BaseException) and room()
            if not has_room:
                item = take()
                preparing = submit_prepare(item)
            if isinstance(prepared, BaseException):
                lane_failed(prepared)
                if ctx.requeue_when_down and (
                    isinstance(prepared, _LANE_GONE) or ctx.lane_down.is_set()
                ):
                    give_back(current)
                else:
                    report(current, _failure(ctx, current.value, prepared))
                continue
            while not room() and down is None and not ctx.stopping.is_set():
                done = ended_or_room()
                if done is not None:
                    finish(done)
            if down is not None:
                if ctx.requeue_when_down:
                    give_back(current)
                else:
                    report(current, not_attempted(ctx, current.value, down))
                break
            target = current.value
            future = generate.submit(
                _quoted(ctx),
                _quoted(prepared),
                target.project_id,
                target.sentence_id,
                target.reference_paths,
                job=_quoted(target.job),
            )
            future.add_done_callback(render_ended)
            rendering.append((current, future))
            show()
            if has_room:
                if first_prompt:
                    first_prompt = False
                    wait_at_start_line(future)
                item = take()
                preparing = submit_prepare(item)
            collect(block=False)
        while rendering:
            finish(_first_done(rendering))
        collect(block=True)
    except BaseException:
        in_flight = [preparing, *(f for _, f in rendering), *(f for _, f, _ in storing)]
        stop(ctx, in_flight)
        raise
    if item is not None and preparing is not None and not ctx.stopping.is_set():
        prepared = preparing.result(raise_on_failure=False)
        if isinstance(prepared, BaseException) and not ctx.requeue_when_down:
            report(item, _failure(ctx, item.value, prepared))  # its own failure stands
        elif ctx.requeue_when_down:
            give_back(item)
        else:
            report(item, not_attempted(ctx, item.value, down or LaneDown("the lane is gone")))
    return down


def _skipped(ctx: BatchContext, target: Target) -> Outcome:
    return Outcome(
        target.project_id,
        target.sentence_id,
        "skipped",
        attempts=ctx.take_attempts(target.project_id, target.sentence_id),
        error="another run is rendering it or has just made it",
    )


def _first_done(
    rendering: deque[tuple[K, PrefectFuture[RenderedImage | GivenBack | None]]],
) -> tuple[K, PrefectFuture[RenderedImage | GivenBack | None]]:
    """Take the render that finishes first, not the oldest: a sentence waiting out its retry
    delay must not keep the next sentences off the GPU meanwhile."""
    first = next(as_completed([future for _, future in rendering]))
    index = next(i for i, (_, future) in enumerate(rendering) if future is first)
    taken = rendering[index]
    del rendering[index]
    return taken


def _outcome_of(
    future: PrefectFuture[RenderedImage | GivenBack | None],
) -> RenderedImage | BaseException | None:
    """A render's result; a render its lane gave back as the lane's failure that caused it."""
    result = future.result(raise_on_failure=False)
    return result.cause if isinstance(result, GivenBack) else result


def _finish_render(
    ctx: BatchContext,
    rendering: tuple[Target, PrefectFuture[RenderedImage | GivenBack | None]],
    on_outcome: OnOutcome,
) -> tuple[Target, RenderedImage] | None:
    """Wait for a render; return it when it has an image to store."""
    target, future = rendering
    result = _outcome_of(future)
    if isinstance(result, BaseException):
        on_outcome(_failure(ctx, target, result))
        return None
    if result is None:
        on_outcome(_skipped(ctx, target))
        return None
    return target, result


def _stored_outcome(ctx: BatchContext, target: Target, result: Stored) -> Outcome:
    return Outcome(
        target.project_id,
        target.sentence_id,
        ("cached" if result.cached else "completed") if result.current else "stale",
        seconds=round(result.render_s, 3),
        queue_s=None if result.queue_s is None else round(result.queue_s, 3),
        attempts=ctx.take_attempts(target.project_id, target.sentence_id),
        seed=result.seed,
        image_file=result.image_file,
    )

"""Feeding one GPU lane of a batch: the execution of what storyboard.scheduler decides.

A batch feeds every lane it can hold (flows.gpu_limit: the lane's OS lock on this machine
and its Prefect limit of 1, `tag:{lane.limit_tag}`): one lane alone is waited for
(`hold_lane`: with nowhere else to render, the batch can only wait its turn); of several, each
is tried without waiting (`try_hold_lane`), a lane another run holds is skipped and tried again
every LANE_RETRY_S while the batch runs (flows.lane_farm).

Each held lane gets its own thread, its own context (`BatchContext.on_lane`: its session,
i.e. its own ComfyUI client, and its health) and pulls from one shared queue
(storyboard.scheduler.work_queue: warm models, per-lane eligibility) whenever it has room: at
most LANE_DEPTH = 2 of our prompts on its server, the one ComfyUI executes and the next,
already waiting, so the GPU never waits for us and ComfyUI (which runs its FIFO queue one
prompt at a time) never runs two. A sentence is claimed in the store by one job before it is
prepared, in groups (flows.lane_groups; how many: storyboard.scheduler.pacing.GroupSize, a
lane claims a few it takes at once and leaves the rest, claimed, in the queue for any lane),
and taken by one lane; its picture is recorded in a group too, on the batch's recorder
thread. An edit made after the claim makes the recorded picture stale: the sentence goes back
to the queue once and is rendered again as edited.

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

Every failure on the lane goes to its health (storyboard.scheduler.health), which decides:
the sentence is reported or given back to the queue without spending an attempt
(`Store.release_job`), and the lane keeps feeding or is down. A lane down gets its prompts
cancelled, the feed ends, and what it took but did not send is given back (several lanes)
or reported (one lane); flows.lane_farm then sets it aside and probes it until it rejoins.

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
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar, cast

from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.utilities.annotations import quote

from flows.lane_groups import OnRecorded, Shared, claim_group
from storyboard.errors import WorkflowError
from storyboard.pipeline import Prepared, Stored, Written
from storyboard.scheduler import outcome
from storyboard.scheduler.health import LaneDown
from storyboard.scheduler.outcome import Outcome, Status, Target
from storyboard.scheduler.pacing import START_LINE_WAIT_S
from storyboard.scheduler.plan import Planned, plan
from storyboard.scheduler.work_queue import Item, WorkQueue
from storyboard.store import ImageJob
from tasks.context import LANE_DEPTH, BatchContext, retry_options
from tasks.images import (
    GivenBack,
    RenderedImage,
    Stopped,
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

T = TypeVar("T")
K = TypeVar("K")
OnOutcome = Callable[[Outcome], None]
Queue = WorkQueue[Target]
QItem = Item[Target]
Render = PrefectFuture[RenderedImage | GivenBack | Stopped | None]
Preparing = PrefectFuture[Prepared | Stopped]
Storing = PrefectFuture[Stored | Written | Stopped]


def _result(future: PrefectFuture[T | Stopped]) -> T | BaseException:
    """A task's value, or the exception it ended with. A task that returned its `Stopped`
    state comes back as the error that state carries (Prefect resolves it), never as a
    State."""
    result = future.result(raise_on_failure=False)
    assert not isinstance(result, State), result
    return result


def _quoted(value: T) -> T:
    """`quote(value)` typed as the value: Prefect unwraps the quote before the task runs, so
    the task receives `value` itself (quote only keeps Prefect from hashing or walking it)."""
    return cast(T, quote(value))


def plan_for(lanes: Sequence[BatchContext], targets: Sequence[Target]) -> list[Planned]:
    """The scheduler's plan of `targets` over `lanes`, each lane's /object_info read by its
    own session."""
    first = lanes[0]
    return plan(
        {ctx.lane.name: ctx.session.object_info for ctx in lanes},
        first.store,
        first.workflow,
        first.config.frame,
        [(t.project_id, t.sentence_id, t.reference_paths) for t in targets],
    )


def failed(
    ctx: BatchContext, target: Target, exc: BaseException, status: Status = "failed"
) -> Outcome:
    """The sentence's own failure, with the attempts the context counted for it; once the
    batch is stopping, not its failure: stopped, released."""
    attempts = _attempts(ctx, target)
    if ctx.stopping.is_set() and status == "failed":
        return outcome.stopped(target)
    return outcome.failed(target, exc, attempts, status)


def unsent(ctx: BatchContext, target: Target, down: BaseException) -> Outcome:
    """Not attempted: its lane is gone (a prepare may have counted an attempt: forgotten)."""
    _attempts(ctx, target)
    return outcome.not_attempted(target, ctx.lane.comfyui_url, down)


def _attempts(ctx: BatchContext, target: Target) -> int:
    return ctx.take_attempts(target.project_id, target.sentence_id)


def validate_all(
    lanes: Sequence[BatchContext], targets: Sequence[Target], on_outcome: OnOutcome
) -> None:
    """Dry run: prepare and validate every sentence against each lane that could render it;
    upload, render and record nothing. Failures are reported, not retried."""
    ctx = lanes[0]
    prepare = prepare_image.with_options(retries=0)
    for target, found in zip(targets, plan_for(lanes, targets), strict=True):
        if found.refused is not None:
            error = WorkflowError(f"{target.project_id}/{target.sentence_id}: {found.refused}")
            on_outcome(failed(ctx, target, error, "invalid"))
            continue
        result: Prepared | BaseException | None = None
        for lane in (c for c in lanes if c.lane.name in found.lanes):
            preparing = prepare.submit(
                _quoted(lane),
                target.project_id,
                target.sentence_id,
                reference_paths=target.reference_paths,
                record_failure=False,
                upload=False,
            )
            result = _result(preparing)
            if isinstance(result, BaseException):
                break
        if isinstance(result, BaseException):
            on_outcome(failed(ctx, target, result, "invalid"))
        elif result is not None:
            on_outcome(Outcome(target.project_id, target.sentence_id, "valid", seed=result.seed))


def stop(ctx: BatchContext, futures: Sequence[PrefectFuture[Any] | None]) -> None:
    """End the feed early: no more retries or records, our prompts off the server, and the
    tasks given a moment to let go of their jobs (released by the flow afterwards)."""
    ctx.stopping.set()
    ctx.session.close()
    wait([future for future in futures if future is not None], timeout=STOP_WAIT_S)


def feed(
    ctx: BatchContext, queue: Queue, on_outcome: OnOutcome, shared: Shared
) -> BaseException | None:
    """Feed `ctx.lane` from `queue` until it has nothing for this lane; the lane's failure
    when it went down (its sentences then went back to the queue, or failed with one lane).

    The GPU first: with room on the server the render goes out before the next sentence is
    claimed and prepared (at a batch's start every lane's first prompt then waits for no
    lane's second prepare); without room, the next is prepared while the server works."""
    health = ctx.health
    health.start_feed()
    lane = _Feeder(ctx, queue, on_outcome, shared)
    first_prompt = True
    item = lane.take()
    preparing = lane.prepare(item)
    try:
        while item is not None and preparing is not None and health.down is None:
            if ctx.stopping.is_set():  # the batch is ending: the flow releases the jobs
                lane.collect(block=True)  # what is written is recorded, so it is not made again
                return health.down
            current = item
            prepared = _result(preparing)
            has_room = not isinstance(prepared, BaseException) and lane.room()
            if not has_room:
                item = lane.take()
                preparing = lane.prepare(item)
            if isinstance(prepared, BaseException):
                lane.prepare_failed(current, prepared)
                continue
            lane.wait_for_room()
            if health.down is not None:
                lane.leave(current)
                break
            render = lane.render(current, prepared)
            if has_room:
                if first_prompt:
                    first_prompt = False
                    lane.wait_at_start_line(render)
                item = lane.take()
                preparing = lane.prepare(item)
            lane.collect(block=False)
        lane.finish_all()
    except BaseException:
        lane.stop(preparing)
        raise
    if item is not None and preparing is not None and not ctx.stopping.is_set():
        prepared = _result(preparing)
        lane.leave(item, prepared if isinstance(prepared, BaseException) else None)
    return health.down


class _Feeder:
    """One feed's tasks in flight on its lane, and what it does with each result."""

    def __init__(self, ctx: BatchContext, queue: Queue, on_outcome: OnOutcome, shared: Shared):
        options = retry_options(ctx.settings, ctx.stopping, ctx.health.lane_down)
        self._prepare = prepare_image.with_options(**options)
        self._render = render_image.with_options(**options)
        self._store = store_image.with_options(**options)
        self.ctx, self.queue, self.on_outcome, self.shared = ctx, queue, on_outcome, shared
        self.name = ctx.lane.name
        self.storing: deque[tuple[QItem, Storing, threading.Event]] = deque()
        self.rendering: deque[tuple[QItem, Render]] = deque()
        self.ended: set[int] = set()  # id() of the renders whose task has ended

    # -- the queue and the store's claims

    def take(self) -> QItem | None:
        """The next sentence for this lane, claimed: one the queue holds claimed already, or
        the first of a group claimed now, the rest of which goes back to the queue."""
        queue = self.queue
        while True:
            first = queue.take(self.name)
            if first is None or first.value.job is not None:
                return first
            group = [first]
            while len(group) < self.shared.sizes.size:
                more = queue.take(self.name, key=first.key)
                if more is None:
                    break
                if more.value.job is not None:
                    queue.put_back(more)
                    break
                group.append(more)
            mine: QItem | None = None
            claims = claim_group(self.ctx, [i.value for i in group])
            for taken, job in zip(group, claims, strict=True):
                if isinstance(job, ImageJob):
                    claimed = replace(taken, value=replace(taken.value, job=job))
                    if mine is None:
                        mine = claimed
                    else:
                        queue.put_back(claimed)
                elif job is None:
                    self.report(taken, outcome.skipped(taken.value, self.attempts(taken)))
                else:
                    self.report(taken, failed(self.ctx, taken.value, job))
            if mine is not None:
                return mine

    def attempts(self, item: QItem) -> int:
        return _attempts(self.ctx, item.value)

    def report(self, item: QItem, row: Outcome) -> None:
        self.on_outcome(row)
        self.queue.settle(item)

    def give_back(self, item: QItem) -> None:
        """Back to the queue for another lane, its job released: no attempt spent."""
        target = item.value
        self.ctx.store.release_job(self.ctx.run_id, target.project_id, target.sentence_id)
        self.attempts(item)
        self.queue.put_back(replace(item, value=replace(target, job=None)), without=self.name)

    def leave(self, item: QItem, prepare_failure: BaseException | None = None) -> None:
        """A sentence taken and not sent, the lane down: as its health says."""
        match self.ctx.health.leftover(prepare_failure):
            case "give back":
                self.give_back(item)
            case "fail":
                assert prepare_failure is not None
                self.report(item, failed(self.ctx, item.value, prepare_failure))
            case "not attempted":
                down = self.ctx.health.down or LaneDown("the lane is gone")
                self.report(item, unsent(self.ctx, item.value, down))

    # -- the tasks

    def prepare(self, item: QItem | None) -> Preparing | None:
        if item is None:
            return None
        target = item.value
        return self._prepare.submit(
            _quoted(self.ctx),
            target.project_id,
            target.sentence_id,
            target.reference_paths,
            inputs=_quoted(target.inputs),
            job=_quoted(target.job),
        )

    def prepare_failed(self, item: QItem, exc: BaseException) -> None:
        verdict = self.ctx.health.prepare_failed(exc)
        if verdict.set_aside:
            self.ctx.session.cancel_all()  # nothing more is recorded or retried on this lane
        if verdict.give_back:
            self.give_back(item)
        else:
            self.report(item, failed(self.ctx, item.value, exc))

    def render(self, item: QItem, prepared: Prepared) -> Render:
        target = item.value
        future = self._render.submit(
            _quoted(self.ctx),
            _quoted(prepared),
            target.project_id,
            target.sentence_id,
            target.reference_paths,
            job=_quoted(target.job),
        )
        future.add_done_callback(self._render_ended)
        self.rendering.append((item, future))
        self.show()
        return future

    def show(self) -> None:
        now = self.rendering[0][0].value if self.rendering else None
        label = None if now is None else f"{now.project_id}/{now.sentence_id}"
        self.ctx.board.show(self.name, label)

    def room(self) -> bool:
        """A place on the server: renders waiting out a retry delay hold none."""
        return len(self.rendering) - self.ctx.retry_waits.waiting < LANE_DEPTH

    def _render_ended(self, future: Render) -> None:
        waits = self.ctx.retry_waits
        with waits.changed:
            self.ended.add(id(future))
            waits.changed.notify_all()

    def wait_for_room(self) -> None:
        """Finish renders as they end until there is room, the lane is down or the batch is
        ending."""
        ctx = self.ctx
        while not self.room() and ctx.health.down is None and not ctx.stopping.is_set():
            done = self._ended_or_room()
            if done is not None:
                self.finish(done)

    def _ended_or_room(self) -> tuple[QItem, Render] | None:
        """A render that has ended, or None once there is room (or the batch is ending)."""
        waits = self.ctx.retry_waits
        with waits.changed:
            while True:
                for index, entry in enumerate(self.rendering):
                    if id(entry[1]) in self.ended:
                        del self.rendering[index]
                        self.ended.discard(id(entry[1]))
                        return entry
                if self.room() or self.ctx.stopping.is_set():
                    return None
                waits.changed.wait(STOP_POLL_S)

    def finish_all(self) -> None:
        while self.rendering:
            self.finish(_first_done(self.rendering))
        self.collect(block=True)

    def finish(self, entry: tuple[QItem, Render]) -> None:
        """A render has ended: its health event, then its picture to the store task."""
        ctx = self.ctx
        item, future = entry
        target = item.value
        self.ended.discard(id(future))
        ctx.retry_waits.end((target.project_id, target.sentence_id))
        result = _outcome_of(future)
        self.shared.sizes.finished()
        self.show()
        if isinstance(result, BaseException):
            verdict = ctx.health.render_failed(result)
            if verdict.set_aside:
                ctx.session.cancel_all()  # nothing more is recorded or retried on this lane
            if verdict.give_back:
                self.give_back(item)
            else:
                self.report(item, failed(ctx, target, result))
            return
        ctx.health.succeeded()
        if result is None:
            self.report(item, outcome.skipped(target, self.attempts(item)))
            return
        stored = self._store.submit(_quoted(ctx), _quoted(result), target.sentence_id, record=False)
        handed_over = threading.Event()
        stored.add_done_callback(partial(self._hand_over, item, handed_over))
        self.storing.append((item, stored, handed_over))

    def _hand_over(self, item: QItem, handed_over: threading.Event, future: Storing) -> None:
        """The store task's done callback: its picture (or failure) to the recorder."""
        try:
            result = future.result(raise_on_failure=False)  # a Stopped end: its error
            picture = result if isinstance(result, Written) else None
            failure = result if isinstance(result, BaseException) else None
            done: OnRecorded = partial(self._recorded, item, picture)
            self.shared.recorder.add(self.ctx, picture or failure or LaneDown("no picture"), done)
        finally:
            handed_over.set()

    def _recorded(
        self, item: QItem, picture: Written | None, result: Stored | BaseException
    ) -> None:
        """The recorder has recorded `picture` (or its write failed)."""
        ctx, target = self.ctx, item.value
        if isinstance(result, BaseException) or picture is None:
            error = result if isinstance(result, BaseException) else None
            self.report(item, failed(ctx, target, error or LaneDown("nothing written")))
        elif not result.current and self.queue.first_redo(item):
            # Edited after its claim: rendered again, as edited, in this batch (once).
            self.attempts(item)
            get_run_logger().info(
                "%s: edited while it rendered; rendering it again", picture.prepared.label
            )
            self.queue.put_back(replace(item, value=replace(target, inputs=None, job=None)))
        else:
            announce(ctx, picture, result)
            self.report(item, outcome.stored(target, result, self.attempts(item)))

    def collect(self, block: bool) -> None:
        storing = self.storing
        while storing and (block or len(storing) > STORE_BACKLOG or storing[0][2].is_set()):
            _, _, handed_over = storing.popleft()
            handed_over.wait()  # its task is done and its picture with the recorder
        if block:
            self.shared.recorder.flush()

    def wait_at_start_line(self, first: Render) -> None:
        """Our first prompt is on its way: once the server has it, let the lanes started with
        us send theirs (while it renders) before we claim and prepare our second."""
        ctx, start_line = self.ctx, self.shared.start_line
        rendered = threading.Event()
        first.add_done_callback(partial(_first_rendered, rendered, start_line.wake))
        deadline = time.monotonic() + START_LINE_WAIT_S
        while not (ctx.prompt_queued.is_set() or rendered.is_set()) and time.monotonic() < deadline:
            ctx.prompt_queued.wait(START_LINE_POLL_S)
        start_line.leave(self.name)
        start_line.wait(rendered.is_set, max(0.0, deadline - time.monotonic()))

    def stop(self, preparing: Preparing | None) -> None:
        in_flight = [preparing, *(f for _, f in self.rendering), *(f for _, f, _ in self.storing)]
        stop(self.ctx, in_flight)


def _first_rendered(rendered: threading.Event, wake: Callable[[], None], _: Render) -> None:
    rendered.set()
    wake()


def _first_done(rendering: deque[tuple[K, Render]]) -> tuple[K, Render]:
    """Take the render that finishes first, not the oldest: a sentence waiting out its retry
    delay must not keep the next sentences off the GPU meanwhile."""
    first = next(as_completed([future for _, future in rendering]))
    index = next(i for i, (_, future) in enumerate(rendering) if future is first)
    taken = rendering[index]
    del rendering[index]
    return taken


def _outcome_of(future: Render) -> RenderedImage | BaseException | None:
    """A render's result; a render its lane gave back as the lane's failure that caused it."""
    result = _result(future)
    return result.cause if isinstance(result, GivenBack) else result

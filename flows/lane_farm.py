"""One batch over every lane it can hold: the threads of flows.lane_feed, and their lanes.

`feed_lanes` plans the queue (flows.lane_plan), holds what it can of the lanes, starts a
feeder thread per held lane, and watches them from the flow's thread: it retries the
lanes other runs hold, notices when every held lane is down, or every one that could render
what is left (the batch then ends, the rest `not attempted`), and on a signal stops every
lane at once. Feeder threads run in a copy of the flow run's context, so their task
submissions and logs belong to this flow run.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from prefect import get_run_logger

from flows.gpu_limit import hold_lane, try_hold_lanes
from flows.lane_feed import (
    LANE_LEASE_S,
    STOP_WAIT_S,
    LaneDown,
    OnOutcome,
    Outcome,
    feed,
    not_attempted,
)
from flows.lane_groups import Shared
from flows.lane_plan import plan
from flows.target import Target
from flows.work_queue import Item, WorkQueue
from storyboard.errors import ComfyUIError, LaneBusyError
from storyboard.pipeline import error_text, record_failure
from tasks.context import BatchContext

# A lane another run holds is tried again this often while the batch runs.
LANE_RETRY_S = 1.0
# A set-aside lane is asked whether it is back this often, each time waiting this long.
PROBE_EVERY_S = 1.0
PROBE_WAIT_S = 2.0
# A lane set aside for failing prompts (it still answers) is left alone this long before
# its probes start, or it would rejoin at once and fail the next ones too.
COOL_DOWN_S = 30.0
WATCH_S = 0.1  # the flow thread's tick: short, so a signal ends the batch at once


@dataclass
class LaneFeed:
    ctx: BatchContext
    shared: Shared  # the batch's, one for all its lanes
    held: bool = False  # its lock and slot, in the batch's `holding` stack
    thread: threading.Thread | None = None
    down: BaseException | None = None  # set aside, being probed
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def feeding(self) -> bool:
        return self.thread is not None and not self.ended.is_set() and self.down is None


def feed_lanes(
    ctx: BatchContext,
    lanes: Sequence[BatchContext],
    targets: Sequence[Target],
    on_outcome: OnOutcome,
) -> list[str]:
    """Render every target on `lanes`; call `on_outcome` once per target (from any lane's
    thread, one at a time). Returns the servers that were down when the batch ended."""
    logger = get_run_logger()
    lock = threading.Lock()

    def reported(outcome: Outcome) -> None:
        with lock:
            on_outcome(outcome)

    planned = plan(lanes, [(t.project_id, t.sentence_id, t.reference_paths) for t in targets])
    items: list[Item[Target]] = []
    for order, (target, found) in enumerate(zip(targets, planned, strict=True)):
        if found.refused is None:
            items.append(Item(order, target, found.key, found.lanes))
        else:
            reported(_refused(ctx, target, found.refused))
    queue: WorkQueue[Target] = WorkQueue(items)
    shared = Shared().start()
    feeds = [LaneFeed(lane, shared=shared) for lane in lanes]
    holding = ExitStack()  # every lane held, let go when the batch ends
    try:
        if len(feeds) == 1:
            with hold_lane(
                feeds[0].ctx.lane,
                ctx.run_id,
                wait_s=ctx.settings.queue_timeout_s,
                lease_s=LANE_LEASE_S,
                logger=logger,
            ):
                _run(feeds[0], queue, reported)
                _watch(ctx, feeds, queue, reported, holding)
        else:
            _hold_first(ctx, feeds, queue, reported, holding)
            _watch(ctx, feeds, queue, reported, holding)
    except BaseException:
        ctx.stopping.set()
        for lane_feed in feeds:
            lane_feed.ctx.retry_waits.poke()  # a feed waiting for room sees the stop now
            lane_feed.ctx.session.close()
        _join(feeds, STOP_WAIT_S)
        with contextlib.suppress(Exception):  # the error that stopped the batch is the one
            shared.close()
        raise
    finally:
        holding.close()
    for lane_feed in feeds:  # a lane's error stopped the batch: the feeds see it now
        lane_feed.ctx.retry_waits.poke()
    try:
        _join(feeds, None)
    finally:
        shared.close()
    for lane_feed in feeds:
        if lane_feed.error is not None:
            raise lane_feed.error
    down = [f for f in feeds if f.down is not None]
    for item in queue.drain():
        reason = down[0] if down else None
        target = item.value
        if reason is not None and reason.down is not None:
            reported(not_attempted(reason.ctx, target, reason.down))
        else:
            reported(not_attempted(ctx, target, LaneBusyError("no lane left to render it")))
    return [f.ctx.lane.comfyui_url for f in down]


def _refused(ctx: BatchContext, target: Target, why: str) -> Outcome:
    error = ComfyUIError(f"{target.project_id}/{target.sentence_id}: {why}")
    record_failure(
        ctx.store,
        target.project_id,
        target.sentence_id,
        error,
        job=None,
        final=True,
        run_id=ctx.run_id,
        attempt=1,
        stale_after_s=ctx.stale_after_s,
    )
    ctx.take_attempts(target.project_id, target.sentence_id)
    return Outcome(
        target.project_id, target.sentence_id, "failed", attempts=1, error=error_text(error)
    )


def _hold_first(
    ctx: BatchContext,
    feeds: Sequence[LaneFeed],
    queue: WorkQueue[Target],
    on_outcome: OnOutcome,
    holding: ExitStack,
) -> None:
    """Hold every free lane; wait (STORYBOARD_QUEUE_TIMEOUT_S) while none is free."""
    deadline = time.monotonic() + ctx.settings.queue_timeout_s
    while True:
        _try_free_lanes(ctx, feeds, queue, on_outcome, holding)
        if any(f.thread is not None for f in feeds):
            return
        if time.monotonic() >= deadline:
            names = ", ".join(repr(f.ctx.lane.name) for f in feeds)
            raise LaneBusyError(
                f"every GPU lane ({names}) stayed held by other runs for"
                f" {ctx.settings.queue_timeout_s:g} s (STORYBOARD_QUEUE_TIMEOUT_S); let them"
                " finish, or `python -m flows.doctor_gpu` tells who holds them. No sentence"
                " was rendered; they stay dirty."
            )
        time.sleep(LANE_RETRY_S)


def _try_free_lanes(
    ctx: BatchContext,
    feeds: Sequence[LaneFeed],
    queue: WorkQueue[Target],
    on_outcome: OnOutcome,
    holding: ExitStack,
) -> None:
    waiting = [lane_feed for lane_feed in feeds if not lane_feed.held]
    if not waiting or queue.finished:
        return
    held, lanes = try_hold_lanes(
        [lane_feed.ctx.lane for lane_feed in waiting],
        ctx.run_id,
        lease_s=LANE_LEASE_S,
        logger=get_run_logger(),
    )
    holding.enter_context(held)
    names = {lane.name for lane in lanes}
    taken = [lane_feed for lane_feed in waiting if lane_feed.ctx.lane.name in names]
    for lane_feed in taken:
        lane_feed.held = True
        lane_feed.shared.start_line.join(lane_feed.ctx.lane.name)  # before any of them starts
    for lane_feed in taken:  # all at once: the first must not take the whole queue meanwhile
        _run(lane_feed, queue, on_outcome)


def _watch(
    ctx: BatchContext,
    feeds: Sequence[LaneFeed],
    queue: WorkQueue[Target],
    on_outcome: OnOutcome,
    holding: ExitStack,
) -> None:
    """Until the queue is settled, or no held lane is left feeding."""
    next_try = time.monotonic() + LANE_RETRY_S
    while not queue.finished:
        if ctx.stopping.is_set():
            return
        started = [f for f in feeds if f.thread is not None]
        live = [f.ctx.lane.name for f in started if f.feeding]
        if started and not queue.finished and (not live or queue.stuck_for(live)):
            # Every held lane that could render the rest is down: probes end, it stays dirty.
            ctx.stopping.set()
            return
        if time.monotonic() >= next_try and len(feeds) > 1:
            _try_free_lanes(ctx, feeds, queue, on_outcome, holding)
            next_try = time.monotonic() + LANE_RETRY_S
        time.sleep(WATCH_S)


def _run(lane_feed: LaneFeed, queue: WorkQueue[Target], on_outcome: OnOutcome) -> None:
    context = contextvars.copy_context()
    lane_feed.thread = threading.Thread(
        target=context.run,
        args=(_lane_thread, lane_feed, queue, on_outcome),
        name=f"feed-lane-{lane_feed.ctx.lane.name}",
        daemon=True,
    )
    lane_feed.thread.start()


def _lane_thread(lane_feed: LaneFeed, queue: WorkQueue[Target], on_outcome: OnOutcome) -> None:
    ctx = lane_feed.ctx
    logger = get_run_logger()
    try:
        while not ctx.stopping.is_set():
            down = feed(ctx, queue, on_outcome, lane_feed.shared)
            if down is None:
                if queue.finished:
                    return
                queue.wait(WATCH_S * 5)
                continue
            lane_feed.down = down
            if not ctx.requeue_when_down:
                return
            logger.warning(
                "lane %r (ComfyUI at %s) set aside: %s; its sentences go to the other lanes",
                ctx.lane.name,
                ctx.lane.comfyui_url,
                down,
            )
            queue.forget_lane(ctx.lane.name)
            if not _probe(ctx, queue, COOL_DOWN_S if isinstance(down, LaneDown) else 0.0):
                return
            logger.info("lane %r is back; it rejoins the batch", ctx.lane.name)
            ctx.lane_down.clear()
            lane_feed.down = None
    except BaseException as exc:
        lane_feed.error = exc
        ctx.stopping.set()
    finally:
        lane_feed.shared.start_line.leave(ctx.lane.name)
        lane_feed.ended.set()


def _probe(ctx: BatchContext, queue: WorkQueue[Target], cool_down_s: float) -> bool:
    """Wait for a set-aside lane to answer again; False when the batch ends first."""
    quiet_until = time.monotonic() + cool_down_s
    while time.monotonic() < quiet_until:
        if ctx.stopping.is_set() or queue.finished:
            return False
        queue.wait(WATCH_S * 5)
    while not ctx.stopping.is_set() and not queue.finished:
        try:
            ctx.session.wait_until_up(PROBE_WAIT_S)
            return True
        except ComfyUIError:
            ctx.stopping.wait(PROBE_EVERY_S)
    return False


def _join(feeds: Sequence[LaneFeed], timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for lane_feed in feeds:
        if lane_feed.thread is not None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            lane_feed.thread.join(left)

"""One batch over every lane it can hold: the threads of flows.lane_feed, and their lanes.

`feed_lanes` plans the queue (storyboard.scheduler.plan), holds what it can of the lanes,
starts a feeder thread per held lane, and watches them from the flow's thread: it retries
the lanes other runs hold, ends the batch once no held lane that could render what is left
is feeding (storyboard.scheduler.health.stranded; the rest `not attempted`), and on a signal
stops every lane at once. A lane whose feed ended down is set aside, cooled down and probed
as its health says, and rejoins when it answers. Feeder threads run in a copy of the flow
run's context, so their task submissions and logs belong to this flow run.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial

from prefect import get_run_logger

from flows.cancel_watch import CancelRequested
from flows.doctor_gpu import free_dead_holders
from flows.gpu_limit import hold_lane, try_hold_lanes
from flows.lane_feed import (
    LANE_LEASE_S,
    STOP_WAIT_S,
    OnOutcome,
    feed,
    plan_for,
    unsent,
)
from flows.lane_groups import Shared
from storyboard.errors import ComfyUIError, ComfyUIStalledError, LaneBusyError
from storyboard.lane import Lane
from storyboard.pipeline import record_failure
from storyboard.scheduler import outcome
from storyboard.scheduler.health import PROBE_EVERY_S, PROBE_WAIT_S, stranded, waits
from storyboard.scheduler.outcome import Outcome, Target
from storyboard.scheduler.work_queue import Item, WorkQueue
from tasks.context import BatchContext

# A lane another run holds is tried again this often while the batch runs. A fixed interval,
# not the backoff: the other run can end at any moment, and each second it is not tried is a
# second its GPU idles; a try is one non-blocking lock call and, past it, one slot request.
LANE_RETRY_S = 1.0
# The flow thread's tick: short, so a signal ends the batch at once. A tick, not a retry (it
# reads in-memory state; the idle benchmark finds it costs next to nothing), so no backoff.
WATCH_S = 0.1


@dataclass
class LaneFeed:
    ctx: BatchContext
    shared: Shared  # the batch's, one for all its lanes
    held: bool = False  # its lock and slot, in the batch's `holding` stack
    thread: threading.Thread | None = None
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def feeding(self) -> bool:
        return self.thread is not None and not self.ended.is_set() and not self.ctx.health.aside


def feed_lanes(
    ctx: BatchContext,
    lanes: Sequence[BatchContext],
    targets: Sequence[Target],
    on_outcome: OnOutcome,
) -> list[tuple[str, BaseException]]:
    """Render every target on `lanes`; call `on_outcome` once per target (from any lane's
    thread, one at a time). Returns the lanes that were down when the batch ended, each
    with why."""
    logger = get_run_logger()
    lock = threading.Lock()

    def reported(row: Outcome) -> None:
        with lock:
            on_outcome(row)

    planned = plan_for(lanes, targets)
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
                cancelled=ctx.cancelled,
                free_dead=partial(_free_dead, ctx, feeds[0].ctx.lane),
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
    down = [f.ctx for f in feeds if f.ctx.health.down is not None]
    for item in queue.drain():
        reason = down[0].health.down if down else None
        if reason is not None:
            reported(unsent(down[0], item.value, reason))
        else:
            reported(unsent(ctx, item.value, LaneBusyError("no lane left to render it")))
    return [(lane.lane.comfyui_url, lane.health.down) for lane in down if lane.health.down]


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
    return outcome.failed(target, error, attempts=1)


def _free_dead(ctx: BatchContext, lane: Lane) -> list[str]:
    """Free `lane`'s slot if a run proven dead holds it (flows.doctor_gpu)."""
    return free_dead_holders(
        lane,
        ctx.run_id,
        store=ctx.store,
        # As the doctor: no live render lasts twice the image timeout.
        stale_after_s=2 * ctx.settings.image_timeout_s,
        lease_s=ctx.settings.run_lease_s,
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
        free_dead=partial(_free_dead, ctx),
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
    """Until the queue is settled, or no held lane is left feeding (for `stranded_s`, while
    the set-aside ones are probed)."""
    settings = ctx.settings
    stranded_s = waits(len(feeds), settings.reconnect_wait_s, settings.lane_handoff_s).stranded_s
    next_try = time.monotonic() + LANE_RETRY_S
    since: float | None = None  # stranded since
    while not queue.finished:
        if ctx.cancelled.is_set():
            raise CancelRequested  # stops every lane as a Ctrl-C does
        if ctx.stopping.is_set():
            return
        started = any(f.thread is not None for f in feeds)
        if not stranded(queue, started, [f.ctx.lane.name for f in feeds if f.feeding]):
            since = None
        elif since is None:
            since = time.monotonic()
        if since is not None and time.monotonic() - since >= stranded_s:
            ctx.stopping.set()  # probes end, what is left stays dirty
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
            if not ctx.health.set_aside():
                return
            logger.warning(
                "lane %r (ComfyUI at %s) set aside: %s; its sentences go to the other lanes",
                ctx.lane.name,
                ctx.lane.comfyui_url,
                down,
            )
            queue.forget_lane(ctx.lane.name)
            if not _probe(ctx, queue):
                return
            logger.info("lane %r is back; it rejoins the batch", ctx.lane.name)
            ctx.health.answered()
    except BaseException as exc:
        lane_feed.error = exc
        ctx.stopping.set()
    finally:
        lane_feed.shared.start_line.leave(ctx.lane.name)
        lane_feed.ended.set()


def _probe(ctx: BatchContext, queue: WorkQueue[Target]) -> bool:
    """Wait for a set-aside lane to answer again, after its cool-down; False when the batch
    ends first."""
    while ctx.health.cool_down_left() > 0:
        if ctx.stopping.is_set() or queue.finished:
            return False
        queue.wait(WATCH_S * 5)
    stalled = ctx.health.down if isinstance(ctx.health.down, ComfyUIStalledError) else None
    while not ctx.stopping.is_set() and not queue.finished:
        try:
            ctx.session.wait_until_up(PROBE_WAIT_S)
            # A stuck server answers at once: it is back when its queue has moved on.
            if stalled is None or ctx.session.moved_on(stalled.running):
                return True
        except ComfyUIError:
            pass
        ctx.stopping.wait(PROBE_EVERY_S)
    return False


def _join(feeds: Sequence[LaneFeed], timeout_s: float | None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for lane_feed in feeds:
        if lane_feed.thread is not None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            lane_feed.thread.join(left)

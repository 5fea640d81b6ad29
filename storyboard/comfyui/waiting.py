"""Following one run to its end: budgets, socket notices, polls, resubmits after a restart.

Budgets: `timeout_s` counts from the prompt's own start (its `execution_start`, or
a poll finding the job `in_progress`); until then the queue wait is bounded by
the queue budget, counted from submission. Neither is judged while the socket is
reconnecting, nor after a drop until the server has confirmed the prompt: a
restart may have lost it, and it is then resubmitted with a fresh budget.

Polls: every `poll_interval_s` after a drop (messages may be lost), and every
`idle_poll_s` otherwise, so a prompt someone deleted from the queue, or messages
the server stopped sending to our socket, cannot keep a run waiting for the
whole queue budget. A prompt the server does not know after a drop is
resubmitted (same graph, at most MAX_RESUBMITS times); without a drop it was
removed by someone, which is reported, never resubmitted.

Stalls: a server that answers but executes nothing (a hung node, a wedged queue) would hold a
queued prompt for the whole queue budget (an hour). While our prompt waits in the queue, the
server's silence is watched (`QueueWatch`): it sends a frame to every socket whenever its
queue changes, so after `stall_s / 2` without any frame the queue is looked at, and once
`stall_s` has passed without a frame and what runs and waits ahead of ours is the same as
at the last look, the prompt is taken off the queue and ComfyUIStalledError raised: the lane
is set aside as an unreachable one is. A running prompt of ours is bounded by `timeout_s`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from storyboard.backoff import Backoff
from storyboard.comfyui.events import (
    ExecutionFailed,
    ExecutionInterrupted,
    Finished,
    Queued,
    QueueStatus,
    RunEnded,
)
from storyboard.comfyui.follower import LOST, Follower, OnEvent, emit
from storyboard.comfyui.queries import Prompts
from storyboard.comfyui.results import (
    RunResult,
    execution_error,
    interrupted_error,
    result_from_history,
    timed,
)
from storyboard.comfyui.stream import DROPPED, EventStream, Notice, Subscription
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIInterruptedError,
    ComfyUIProtocolError,
    ComfyUIStalledError,
    ComfyUITimeoutError,
    is_retryable,
)

log = logging.getLogger(__name__)

# A server that loses the same run's prompt more often than this is crash-looping:
# fail the attempt instead of feeding it the graph forever.
MAX_RESUBMITS = 3

# What runs, and what waits ahead of our prompt; None when ours is not waiting.
Ahead = tuple[tuple[str, ...], tuple[str, ...]] | None


def ahead_of(prompt_id: str, running: list[str], pending: list[str]) -> Ahead:
    if prompt_id not in pending:
        return None
    return tuple(running), tuple(pending[: pending.index(prompt_id)])


@dataclass
class QueueWatch:
    """Whether the queue a prompt of ours waits in has stopped moving (pure: times are given).

    Moved: any frame heard, or a look at the queue that differs from the last one. Stalled:
    `stall_s` without either, the last look at least `stall_s / 2` old and the same as now.
    """

    stall_s: float
    moved_at: float
    last: Ahead = None
    last_at: float | None = None

    def _quiet_from(self, heard_at: float) -> float:
        return max(self.moved_at, heard_at)

    def seconds_to_look(self, now: float, heard_at: float) -> float:
        due = self._quiet_from(heard_at) + self.stall_s / 2
        if self.last_at is not None and self.last_at >= self._quiet_from(heard_at):
            due = max(due, self.last_at + self.stall_s / 2)
        return max(0.0, due - now)

    def look_due(self, now: float, heard_at: float) -> bool:
        return self.seconds_to_look(now, heard_at) <= 0

    def looked(self, now: float, heard_at: float, ahead: Ahead) -> bool:
        """Record a look; True when the queue is stalled."""
        fresh = self.last_at is None or self.last_at < self._quiet_from(heard_at)
        if ahead is None or (not fresh and ahead != self.last):
            self.moved_at = now
        elif not fresh and now - self._quiet_from(heard_at) >= self.stall_s:
            return True
        self.last, self.last_at = ahead, now
        return False


@dataclass(frozen=True)
class Waiter:
    base_url: str
    stream: EventStream
    prompts: Prompts
    post_prompt: Callable[[dict[str, Any], str, bool], Awaitable[str]]  # graph, id, front
    unavailable: Callable[[], ComfyUIError]
    backoff: Backoff
    history_attempts: int
    poll_interval_s: float
    idle_poll_s: float
    reconnect_wait_s: float
    stall_s: float | None = None  # None: a queue that stops moving is not watched

    async def follow(
        self, sub: Subscription, timeout_s: float, queue_budget: float, on_event: OnEvent | None
    ) -> RunResult:
        """The prompt's result; a failure of a prompt that started carries the seconds it ran
        on the server (`render_s`): a failed attempt costs GPU time too."""
        try:
            return await self._follow(sub, timeout_s, queue_budget, on_event)
        except ComfyUIError as exc:
            if sub.started_at is not None and exc.render_s is None:
                exc.render_s = max(asyncio.get_running_loop().time() - sub.started_at, 0.0)
            raise

    async def _follow(
        self, sub: Subscription, timeout_s: float, queue_budget: float, on_event: OnEvent | None
    ) -> RunResult:
        loop = asyncio.get_running_loop()
        follower = Follower(
            sub,
            on_event,
            history_entry=self.prompts.history_entry,
            job_state=self.prompts.job_state,
            poll_interval_s=self.poll_interval_s,
            idle_poll_s=self.idle_poll_s,
        )
        resubmits = 0
        watch = None if self.stall_s is None else QueueWatch(self.stall_s, sub.submitted_at)
        while True:
            if self.stream.gave_up:
                raise self.unavailable()
            if self.stream.closed:
                raise ComfyUIConnectionError(
                    f"the client of {self.base_url} was closed while prompt {sub.prompt_id} ran"
                )
            if sub.started_at is None:
                deadline, phase, limit = sub.submitted_at + queue_budget, "queued", queue_budget
            else:
                deadline, phase, limit = sub.started_at + timeout_s, "running", timeout_s
            now = loop.time()
            remaining = deadline - now
            polling = not self.stream.reconnecting
            # A server that answers but never confirms is judged one reconnect wait later.
            judge = polling and (
                follower.confirmed or not sub.missed_messages or remaining < -self.reconnect_wait_s
            )
            if remaining <= 0 and judge:
                raise await self._timed_out(sub.prompt_id, phase, limit)
            # Only while it waits: a running prompt of ours is bounded by timeout_s.
            queued = watch if sub.started_at is None and polling else None
            if queued is not None and queued.look_due(now, self.stream.heard_at):
                await self._look_at_queue(sub.prompt_id, queued)
                continue
            # Messages first: polls slower than their interval must not starve the socket.
            if polling and follower.poll_due(now) and sub.queue.empty():
                outcome = await follower.poll()
                if isinstance(outcome, RunResult):
                    return self._timed(sub, outcome, loop.time())
                if outcome is LOST:
                    resubmits = await self._resubmit_lost(sub, follower, resubmits, on_event)
                continue
            wait_s = remaining if remaining > 0 else None  # None: until the next notice
            if polling:
                to_poll = follower.seconds_to_poll(now)
                if queued is not None:
                    to_poll = min(to_poll, queued.seconds_to_look(now, self.stream.heard_at))
                wait_s = to_poll if wait_s is None else min(wait_s, to_poll)
            try:
                # Not `wait_for`: on Python 3.11 it returns a frame that arrives as the run is
                # cancelled and drops the cancel (a stop's own status frame does just that).
                async with asyncio.timeout(wait_s):
                    message = await sub.queue.get()
            except TimeoutError:
                continue
            if isinstance(message, Notice):
                if message is DROPPED:
                    follower.dropped()
                continue  # after a drop, missed_messages is set: frequent polls take over
            if isinstance(message, QueueStatus):
                continue
            if isinstance(message, ExecutionFailed):
                raise execution_error(
                    sub.prompt_id,
                    node_id=message.node_id,
                    node_type=message.node_type,
                    exception_type=message.exception_type,
                    exception_message=message.exception_message,
                )
            if isinstance(message, ExecutionInterrupted):
                raise interrupted_error(sub.prompt_id, message.node_id, message.node_type)
            if isinstance(message, Finished | RunEnded):
                # Whichever of the two comes first ends the run; the run returns here, so
                # its callback hears Finished once and a later frame finds no subscriber.
                finished_at = loop.time()
                result = await self._history_after_finish(sub)
                if result is None:
                    continue  # the server went away after the finish: polls decide
                await follower.emit(Finished(sub.prompt_id))
                return self._timed(sub, result, finished_at)
            await follower.emit(message)

    def _timed(self, sub: Subscription, result: RunResult, finished_at: float) -> RunResult:
        return timed(
            result,
            submitted_at=sub.submitted_at,
            started_at=sub.started_at,
            finished_at=finished_at,
        )

    async def _resubmit_lost(
        self, sub: Subscription, follower: Follower, resubmits: int, on_event: OnEvent | None
    ) -> int:
        """Queue the graph of a prompt the server lost (a restart) again; the new count."""
        lost = sub.prompt_id
        if sub.graph is None or not sub.dropped or resubmits >= MAX_RESUBMITS:
            again = f"; resubmitted {resubmits} times already" if resubmits else ""
            raise ComfyUIInterruptedError(
                f"prompt {lost} is neither queued nor in history: the server restarted or "
                f"someone removed it{again}"
            )
        new_id = str(uuid.uuid4())
        self.stream.rename(lost, new_id)
        sub.started_at = None
        try:
            accepted = await self.post_prompt(sub.graph, new_id, sub.front)
        except ComfyUIConnectionError:
            # Gone again: polls tell whether this POST arrived before the next resubmit.
            follower.resubmitted(confirmed=False)
            return resubmits + 1
        if accepted != new_id:
            self.stream.rename(new_id, accepted)
        follower.resubmitted(confirmed=True)
        log.warning(
            "ComfyUI at %s lost prompt %s (restarted?); resubmitted the same graph as %s (%d/%d)",
            self.base_url,
            lost,
            accepted,
            resubmits + 1,
            MAX_RESUBMITS,
        )
        await emit(on_event, Queued(accepted, await self.prompts.position(accepted)))
        return resubmits + 1

    async def _history_after_finish(self, sub: Subscription) -> RunResult | None:
        """The finished prompt's result; None once the socket dropped after all.

        The "finished" message can arrive a moment before history is written, so an
        empty entry is retried like any failure `is_retryable` accepts. What the entry
        says (a node's error included) is the answer, never retried. A restart between
        the finish and our read takes the history with it: then the follow loop's polls
        find the entry, or find the prompt lost and resubmit it without costing an attempt.
        """
        prompt_id = sub.prompt_id
        attempt = 1
        while True:
            try:
                entry = await self.prompts.history_entry(prompt_id)
                if not entry:
                    raise ComfyUIProtocolError(
                        f"prompt {prompt_id} finished but GET /history/{prompt_id} stayed "
                        f"empty after {attempt} reads"
                    )
            except ComfyUIError as exc:
                if is_retryable(exc) and (sub.dropped or self.stream.reconnecting):
                    return None
                if attempt >= self.history_attempts or not is_retryable(exc):
                    raise
            else:
                return result_from_history(prompt_id, entry)
            await asyncio.sleep(self.backoff(attempt))
            attempt += 1

    async def _look_at_queue(self, prompt_id: str, watch: QueueWatch) -> None:
        """Look at the queue our waiting prompt is in; raise ComfyUIStalledError once it has
        stopped moving (the prompt taken off it first)."""
        loop = asyncio.get_running_loop()
        try:
            running, pending = await self.prompts.snapshot()
        except ComfyUIError as exc:
            if not is_retryable(exc):
                raise
            watch.moved_at = loop.time()  # a server that fails to answer is the reconnect's
            return
        if not watch.looked(
            loop.time(), self.stream.heard_at, ahead_of(prompt_id, running, pending)
        ):
            return
        try:
            outcome = await self.prompts.cancel(prompt_id)
        except ComfyUIError as exc:
            outcome = f"could not take it off: {exc}"
        what = (
            f"prompt {', '.join(running)} ran for {watch.stall_s:g} s without a sign of progress"
            if running
            else f"nothing started for {watch.stall_s:g} s"
        )
        raise ComfyUIStalledError(
            f"ComfyUI at {self.base_url} is stuck: {what} while prompt {prompt_id} waited in its"
            f" queue (STORYBOARD_STALL_S); our prompt: {outcome}",
            tuple(running),
        )

    async def _timed_out(self, prompt_id: str, phase: str, limit: float) -> ComfyUITimeoutError:
        try:
            outcome = await self.prompts.cancel(prompt_id)
        except ComfyUIError as exc:
            outcome = f"could not stop it: {exc}"
        what = "did not finish within" if phase == "running" else "waited in the queue for"
        return ComfyUITimeoutError(f"prompt {prompt_id} {what} {limit:g}s; {outcome}")

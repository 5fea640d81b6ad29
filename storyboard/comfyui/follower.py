"""Polling one prompt: what the server says when the WebSocket may not tell us.

After a drop (or for a prompt another client submitted) the run is followed by
polling every `poll_interval_s`: `GET /history/{id}` until the entry appears, and
meanwhile `GET /api/jobs/{id}` (or `GET /queue` on servers without it) to learn
when the prompt starts executing (`in_progress`) and to notice a prompt the
server no longer knows (`LOST`). While the socket is fine the same poll runs
every `idle_poll_s`, as a safety net. A poll that fails with an error
`is_retryable` accepts tells nothing; any other failure ends the wait.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final

from storyboard.comfyui.events import Event, Finished, Started
from storyboard.comfyui.results import RunResult, result_from_history
from storyboard.comfyui.stream import Subscription
from storyboard.errors import ComfyUIError, is_retryable

OnEvent = Callable[[Event], object]  # may return an awaitable, which is awaited
# Polls in a row that find the prompt neither queued nor in history before it counts as lost
# (one is not enough: a prompt leaves the queue a moment before its history is written).
LOST_AFTER_POLLS = 3


class Lost:
    """The server does not know the prompt: not queued, not running, not in history."""


LOST: Final = Lost()


async def emit(on_event: OnEvent | None, event: Event) -> None:
    if on_event is None:
        return
    outcome = on_event(event)
    if inspect.isawaitable(outcome):
        await outcome


class Follower:
    """Per-wait state: which events were reported, and the polling after a drop."""

    def __init__(
        self,
        sub: Subscription,
        on_event: OnEvent | None,
        *,
        history_entry: Callable[[str], Awaitable[Any]],
        job_state: Callable[[str], Awaitable[str | None]],
        poll_interval_s: float,
        idle_poll_s: float,
    ) -> None:
        self._sub = sub
        self._on_event = on_event
        self._history_entry = history_entry
        self._job_state = job_state
        self._poll_interval_s = poll_interval_s
        self._idle_poll_s = idle_poll_s
        self._started_reported = False
        self._next_poll = 0.0 if sub.missed_messages else self._after(idle_poll_s)
        self._unknown_polls = 0
        # Whether the server confirmed the prompt since the socket last dropped: a budget
        # that ran out while the server was away is judged only once it answers again.
        self.confirmed = not sub.missed_messages

    async def emit(self, event: Event) -> None:
        if isinstance(event, Started):
            if self._started_reported:
                return
            self._started_reported = True
        await emit(self._on_event, event)

    def poll_due(self, now: float) -> bool:
        return now >= self._next_poll

    def seconds_to_poll(self, now: float) -> float:
        return max(self._next_poll - now, 0.001)

    def dropped(self) -> None:
        self.confirmed = False
        self._next_poll = 0.0

    @staticmethod
    def _after(seconds: float) -> float:
        return asyncio.get_running_loop().time() + seconds

    def resubmitted(self, *, confirmed: bool) -> None:
        self._started_reported = False  # the new prompt reports its own start
        self._unknown_polls = 0
        self.confirmed = confirmed

    async def poll(self) -> RunResult | Lost | None:
        """One look at history and the queue; the result once done, LOST once unknown."""
        sub = self._sub
        loop = asyncio.get_running_loop()
        try:
            entry = await self._history_entry(sub.prompt_id)
            state = None if entry else await self._job_state(sub.prompt_id)
        except ComfyUIError as exc:
            if not is_retryable(exc):
                raise
            # The next poll asks again: the run's budgets and the socket's reconnect wait
            # bound how long (a restarting server, a proxy's error page).
            return None
        finally:
            interval = self._poll_interval_s if sub.missed_messages else self._idle_poll_s
            self._next_poll = loop.time() + interval
        if entry:
            result = result_from_history(sub.prompt_id, entry)
            await self.emit(Started(sub.prompt_id))
            await self.emit(Finished(sub.prompt_id))
            return result
        if state is None:
            self._unknown_polls += 1
            return LOST if self._unknown_polls >= LOST_AFTER_POLLS else None
        self._unknown_polls = 0
        self.confirmed = True
        if state == "running" and sub.started_at is None:
            sub.started_at = loop.time()
            await self.emit(Started(sub.prompt_id))
        return None

"""Pacing: how many sentences a lane claims at once, and who goes first at a batch's start.

- `GroupSize`: what the batch renders in GROUP_AHEAD_S at its recent pace (1 for renders
  slower than that: a claim then waits no longer than alone). Every store statement costs
  ~1-5 ms and, in a batch, waits for the GIL again while the other threads compute, so a
  claim of twenty costs about what one of one does.
- `StartLine`: at a batch's start, every lane's first prompt goes out before any lane claims
  and prepares its second.

Both are shared by every lane's feeder thread, hence their locks; the clock is injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GROUP_AHEAD_S = 3.0
MOST_IN_GROUP = 32
# The longest a lane that has sent its first prompt waits for the others to send theirs.
START_LINE_WAIT_S = 1.0


class GroupSize:
    """As many as the batch (all its lanes, sharing one) finishes rendering in GROUP_AHEAD_S
    at its recent pace, 1 to MOST_IN_GROUP; 1 until two renders have finished (lanes filling
    their pipelines take sentences far faster than they render them)."""

    SMOOTHING = 0.3  # weight of the newest gap between two finished renders

    def __init__(
        self,
        ahead_s: float | None = None,
        most: int = MOST_IN_GROUP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ahead_s = GROUP_AHEAD_S if ahead_s is None else ahead_s
        self._most, self._clock = most, clock
        self._last: float | None = None
        self._gap_s: float | None = None
        self._lock = threading.Lock()

    def finished(self) -> None:
        """A render of the batch has just finished (any lane's)."""
        with self._lock:
            now = self._clock()
            if self._last is not None:
                gap = now - self._last
                smoothed = self._gap_s
                self._gap_s = (
                    gap
                    if smoothed is None
                    else (self.SMOOTHING * gap + (1 - self.SMOOTHING) * smoothed)
                )
            self._last = now

    @property
    def size(self) -> int:
        if self._gap_s is None:
            return 1
        if self._gap_s <= 0:
            return self._most
        return max(1, min(self._most, int(self._ahead_s / self._gap_s)))


class StartLine:
    """Lanes started together send their first prompts before any of them claims and
    prepares a second: at a batch's start the orchestrator's CPU is what every lane waits
    for, and a second prepare is needed only once the first render ends.

    A lane waits at most START_LINE_WAIT_S, and not past its own first render's end; a lane
    leaves the line once it has sent its first prompt or its feed ended, so one with
    nothing to render, or failing, holds nobody."""

    def __init__(self) -> None:
        self._starting: set[str] = set()
        self._changed = threading.Condition()

    def join(self, lane: str) -> None:
        with self._changed:
            self._starting.add(lane)

    def leave(self, lane: str) -> None:
        with self._changed:
            self._starting.discard(lane)
            self._changed.notify_all()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait(self, until: Callable[[], bool], wait_s: float = START_LINE_WAIT_S) -> None:
        """Until no lane is still before its first prompt, `until()`, or `wait_s`."""
        with self._changed:
            self._changed.wait_for(lambda: not self._starting or until(), timeout=wait_s)

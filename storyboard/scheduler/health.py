"""Lane health: one lane's state machine, fed each event of the lane, deciding whether it
keeps feeding, is set aside, gives its sentences back or fails them, and when it rejoins.

    feeding --(ComfyUIUnavailableError, or DEAD_AFTER server-side failures in a row)--> down
    down    --(its feed has ended: `set_aside`)--> aside
    aside   --(COOL_DOWN_S after failing prompts, none when unreachable; then probes)--> ...
            --(the server answered a probe: `answered`)--> feeding

A lane is set aside only when another lane can take its sentences (`shared`: a batch over
several lanes). A server-side failure (connection, 5xx, timeout) is not the sentence's
fault, so while the lane is down, or when its server is unreachable, the sentence goes back
to the queue without spending an attempt, and the tasks on the lane neither retry nor record
(`withholds`, `lane_down`). With one lane there is nowhere to give a sentence back to:
failures are reported as the sentence's own, an unreachable server still ends the feed, and
what the feed took but never sent is `not attempted`.

A lane set aside for failing prompts still answers, so probing it at once would let it rejoin
and fail the next ones too: it is left alone COOL_DOWN_S first. An unreachable lane is
probed at once (PROBE_WAIT_S each, every PROBE_EVERY_S) by its feeder thread.

One writer: a lane's events come from its feeder thread alone, so there is no lock. Other
threads only read: its tasks `lane_down` (an Event) and `withholds`, the batch's watch
`aside`. The clock is injected, so every rule is tested without a thread or a socket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Literal

from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIServerError,
    ComfyUITimeoutError,
    ComfyUIUnavailableError,
)
from storyboard.scheduler.work_queue import WorkQueue

# Server-side failures in a row (on different sentences) after which a lane is set aside.
DEAD_AFTER = 3
# A lane set aside for failing prompts is left alone this long before its probes start.
COOL_DOWN_S = 30.0
# A set-aside lane is asked whether it is back this often, each time waiting this long. A
# fixed interval, not the backoff: a server comes back at a moment nobody knows, each second
# it is not asked is a second its GPU idles, and a probe is one GET on a lane no one feeds.
PROBE_EVERY_S = 1.0
PROBE_WAIT_S = 2.0

SERVER_SIDE = (ComfyUIConnectionError, ComfyUIServerError, ComfyUITimeoutError)
# The lane, not the sentence, is gone: its server past the reconnect wait, or its prompt
# cancelled when the lane was set aside.
LANE_GONE = (ComfyUIUnavailableError, CancelledError)

# What becomes of a sentence a lane took but will not send, its feed ending.
Leftover = Literal["give back", "fail", "not attempted"]


class LaneDown(Exception):
    """The lane a feed ran on is gone (the reason is its cause)."""


@dataclass(frozen=True)
class Verdict:
    """What the feeder does after a failure on its lane."""

    give_back: bool  # the sentence goes back to the queue, no attempt spent; else reported
    set_aside: bool  # this failure set the lane aside just now: cancel its prompts


class LaneHealth:
    def __init__(
        self,
        *,
        shared: bool,
        clock: Callable[[], float] = time.monotonic,
        dead_after: int = DEAD_AFTER,
        cool_down_s: float = COOL_DOWN_S,
    ) -> None:
        self.shared = shared  # other lanes take its sentences when it is down
        # Set while the lane is down and its sentences go elsewhere: nothing more is recorded
        # or retried on it. Read by its tasks, from other threads.
        self.lane_down = threading.Event()
        self._clock = clock
        self._dead_after = dead_after
        self._cool_down_s = cool_down_s
        self._failures = 0  # server-side failures in a row
        self._down: BaseException | None = None
        self._aside = False
        self._probe_from = 0.0

    @property
    def down(self) -> BaseException | None:
        """Why the lane stopped feeding; None while it feeds."""
        return self._down

    @property
    def aside(self) -> bool:
        """Its feed has ended on a down lane: it holds its sentences no more."""
        return self._aside

    def start_feed(self) -> None:
        """A feed begins on the lane: failures in a row are counted within one feed."""
        self._failures = 0

    def succeeded(self) -> None:
        """A render ended without failing (made, reused or skipped)."""
        self._failures = 0

    def render_failed(self, exc: BaseException) -> Verdict:
        # Given back only if the lane was gone before this failure: the one that sets it aside
        # is reported, its attempt spent, as the failure it is.
        give_back = self.shared and (isinstance(exc, LANE_GONE) or self.lane_down.is_set())
        return Verdict(give_back, self._failed(exc))

    def prepare_failed(self, exc: BaseException) -> Verdict:
        set_aside = self._failed(exc)
        give_back = self.shared and (isinstance(exc, LANE_GONE) or self.lane_down.is_set())
        return Verdict(give_back, set_aside)

    def _failed(self, exc: BaseException) -> bool:
        if isinstance(exc, ComfyUIUnavailableError) and self._down is None:
            self._down = exc
        elif self.shared and isinstance(exc, SERVER_SIDE):
            self._failures += 1
            if self._failures >= self._dead_after and self._down is None:
                self._down = LaneDown(
                    f"{self._dead_after} server-side failures in a row, the last: {exc}"
                )
        if self._down is not None and self.shared and not self.lane_down.is_set():
            self.lane_down.set()
            return True
        return False

    def withholds(self, exc: BaseException) -> bool:
        """Whether a task should neither retry nor record `exc`: the lane, not the sentence,
        failed, and the sentence goes to another lane."""
        if self.lane_down.is_set():
            return True
        return self.shared and isinstance(exc, ComfyUIUnavailableError)

    def leftover(self, prepare_failure: BaseException | None = None) -> Leftover:
        """A sentence taken, not sent, its feed ending on the down lane (`prepare_failure`:
        its own prepare failed)."""
        if self.shared:
            return "give back"
        return "fail" if prepare_failure is not None else "not attempted"

    def set_aside(self) -> bool:
        """The feed has ended on the down lane. True: it waits to rejoin; False: with one lane
        it is done."""
        self._aside = True
        cool_down_s = self._cool_down_s if isinstance(self._down, LaneDown) else 0.0
        self._probe_from = self._clock() + cool_down_s
        return self.shared

    def cool_down_left(self) -> float:
        """Seconds before probes of a set-aside lane start."""
        return max(0.0, self._probe_from - self._clock()) if self._aside else 0.0

    def answered(self) -> None:
        """The set-aside lane's server answered a probe: it rejoins the batch."""
        self._down = None
        self._aside = False
        self._failures = 0
        self.lane_down.clear()


@dataclass(frozen=True)
class Waits:
    """How long a lane's server is waited for when it goes away, and how long a batch whose
    lanes are all set aside still waits for one to come back."""

    reconnect_s: float
    stranded_s: float


def waits(lanes: int, reconnect_wait_s: float, handoff_s: float) -> Waits:
    """With one lane, its server is waited for the whole reconnect wait (a restart costs no
    attempt). With several, a lane away `handoff_s` is set aside and its sentences go to the
    others, which are rendering meanwhile; it still rejoins when it answers, and only once no
    lane has come back for the rest of the reconnect wait does the batch end."""
    if lanes <= 1:
        return Waits(reconnect_wait_s, 0.0)
    reconnect_s = min(reconnect_wait_s, handoff_s)
    return Waits(reconnect_s, reconnect_wait_s - reconnect_s)


def stranded(queue: WorkQueue[Any], started: bool, feeding: Collection[str]) -> bool:
    """The batch cannot go on: lanes were started, and no lane still feeding can render what
    is left (every one is set aside, or the rest needs a model only the set-aside ones have).
    What is left then stays dirty."""
    if not started or queue.finished:
        return False
    return not feeding or queue.stuck_for(feeding)

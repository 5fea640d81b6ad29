"""Progress: of one render in the logs, of the whole run in its one progress artifact.

ComfyUI's events arrive on the lane's event-loop thread, which must never block on the
Prefect API, so the callback only records them and wakes the task's own thread, which would
otherwise just wait for the render, to log them: "queued (position p)" and "started" at INFO
as they come. Sampler steps are DEBUG lines, at most one per `STEP_LOG_S` per render: a
lane's GPU renders for seconds to minutes, and a line per step (sent to the Prefect API,
formatted on the batch's one interpreter) was paid for every second of every render by every
lane. Per-sentence detail is in the logs only. A run has one progress artifact, the batch's
(flows.batch_report), whose text comes from `run_progress_text`: k/N, how many of them
failed, the sentence each lane is rendering (`LaneBoard`, kept by the lane feed) and an ETA.

Every artifact and event call is best effort (`best_effort`): a Prefect API that fails
mid-batch costs a warning, never a render or a stored picture.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from storyboard.comfyui import Event, Progress, Queued, Started
from storyboard.pipeline import error_text

T = TypeVar("T")

# How often a waiting render task wakes when no line is due: the step DEBUG line's rate.
STEP_LOG_S = 5.0


def best_effort(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(...)`, or None with a warning when it fails: reporting never costs a render."""
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        warn(f"{what} failed, going on without it: {error_text(exc)}")
        return None


def warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logging.getLogger(__name__).warning(message)


class RenderProgress:
    def __init__(
        self,
        label: str,
        log: Callable[[str], None],
        queued: threading.Event | None = None,
        *,
        debug: Callable[[str], None] | None = None,
    ) -> None:
        self.label = label
        self._log = log
        self._debug = debug  # the step lines; None: not logged
        self._queued = queued  # set once the server has accepted the prompt
        self._wake = threading.Event()  # a line to log, or the render has ended
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._step: tuple[int, int] | None = None
        self._reported_step: tuple[int, int] | None = None

    def on_event(self, event: Event) -> None:
        """Called on the lane's loop thread: record only."""
        with self._lock:
            if isinstance(event, Queued):
                where = "" if event.position is None else f" (position {event.position})"
                self._lines.append(f"{self.label}: queued on ComfyUI{where}")
                if self._queued is not None:
                    self._queued.set()
                self._wake.set()
            elif isinstance(event, Started):
                self._lines.append(f"{self.label}: started")
                self._wake.set()
            elif isinstance(event, Progress) and event.max > 0:
                # No wake: a step is logged at the next wake, at most STEP_LOG_S from now.
                self._step = (event.value, event.max)

    def wait(self, future: concurrent.futures.Future[T]) -> T:
        """Wait for the render, logging its lines as they come and its step now and then."""
        future.add_done_callback(lambda _: self._wake.set())
        while not future.done():
            self._wake.wait(STEP_LOG_S)
            # Cleared before reading: a line recorded from here on sets it again.
            self._wake.clear()
            self.report()
        return future.result()

    def flush_lines(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        for line in lines:
            self._log(line)

    def report(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            step = self._step
        for line in lines:
            self._log(line)
        if self._debug is None or step is None or step == self._reported_step:
            return
        self._reported_step = step
        value, total = step
        self._debug(f"{self.label}: step {value}/{total}")


class LaneBoard:
    """The sentence each lane is rendering now (thread-safe; lane feeds write, the report
    reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes: dict[str, str | None] = {}

    def show(self, lane: str, label: str | None) -> None:
        with self._lock:
            self._lanes[lane] = label

    def text(self) -> str:
        with self._lock:
            lanes = dict(self._lanes)
        return ", ".join(f"{lane}: {label or 'idle'}" for lane, label in lanes.items())


def run_progress_text(
    done: int,
    total: int,
    elapsed_s: float,
    *,
    verb: str = "done",
    lanes: str = "",
    failed: int = 0,
) -> str:
    """`k/N sentences done, f failed; a: p/s3, b: idle; ETA 0:00:42`: `done` counts every
    sentence finished, the `failed` among them too (named only when there are some); the ETA
    once one is done."""
    counted = f"{done}/{total} sentences {verb}"
    parts = [f"{counted}, {failed} failed" if failed else counted]
    if lanes:
        parts.append(lanes)
    if 0 < done < total:
        left = round(elapsed_s / done * (total - done))
        parts.append(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
    return "; ".join(parts)

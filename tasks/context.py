"""What every image task of one flow run shares, and the one retry policy.

`RenderContext` is what the tasks need for one render (an on-demand one); `BatchContext`
adds a batch's lane to it: its health, its places on the server, the batch's made graphs.

The context is handed to tasks wrapped in `quote(...)`: it holds live objects (the lane's
ComfyUI session, the store) that Prefect must neither hash nor walk.

`stopping` is set when the batch is ending early (a signal): from then on no task retries
and no task records its failure, since the flow releases this run's jobs itself
(`Store.release_run`) once the tasks have let go.

A batch over several lanes gives each lane its own context (`on_lane`): its lane, session and
health (storyboard.scheduler.health), everything else shared. The lane's health decides when
a failure is the lane's, not the sentence's: `withholds` then tells the tasks to record
nothing, and the feed puts the sentence back for another lane without spending an attempt
(`Store.release_job`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from prefect import State
from prefect.client.schemas.objects import TaskRun
from prefect.tasks import Task, exponential_backoff

from storyboard.errors import ComfyUIConnectionError, is_retryable
from storyboard.lane import Lane, LaneSession
from storyboard.pipeline import PipelineConfig
from storyboard.scheduler.health import LaneHealth
from storyboard.settings import Settings
from storyboard.store import Store
from storyboard.workflow import Workflow
from tasks.progress import LaneBoard

RETRY_JITTER_FACTOR = 0.5
# Prompts given to one lane's ComfyUI at once: the one it executes and the next, waiting in
# its queue. ComfyUI executes its queue one prompt at a time, so this never runs two at once.
LANE_DEPTH = 2
# How often a render waiting for a place on its server looks whether the batch is ending.
PLACE_POLL_S = 0.1


class RetryWaits:
    """One lane's renders waiting out their retry delay, and its room on the server.

    A render waiting to retry holds no place on the server: the feed sends other sentences
    meanwhile (`waiting` tells it how many of its renders wait), and a retry coming back takes
    a place (`slots`) as any render does, so the lane still has at most LANE_DEPTH prompts on
    its server. `changed` wakes the feed when one starts waiting or a render ends.
    """

    def __init__(self, depth: int = LANE_DEPTH) -> None:
        self.slots = threading.BoundedSemaphore(depth)
        self.changed = threading.Condition()
        self._waiting: set[tuple[str, str]] = set()

    @property
    def waiting(self) -> int:
        with self.changed:
            return len(self._waiting)

    def start(self, key: tuple[str, str]) -> None:
        with self.changed:
            self._waiting.add(key)
            self.changed.notify_all()

    def end(self, key: tuple[str, str]) -> None:
        with self.changed:
            self._waiting.discard(key)
            self.changed.notify_all()

    def poke(self) -> None:
        with self.changed:
            self.changed.notify_all()


@dataclass
class RenderContext:
    """What every image task uses, for one on-demand render and for each lane of a batch."""

    settings: Settings
    config: PipelineConfig
    store: Store
    lane: Lane
    session: LaneSession
    workflow: Workflow
    run_id: str
    only_dirty: bool = True  # False when forcing: render even a sentence that is up to date
    stopping: threading.Event = field(default_factory=threading.Event)
    # Set once the run was cancelled from Prefect (flows.cancel_watch); shared by its lanes.
    cancelled: threading.Event = field(default_factory=threading.Event)
    _attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def stale_after_s(self) -> float:
        # A live attempt never runs longer than the per-image timeout; older ones are orphans.
        return self.settings.image_timeout_s

    @property
    def prompt_queued(self) -> threading.Event | None:
        """Set once the server has accepted a prompt; None when nobody waits for it."""
        return None

    def withholds(self, exc: BaseException) -> bool:
        """Whether a task should neither retry nor record `exc`: the run is stopping."""
        return self.stopping.is_set()

    def gone(self) -> bool:
        """No render starts any more: the run is stopping."""
        return self.stopping.is_set()

    @contextmanager
    def place_on_server(self, label: str) -> Iterator[None]:
        """A render alone on its lane needs no place kept for it."""
        yield

    def retry_wait(self, key: tuple[str, str], waiting: bool) -> None:
        """A render starts (True) or ends (False) waiting out its retry delay."""

    def has_picture(self, graph_hash: str) -> bool:
        """Whether the render cache may have a picture of this graph (asked per claim)."""
        return False

    def made_picture(self, graph_hash: str) -> None:
        """A picture of this graph is now the sentence's."""

    def count_attempt(self, project_id: str, sentence_id: str, attempt: int) -> None:
        with self._lock:
            self._attempts[(project_id, sentence_id)] = attempt

    def take_attempts(self, project_id: str, sentence_id: str) -> int:
        """The attempts counted for a sentence, forgotten as they are read: each sentence is
        reported once, and a later batch on the same context counts afresh."""
        with self._lock:
            return self._attempts.pop((project_id, sentence_id), 0)


@dataclass
class BatchContext(RenderContext):
    """One lane of a batch: the render context, and what feeding the lane adds to it."""

    # Whether the lane feeds, is set aside or rejoins; with several lanes (`shared`) a lost
    # lane's sentences go back to the queue instead of failing.
    health: LaneHealth = field(default_factory=lambda: LaneHealth(shared=False))
    # Set once the lane's server has accepted a prompt of this batch (the start line waits
    # for the first: storyboard.scheduler.pacing.StartLine).
    queued: threading.Event = field(default_factory=threading.Event)
    # Every lane of the batch, by name, with its open session (the first is this context's).
    sessions: dict[str, LaneSession] = field(default_factory=dict)
    board: LaneBoard = field(default_factory=LaneBoard)  # what each lane renders now
    # The graphs with a picture (Store.picture_hashes, read once per batch, added to as it
    # stores): the render cache is asked only about these.
    picture_hashes: set[str] = field(default_factory=set)
    retry_waits: RetryWaits = field(default_factory=RetryWaits)  # this lane's

    def on_lane(self, lane: Lane, session: LaneSession) -> BatchContext:
        """This batch on one of its several lanes: same store, attempts and stop, own session,
        and a health that gives a lost lane's sentences to the other lanes."""
        return replace(
            self,
            lane=lane,
            session=session,
            health=LaneHealth(shared=True),
            queued=threading.Event(),
            retry_waits=RetryWaits(),
            _attempts=self._attempts,
            _lock=self._lock,
        )

    @property
    def prompt_queued(self) -> threading.Event:
        return self.queued

    def withholds(self, exc: BaseException) -> bool:
        """Whether a task should neither retry nor record `exc`: the batch is stopping, or
        the lane (not the sentence) failed and the sentence goes to another lane."""
        return self.stopping.is_set() or self.health.withholds(exc)

    def gone(self) -> bool:
        """No render starts any more: the batch is ending or the lane is set aside."""
        return self.stopping.is_set() or self.health.lane_down.is_set()

    @contextmanager
    def place_on_server(self, label: str) -> Iterator[None]:
        """One of the lane's LANE_DEPTH places on its server, for as long as a render runs.
        The feed leaves a place free for each render it sends; a retry back from its delay
        may find them taken by the renders sent meanwhile, and waits here for one to end."""
        slots = self.retry_waits.slots
        while not slots.acquire(timeout=PLACE_POLL_S):
            if self.gone():
                raise ComfyUIConnectionError(f"{label}: not started, the batch is ending")
        try:
            yield
        finally:
            slots.release()

    def retry_wait(self, key: tuple[str, str], waiting: bool) -> None:
        if waiting:
            self.retry_waits.start(key)
        else:
            self.retry_waits.end(key)

    def has_picture(self, graph_hash: str) -> bool:
        return graph_hash in self.picture_hashes

    def made_picture(self, graph_hash: str) -> None:
        self.picture_hashes.add(graph_hash)


def exception_of(state: State[Any]) -> BaseException | None:
    """The exception a failed task state carries (Prefect hands `can_retry` a Failed(data=exc))."""
    data = state.data
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # a result that cannot be read is itself the answer
        return exc
    return result if isinstance(result, BaseException) else None


def retry_if_retryable(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect's retry condition: the library's `is_retryable` decides, nothing else."""
    exc = exception_of(state)
    return exc is not None and is_retryable(exc)


def retry_options(
    settings: Settings,
    stopping: threading.Event | None = None,
    lane_down: threading.Event | None = None,
) -> dict[str, Any]:
    """`with_options` arguments for the image tasks, from the settings read at run time.

    Once `stopping` (the batch is ending) or `lane_down` (the lane is set aside) is set,
    nothing is retried.
    """

    def condition(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
        if any(event is not None and event.is_set() for event in (stopping, lane_down)):
            return False
        return retry_if_retryable(task, task_run, state)

    return {
        "retries": settings.attempts - 1,
        "retry_condition_fn": condition,
        "retry_delay_seconds": exponential_backoff(backoff_factor=settings.retry_backoff_s),
        "retry_jitter_factor": RETRY_JITTER_FACTOR if settings.retry_backoff_s > 0 else None,
    }


def is_final_attempt(exc: BaseException, attempt: int, retries: int) -> bool:
    return not is_retryable(exc) or attempt > retries

"""Claiming and recording in groups: one store call for many sentences of a batch.

Every store statement costs ~1-5 ms and, in a batch, waits for the GIL again while the other
threads compute, so a call for a group of twenty costs about what one for one sentence does.

How many a lane claims at once is the scheduler's `GroupSize` (storyboard.scheduler.pacing):
a lane claims a group of the sentences it takes (one model, storyboard.scheduler.work_queue)
and leaves the rest, claimed, in the shared queue for whichever lane takes them next.

- `Recorder`: the pictures every lane writes, recorded (`Store.complete_jobs`) on a thread of
  its own once they make a group, or RECORD_WITHIN_S after the oldest was written; a lane's
  feeder never waits for it except at its end (`flush`).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Sequence

from storyboard.errors import StoryboardError
from storyboard.pipeline import Stored, Written, record_failure, record_pictures
from storyboard.scheduler.outcome import Target
from storyboard.scheduler.pacing import GroupSize, StartLine
from storyboard.seeds import random_seed
from storyboard.store import ImageJob
from tasks.context import BatchContext

# A written picture is recorded at the latest this long after it was written, group or not.
RECORD_WITHIN_S = 2.0

OnRecorded = Callable[[Stored | BaseException], None]


class Recorder:
    """Records the batch's written pictures in groups, on its own thread (started in the
    caller's context, so its logs and outcomes belong to the flow run)."""

    def __init__(
        self,
        sizes: GroupSize,
        within_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sizes, self._clock = sizes, clock
        self._within_s = RECORD_WITHIN_S if within_s is None else within_s
        self._pending: list[tuple[BatchContext, Written | BaseException, OnRecorded]] = []
        self._since = 0.0  # when the oldest pending came
        self._busy = False
        self._flushing = 0
        self._closed = False
        self._failure: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> Recorder:
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="picture-recorder", daemon=True
        )
        self._thread.start()
        return self

    def add(self, ctx: BatchContext, written: Written | BaseException, done: OnRecorded) -> None:
        """A picture written (or its store task's failure); `done` gets the result."""
        with self._cond:
            if not self._pending:
                self._since = self._clock()
            self._pending.append((ctx, written, done))
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until everything added so far is recorded and its `done` called."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while (self._pending or self._busy) and self._thread is not None:
                    self._cond.wait(0.1)
            finally:
                self._flushing -= 1
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Record what is left, then stop the thread."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()

    def _due(self) -> bool:
        if not self._pending:
            return False
        if self._flushing or self._closed or len(self._pending) >= self._sizes.size:
            return True
        return self._clock() - self._since >= self._within_s

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._closed:
                        return
                    wait_s = self._since + self._within_s - self._clock()
                    self._cond.wait(None if not self._pending else max(wait_s, 0.0))
                group, self._pending = self._pending, []
                self._busy = True
            try:
                _record(group)
            except BaseException as exc:  # handed to the next flush, never lost
                with self._cond:
                    self._failure = self._failure or exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _record(group: Sequence[tuple[BatchContext, Written | BaseException, OnRecorded]]) -> None:
    pictures = [(ctx, w, done) for ctx, w, done in group if isinstance(w, Written)]
    for _, failure, done in group:
        if isinstance(failure, BaseException):
            done(failure)
    if not pictures:
        return
    results = _record_group(pictures[0][0], [w for _, w, _ in pictures])
    for (_, _, done), result in zip(pictures, results, strict=True):
        done(result)


def claim_group(ctx: BatchContext, targets: Sequence[Target]) -> list[ImageJob | Exception | None]:
    """Claim `targets` for this run's first attempt in one store call; one result each (None:
    another run holds it, or has made it). When the group cannot be claimed, each is tried
    alone, so only the sentence at fault fails."""

    def claim(group: Sequence[Target]) -> list[ImageJob | None]:
        return ctx.store.start_jobs(
            [(t.project_id, t.sentence_id, random_seed()) for t in group],
            run_id=ctx.run_id,
            attempt=1,
            stale_after_s=ctx.stale_after_s,
            only_dirty=ctx.only_dirty,
            draft=ctx.config.draft,
            lane=ctx.lane.name,
        )

    try:
        return list(claim(targets))
    except StoryboardError as exc:
        if len(targets) == 1:
            return [exc]
    results: list[ImageJob | Exception | None] = []
    for target in targets:
        try:
            results.extend(claim([target]))
        except StoryboardError as exc:
            results.append(exc)
    return results


def _record_group(ctx: BatchContext, pictures: Sequence[Written]) -> list[Stored | Exception]:
    """Record written pictures in one store call; when the group cannot be recorded, each
    alone, and one that still fails closes its job as failed (best effort)."""
    try:
        return list(record_pictures(ctx.store, pictures))
    except StoryboardError:
        pass
    results: list[Stored | Exception] = []
    for picture in pictures:
        try:
            results.extend(record_pictures(ctx.store, [picture]))
        except StoryboardError as exc:
            results.append(exc)
            resolved = picture.prepared.resolved
            with contextlib.suppress(StoryboardError):
                record_failure(
                    ctx.store,
                    resolved.project_id,
                    resolved.sentence_id,
                    exc,
                    job=picture.job,
                    final=True,
                    run_id=ctx.run_id,
                    attempt=picture.job.attempt,
                    stale_after_s=ctx.stale_after_s,
                    seed=picture.prepared.seed,
                )
    return results


class Shared:
    """What the lanes of one batch share beside the queue: the group size, the recorder and
    the start line."""

    def __init__(self) -> None:
        self.sizes = GroupSize()
        self.recorder = Recorder(self.sizes)
        self.start_line = StartLine()

    def start(self) -> Shared:
        self.recorder.start()
        return self

    def close(self) -> None:
        self.recorder.close()

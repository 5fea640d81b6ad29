"""`image-batch`: one picture for every dirty sentence, on the GPU lane.

    prefect deployment run image-batch/default -p project_id=demo -p limit=5

ComfyUI is checked first (bounded wait) so an unreachable server fails the run with a clear
message before any sentence is touched. One sentence failing never stops the others; the
run ends Failed, with the count, if any did. A server that goes away for longer than the
reconnect wait ends the feed: the run ends Failed naming it and counting the sentences not
attempted (still dirty).

At start it resets jobs a dead run left running and removes the temporary files of killed
writes. However it ends (done, failed, Ctrl-C or SIGTERM, a store that cannot record a
failure) it releases its own jobs last (`Store.release_run`): nothing stays `generating`
for the next run to skip.

    python -m flows.image_batch     # prints the run's final message; exit status 1 unless Completed
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from prefect import State, flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.batch_report import BatchReport
from flows.gpu_limit import ensure_lane_limit
from flows.lane_feed import Target, feed_lane, validate_all
from storyboard.doctor import remove_stale_temp_files
from storyboard.errors import ComfyUIError, ConfigError
from storyboard.ids import validate_id
from storyboard.lane import LaneSession, lanes_from_settings
from storyboard.pipeline import PipelineConfig, error_text
from storyboard.settings import Settings, load_settings
from storyboard.store import Store
from storyboard.workflow import load_workflow
from tasks.context import BatchContext

# prepare (next) + generate (current and queued) + store (previous, bounded backlog).
TASK_WORKERS = 5


def thread_pool() -> TaskRunner[PrefectFuture[Any]]:
    """The flows' task runner: TASK_WORKERS threads. Cast because `@flow` types its runner as
    TaskRunner[PrefectFuture[Any]] while TaskRunner is invariant in its future type."""
    return cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=TASK_WORKERS))


def run_id() -> str:
    return str(flow_run.id or uuid.uuid4())


@contextmanager
def batch_context(settings: Settings, *, only_dirty: bool = True) -> Iterator[BatchContext]:
    """Open the lane (ComfyUI must answer within the start-up wait) and the store."""
    logger = get_run_logger()
    workflow = load_workflow(settings.workflow)
    lane = lanes_from_settings(settings)[0]
    with LaneSession(
        lane,
        queue_timeout_s=settings.queue_timeout_s,
        reconnect_wait_s=settings.reconnect_wait_s,
    ) as session:
        try:
            session.wait_until_up(settings.startup_wait_s)
        except ComfyUIError as exc:
            raise ComfyUIError(
                f"ComfyUI at {lane.comfyui_url} did not answer within {settings.startup_wait_s:g}"
                f" s ({exc}); start it, or point STORYBOARD_COMFYUI_URL at it. No sentence was"
                " changed."
            ) from exc
        logger.info("ComfyUI at %s is up; lane %r", lane.comfyui_url, lane.name)
        ctx = BatchContext(
            settings=settings,
            config=PipelineConfig.from_settings(settings),
            store=Store(settings.database, lock_timeout_s=settings.store_lock_timeout_s),
            lane=lane,
            session=session,
            workflow=workflow,
            run_id=run_id(),
            only_dirty=only_dirty,
        )
        try:
            yield ctx
        finally:
            release_own_jobs(ctx, logger)


def release_own_jobs(ctx: BatchContext, logger: Any) -> None:
    """Give back every job of this run still running (a signal, a failure that could not be
    recorded); never raises, so the error that ended the batch is the one reported."""
    try:
        released = ctx.store.release_run(ctx.run_id)
    except Exception as exc:
        logger.error(
            "could not release this run's image jobs (%s); `storyboard doctor --repair` frees them",
            error_text(exc),
        )
        return
    if released:
        logger.warning(
            "released %d image job(s) of this run left running; their sentences stay dirty",
            released,
        )


def run_targets(
    ctx: BatchContext,
    load: Callable[[], Sequence[Target]],
    *,
    dry_run: bool,
) -> State[dict[str, Any]]:
    """Recover, load, render (or validate), report.

    Completed carries the report (`BatchReport.as_dict`); Failed (a sentence failed, or some
    were not attempted) carries its message only.
    """
    logger = get_run_logger()
    if not dry_run:
        ensure_lane_limit(ctx.lane.limit_tag, logger)
        reset = ctx.store.reset_stale(ctx.stale_after_s)
        if reset:
            logger.warning("reset %d image job(s) left running by a dead run", reset)
        removed = remove_stale_temp_files(ctx.config.data_dir)
        if removed:
            logger.warning("removed %d temporary file(s) left by a killed write", removed)
    targets = load()
    logger.info("%d sentence(s) to %s", len(targets), "validate" if dry_run else "render")
    report = BatchReport(len(targets), dry_run=dry_run)
    if dry_run:
        validate_all(ctx, targets, report.add)
    else:
        feed_lane(ctx, targets, report.add)
    report.publish()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items()))
    failed = len(report.failed)
    # A Failed state carries only its message: Prefect turns that into the error it raises
    # for whoever asks for the result (a dict it cannot, and raises TypeError instead). The
    # rows are in the results artifact and the store.
    if report.not_attempted:
        return Failed(
            message=f"ComfyUI at {ctx.lane.comfyui_url} stayed unreachable past"
            f" {ctx.settings.reconnect_wait_s:g} s: {report.not_attempted} of {len(targets)}"
            f" sentence(s) not attempted, still dirty ({counts}); start the server and run"
            " the batch again"
        )
    if failed:
        return Failed(message=f"{failed} of {len(targets)} sentence(s) failed ({counts})")
    return Completed(
        message=f"{len(targets)} sentence(s): {counts or 'nothing to do'}", data=report.as_dict()
    )


@flow(
    name="image-batch",
    task_runner=thread_pool(),
    persist_result=False,
)
def image_batch(
    project_id: str | None = None,
    limit: int | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> State[dict[str, Any]]:
    """Render every dirty sentence (all sentences with `force`) of one project or all.

    Args:
        project_id: only this project; all projects when empty.
        limit: at most this many sentences (in project, position order).
        force: regenerate every sentence, not only the dirty ones.
        dry_run: validate every sentence against the server; upload, render and change
            nothing.
    """
    if project_id is not None:
        validate_id(project_id, "project id")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}; leave it empty for no limit")
    settings = load_settings()
    with batch_context(settings, only_dirty=not force) as ctx:

        def load() -> list[Target]:
            sentences = ctx.store.dirty_sentences(project_id, limit, force)
            return [Target(s.project_id, s.id) for s in sentences]

        return run_targets(ctx, load, dry_run=dry_run)


def main() -> int:
    """`python -m flows.image_batch`: the run's final message, not its data, and its status."""
    try:
        state = image_batch(return_state=True)
    except KeyboardInterrupt:  # the batch has already given back its jobs and prompts
        print("image-batch: interrupted; its unfinished sentences stay dirty for the next run")
        return 130
    print(f"image-batch: {state.name}: {state.message}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

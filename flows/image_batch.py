"""`image-batch`: one picture for every dirty sentence, on every GPU lane it can hold.

    prefect deployment run image-batch/default -p project_id=demo -p limit=5

ComfyUI is checked first (bounded wait; with several lanes, STORYBOARD_COMFYUI_URLS, at least
one must answer and the others are left out) so an unreachable farm fails the run with a clear
message before any sentence is touched. One sentence failing never stops the others; the
run ends Failed, with the count, if any did. The lanes are fed from one queue
(flows.lane_farm); a server that goes away for longer than the reconnect wait is set aside
while another lane feeds, and once none is left the run ends Failed naming the servers and
counting the sentences not attempted (still dirty).

At start it resets jobs a dead run left running and removes the temporary files of killed
writes. However it ends (done, failed, Ctrl-C or SIGTERM, a store that cannot record a
failure) it releases its own jobs last (`Store.release_run`): nothing stays `generating`
for the next run to skip.

An unknown project fails the run naming the known ones. Warnings of the library's loggers
reach the run's logs (flows.run_logs); the pictures, the contact sheets and the summary are
the run's artifacts (flows.batch_report).

    python -m flows.image_batch [PROJECT] [--limit N] [--force] [--dry-run]   # = storyboard render
"""

from __future__ import annotations

import difflib
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Annotated, Any, cast

from prefect import State, flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import Field

from flows.batch_report import BatchReport, batch_ended
from flows.cancel_watch import CancelRequested, CancelWatch
from flows.gpu_limit import ensure_lane_limits
from flows.lane_farm import feed_lanes
from flows.lane_feed import validate_all
from flows.run_logs import library_logs_to_run
from flows.undertaker import Undertaker
from storyboard.doctor import remove_stale_temp_files
from storyboard.errors import ComfyUIError, ComfyUIStalledError, StoryboardError
from storyboard.ids import ID_PATTERN, ID_RULE, validate_id
from storyboard.lane import LaneSession, lanes_from_settings
from storyboard.pipeline import PipelineConfig, error_text
from storyboard.run_lock import RunLock, release_dead_runs
from storyboard.scheduler.health import waits
from storyboard.scheduler.outcome import Target
from storyboard.settings import Settings, load_settings
from storyboard.store import Store
from storyboard.store.connection import BATCH_KEEP_OPEN_S
from storyboard.workflow import load_workflow
from tasks.context import BatchContext, RenderContext

MODULE_PROG = "python -m flows.image_batch"
# Per lane: prepare (next) + generate (current and queued) + store (previous, bounded backlog).
TASK_WORKERS_PER_LANE = 5
# Threads are started only when needed, so this bound costs nothing for fewer lanes.
MAX_LANES = 16
TASK_WORKERS = TASK_WORKERS_PER_LANE * MAX_LANES


def thread_pool() -> TaskRunner[PrefectFuture[Any]]:
    """The flows' task runner: TASK_WORKERS threads. Cast because `@flow` types its runner as
    TaskRunner[PrefectFuture[Any]] while TaskRunner is invariant in its future type."""
    return cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=TASK_WORKERS))


def run_id() -> str:
    return str(flow_run.id or uuid.uuid4())


def client_ids(sessions: Mapping[str, LaneSession]) -> dict[str, str]:
    """Lane name to the ComfyUI client id a run's prompts are posted as."""
    return {name: session.client.client_id for name, session in sessions.items()}


def api_url() -> str | None:
    """The Prefect server's URL; None on the embedded API (it dies with this process)."""
    return get_current_settings().api.url


# The batch's threads hand the GIL over this often (Python's default is 5 ms). DuckDB lets go
# of the GIL around every statement, a store call has about twenty such points, and each
# waits a whole switch interval while a task thread computes: measured at N = 200, T = 0, one
# busy thread turns a 12 ms store call sequence into 440 ms at 5 ms and into 62 ms at 0.5 ms.
# benchmarks/lanes.py (cost) shows what it does to the batch; docs/PERFORMANCE.md.
SWITCH_INTERVAL_S = 0.0005


@contextmanager
def short_thread_switches(interval_s: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Python's thread switch interval set to `interval_s` for the block, then put back (it
    is process-wide: a flow run's process is the batch's own)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, interval_s))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextmanager
def batch_context(
    settings: Settings, *, only_dirty: bool = True, draft: bool = False
) -> Iterator[BatchContext]:
    """Open every lane's session and the store. ComfyUI must answer within the start-up wait:
    with one lane, or else on at least one lane (the others are left out of this batch).
    With `draft`, the batch makes drafts (PipelineConfig.from_settings)."""
    logger = get_run_logger()
    workflow = load_workflow(settings.workflow)
    lanes = lanes_from_settings(settings)
    away = waits(len(lanes), settings.reconnect_wait_s, settings.lane_handoff_s)
    with ExitStack() as opened:
        opened.enter_context(short_thread_switches())
        sessions = [
            opened.enter_context(
                LaneSession(
                    lane,
                    queue_timeout_s=settings.queue_timeout_s,
                    reconnect_wait_s=away.reconnect_s,
                    stall_s=settings.stall_s,
                )
            )
            for lane in lanes
        ]
        up = _up_sessions(sessions, settings.startup_wait_s, logger)
        ctx = BatchContext(
            settings=settings,
            config=PipelineConfig.from_settings(settings, draft=draft),
            # Kept open between the batch's store calls (one open per burst, not per call);
            # it lets go at once for a CLI command that waits for it (store.connection).
            store=Store(
                settings.database,
                lock_timeout_s=settings.store_lock_timeout_s,
                keep_open_s=BATCH_KEEP_OPEN_S,
            ),
            lane=up[0].lane,
            session=up[0],
            workflow=workflow,
            run_id=run_id(),
            only_dirty=only_dirty,
            sessions={session.lane.name: session for session in up},
        )
        try:
            # Held from before the first claim until after the last release: while it is,
            # no other run takes this run's claims for a dead process's (storyboard.run_lock).
            # It ends its lease in the store, so it goes before the store is let go.
            # The undertaker releases them if this process is killed (flows.undertaker).
            with (
                RunLock(ctx.run_id, store=ctx.store, lease_s=settings.run_lease_s) as lock,
                Undertaker(
                    ctx.run_id, settings.database, api_url(), client_ids(ctx.sessions)
                ) as undertaker,
            ):
                try:
                    yield ctx
                finally:
                    if release_own_jobs(ctx, logger):
                        lock.released()
                        undertaker.released()
        finally:
            ctx.store.close()


def _up_sessions(sessions: Sequence[LaneSession], wait_s: float, logger: Any) -> list[LaneSession]:
    """The sessions whose server answered within `wait_s` (asked at once, in parallel)."""
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        answers = list(pool.map(lambda s: _answer(s, wait_s), sessions))
    up = [s for s, error in zip(sessions, answers, strict=True) if error is None]
    for session, error in zip(sessions, answers, strict=True):
        if error is None:
            logger.info("ComfyUI at %s is up; lane %r", session.lane.comfyui_url, session.lane.name)
        elif len(sessions) > 1:
            logger.warning(
                "lane %r left out of this batch: ComfyUI at %s did not answer within %g s (%s)",
                session.lane.name,
                session.lane.comfyui_url,
                wait_s,
                error,
            )
    if not up:
        urls = ", ".join(s.lane.comfyui_url for s in sessions)
        which = "STORYBOARD_COMFYUI_URL" if len(sessions) == 1 else "STORYBOARD_COMFYUI_URLS"
        raise ComfyUIError(
            f"ComfyUI at {urls} did not answer within {wait_s:g} s ({answers[0]}); start it,"
            f" or point {which} at it. No sentence was changed."
        ) from answers[0]
    return up


def _answer(session: LaneSession, wait_s: float) -> ComfyUIError | None:
    try:
        session.wait_until_up(wait_s)
    except ComfyUIError as exc:
        return exc
    return None


def lane_contexts(ctx: BatchContext) -> list[BatchContext]:
    """One context per lane of the batch; one lane alone is `ctx` itself: with no other lane
    to take its sentences, it needs no context of its own."""
    if len(ctx.sessions) <= 1:
        return [ctx]
    return [ctx.on_lane(s.lane, s) for s in ctx.sessions.values()]


def release_own_jobs(ctx: RenderContext, logger: Any) -> bool:
    """Give back every job of this run still running (a signal, a failure that could not be
    recorded); never raises, so the error that ended the batch is the one reported. False
    when the store refused: the next run on this machine takes them over (run_lock)."""
    try:
        released = ctx.store.release_run(ctx.run_id)
    except Exception as exc:
        logger.error(
            "could not release this run's image jobs (%s); the next run on this machine takes"
            " them over, or `storyboard doctor --repair` frees them",
            error_text(exc),
        )
        return False
    if released:
        logger.warning(
            "released %d image job(s) of this run left running; their sentences stay dirty",
            released,
        )
    return True


def take_over_dead_runs(ctx: RenderContext, logger: Any) -> None:
    """Release the claims of runs whose process died: at once on this machine (SIGKILL, the
    OOM killer), within STORYBOARD_RUN_LEASE_S elsewhere. This run renders their sentences,
    no attempt spent."""
    taken_over = release_dead_runs(ctx.store, own=ctx.run_id, lease_s=ctx.settings.run_lease_s)
    for taken in taken_over:
        logger.warning(
            "took over %d sentence(s) claimed by run %s, whose process is gone (its lock on"
            " this machine free, or its lease in the store expired); no attempt spent",
            taken.released,
            taken.run_id,
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
    lanes = lane_contexts(ctx)
    if not dry_run:
        ensure_lane_limits([lane.lane.limit_tag for lane in lanes], logger)
        take_over_dead_runs(ctx, logger)
        reset = ctx.store.reset_stale(ctx.stale_after_s)
        if reset:
            logger.warning("reset %d image job(s) left running by a dead run", reset)
        removed = remove_stale_temp_files(ctx.config.data_dir)
        if removed:
            logger.warning("removed %d temporary file(s) left by a killed write", removed)
    targets = load()
    if not dry_run and ctx.only_dirty and targets:
        # For the render cache: a draft pass reuses drafts, a final pass finals.
        ctx.picture_hashes.update(ctx.store.picture_hashes(draft=ctx.config.draft))
    logger.info("%d sentence(s) to %s", len(targets), "validate" if dry_run else "render")
    report = BatchReport(
        len(targets),
        dry_run=dry_run,
        store=ctx.store,
        data_dir=ctx.config.data_dir,
        run_id=ctx.run_id,
        gpu_hour_price=ctx.settings.gpu_hour_price,
        draft=ctx.config.draft,
    )
    down: list[tuple[str, BaseException]] = []
    report.lanes = ctx.board.text
    cancelled = False
    try:
        if dry_run:
            validate_all(lanes, targets, report.add)
        else:
            down = feed_lanes(ctx, lanes, targets, report.add)
    except CancelRequested:
        cancelled = True
    except KeyboardInterrupt:
        raise  # Ctrl-C or SIGTERM: out within seconds; the store holds what it stored
    except BaseException:
        report.publish()  # a batch that failed still shows what it stored
        raise
    report.publish()
    if cancelled:
        stored = sum(1 for o in report.outcomes if o.status in ("completed", "cached"))
        return Cancelled(
            message=f"cancelled from Prefect: {stored} of {len(targets)} sentence(s) stored;"
            " the rest released, still dirty"
        )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items()))
    failed = len(report.failed)
    # A Failed state carries only its message: Prefect turns that into the error it raises
    # for whoever asks for the result (a dict it cannot, and raises TypeError instead). The
    # rows are in the results artifact and the store.
    if report.not_attempted:
        left = f"{report.not_attempted} of {len(targets)} sentence(s) not attempted, still dirty"
        stalled = [reason for _, reason in down if isinstance(reason, ComfyUIStalledError)]
        if stalled:
            return Failed(
                message=f"{stalled[0]}: {left} ({counts}); stop what hangs on that server (or"
                " restart it) and run the batch again"
            )
        urls = ", ".join(url for url, _ in down) or ctx.lane.comfyui_url
        return Failed(
            message=f"ComfyUI at {urls} stayed unreachable past"
            f" {ctx.settings.reconnect_wait_s:g} s: {left} ({counts}); start the server and run"
            " the batch again"
        )
    if failed:
        return Failed(message=f"{failed} of {len(targets)} sentence(s) failed ({counts})")
    drafts = "draft pass, finals still dirty: " if ctx.config.draft else ""
    return Completed(
        message=f"{drafts}{len(targets)} sentence(s): {counts or 'nothing to do'}",
        data=report.as_dict(),
    )


ProjectParam = Annotated[
    str | None,
    Field(
        description=f"only this project ({ID_RULE}); all projects when empty",
        # In the schema only (a deployment refuses a bad id when the run is created); a direct
        # call gets validate_id's one line, which names the rule.
        json_schema_extra={"pattern": f"^{ID_PATTERN.pattern}$"},
    ),
]
LimitParam = Annotated[
    int | None,
    Field(ge=1, description="at most this many sentences (in project, position order)"),
]


@flow(
    name="image-batch",
    task_runner=thread_pool(),
    persist_result=False,
)
def image_batch(
    project_id: ProjectParam = None,
    limit: LimitParam = None,
    force: bool = False,
    dry_run: bool = False,
    draft: bool = False,
) -> State[dict[str, Any]]:
    """Render every dirty sentence (all sentences with `force`) of one project or all; with
    `draft`, a draft of every sentence whose draft is missing or stale instead.

    The id pattern and `limit >= 1` are in the parameter schema: a deployment with
    `enforce_parameter_schema` refuses a bad value when the run is created. An error the
    library raises on purpose (bad settings, ComfyUI not up, a broken workflow file) fails
    the run with its one-line message and no traceback; `state.result()` raises it.

    Args:
        project_id: only this project; all projects when empty. An unknown one fails the
            run, naming the known projects.
        limit: at most this many sentences (in project, position order).
        force: regenerate every sentence, not only the dirty ones.
        dry_run: validate every sentence against the server; upload, render and change
            nothing.
        draft: a draft pass: STORYBOARD_DRAFT_STEPS and STORYBOARD_DRAFT_REFERENCE_MEGAPIXELS,
            the same size and seed, written to `images/drafts/`, with a draft contact sheet;
            the sentences stay dirty for their final.
    """
    with library_logs_to_run(run_id()):
        try:
            if project_id is not None:
                validate_id(project_id, "project id")
            settings = load_settings()
            if project_id is not None:
                unknown = unknown_project(settings, project_id)
                if unknown is not None:
                    return Failed(message=unknown)
            with (
                batch_context(settings, only_dirty=not force, draft=draft) as ctx,
                CancelWatch(ctx.run_id, ctx.cancelled.set),
            ):

                def load() -> list[Target]:
                    listed = ctx.store.dirty_render_inputs(project_id, limit, force, draft=draft)
                    return [Target(s.project_id, s.id, inputs=i) for s, i in listed]

                state = run_targets(ctx, load, dry_run=dry_run)
            batch_ended(state)
            return state
        except StoryboardError as exc:
            get_run_logger().error("image-batch: %s", exc)
            return Failed(message=str(exc), data=exc)


def unknown_project(settings: Settings, project_id: str) -> str | None:
    """The run's message when `project_id` is not in the store, else None."""
    store = Store(settings.database, lock_timeout_s=settings.store_lock_timeout_s)
    known = [p.id for p in store.projects()]
    if project_id in known:
        return None
    close = difflib.get_close_matches(project_id, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(known) if known else "none; import one with `storyboard import`"
    return f"unknown project {project_id!r}; {hint}the known projects are: {listed}"


if __name__ == "__main__":  # pragma: no cover
    # Run as a script, the same command as `storyboard render`. Only the script imports the
    # command line: the command line imports this module to run the flow, never the reverse.
    from flows.cli import render_main

    raise SystemExit(render_main(prog=MODULE_PROG))

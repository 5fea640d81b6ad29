"""`generate-image`: one sentence on request (the Prefect form of `storyboard.image.requested`).

It never waits for a batch: it takes no lane lock and no lane slot (flows.gpu_limit), and
goes to the lane with the least work ahead of it, at the front of that server's queue
(storyboard.lane_choice), so it reaches the GPU after at most the one render running there.
ComfyUI still executes one prompt at a time. The sentence is claimed in the store like a
batch claims it (`start_render`), so no batch renders it meanwhile, and stored like the batch
stores it (the tasks of tasks/images.py: prepare, claim and render, save).

Overrides of prompt, seed and LoRA are written to the sentence first (the store stays the
truth: the image always matches the stored sentence); reference paths, relative to the
project's directory, replace the characters' references for this render only.

Besides the batch's artifacts (progress, results, summary) a run shows the picture it made
(`generate-image-picture`): its thumbnail beside the sentence, status, seed and seconds, as a
batch's pictures artifact shows each; or, when it made none, why.
"""

from __future__ import annotations

from typing import Any

from prefect import State, flow, get_run_logger
from prefect.states import Cancelled, Completed, Failed

from flows.batch_report import ON_DEMAND_KEYS, BatchReport, publish_picture
from flows.cancel_watch import CancelWatch
from flows.image_batch import (
    api_url,
    client_ids,
    release_own_jobs,
    run_id,
    take_over_dead_runs,
    thread_pool,
)
from flows.on_demand import render_one
from flows.undertaker import Undertaker
from storyboard.errors import ComfyUIError, StoryboardError
from storyboard.ids import validate_id
from storyboard.lane import lanes_from_settings
from storyboard.lane_choice import FrontSession, choose_lane
from storyboard.pipeline import PipelineConfig
from storyboard.run_lock import RunLock
from storyboard.settings import load_settings
from storyboard.store import Store
from storyboard.workflow import load_workflow
from tasks.api_reach import REACH
from tasks.context import RenderContext
from tasks.progress import best_effort


@flow(
    name="generate-image",
    task_runner=thread_pool(),
    persist_result=False,
)
def generate_image_flow(
    project_id: str,
    sentence_id: str,
    prompt: str | None = None,
    reference_paths: list[str] | None = None,
    lora: str | None = None,
    lora_strength: float | None = None,
    seed: int | None = None,
) -> State[dict[str, Any]]:
    """Render one sentence now, whether or not it is dirty, ahead of any batch."""
    validate_id(project_id, "project id")
    validate_id(sentence_id, "sentence id")
    logger = get_run_logger()
    REACH.start()  # this run believes in its API until a call finds it gone
    settings = load_settings()
    workflow = load_workflow(settings.workflow)
    store = Store(
        settings.database,
        lock_timeout_s=settings.store_lock_timeout_s,
        max_prompt_chars=settings.max_prompt_chars,
    )
    try:
        chosen = choose_lane(lanes_from_settings(settings), wait_s=settings.startup_wait_s)
    except ComfyUIError as exc:
        return Failed(message=str(exc))
    lane = chosen.lane
    logger.info(
        "lane %r (ComfyUI at %s): %d running, %d pending; queued at the front",
        lane.name,
        lane.comfyui_url,
        chosen.running,
        chosen.pending,
    )
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("image_prompt", prompt),
            ("seed", seed),
            ("lora_name", lora),
            ("lora_strength", lora_strength),
        )
        if value is not None
    }
    try:  # refused before anything is queued: one line naming the fix
        if changes:
            store.update_sentence(project_id, sentence_id, **changes)
        else:
            store.get_sentence(project_id, sentence_id)  # NotFoundError names it
    except StoryboardError as exc:
        logger.error("generate-image: %s", exc)
        return Failed(message=str(exc), data=exc)
    with (
        RunLock(run_id(), store=store, lease_s=settings.run_lease_s) as held,
        FrontSession(
            lane,
            queue_timeout_s=settings.queue_timeout_s,
            reconnect_wait_s=settings.reconnect_wait_s,
            stall_s=settings.stall_s,
        ) as session,
        Undertaker(
            held.run_id, settings.database, api_url(), client_ids({lane.name: session})
        ) as undertaker,
    ):
        ctx = RenderContext(
            settings=settings,
            config=PipelineConfig.from_settings(settings),
            store=store,
            lane=lane,
            session=session,
            workflow=workflow,
            run_id=held.run_id,
            only_dirty=False,
        )
        take_over_dead_runs(ctx, logger)

        def stop() -> None:  # as a Ctrl-C would: the prompt leaves the server
            ctx.stopping.set()
            session.close()

        try:
            with CancelWatch(held.run_id, stop) as watch:
                outcome = render_one(ctx, project_id, sentence_id, reference_paths)
        except Exception:
            if not watch.requested.is_set():
                raise
            outcome = None
        finally:
            if release_own_jobs(ctx, logger):
                held.released()
                undertaker.released()
    label = f"{project_id}/{sentence_id}"
    if watch.requested.is_set():
        return Cancelled(message=f"{label}: {watch.reason}; it stays dirty")
    assert outcome is not None
    report = BatchReport(
        1,
        dry_run=False,
        store=store,  # for the run's GPU time (its pictures artifact is `publish_picture`'s)
        run_id=held.run_id,
        gpu_hour_price=settings.gpu_hour_price,
        keys=ON_DEMAND_KEYS,
    )
    report.add(outcome)
    report.publish()
    sentence = best_effort("the sentence", store.get_sentence, project_id, sentence_id)
    publish_picture(outcome, settings.data_dir, sentence)
    if outcome.status == "failed":
        return Failed(message=f"{label} failed on lane {lane.name!r}: {outcome.error}")
    return Completed(
        message=f"{label}: {outcome.status} on lane {lane.name!r}", data=report.as_dict()
    )


if __name__ == "__main__":  # pragma: no cover
    generate_image_flow.serve(name="on-demand")

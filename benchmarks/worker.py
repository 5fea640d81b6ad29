"""One measured run in a fresh process: the `image-batch` flow, or the plain-loop baseline.

    python -m benchmarks.worker --mode flow|baseline|flow-batch-slot --out result.json [--profile]
                                [--draft]

Configuration comes from the environment the driver sets (STORYBOARD_*, PREFECT_HOME). The
store is already seeded; the simulator already listens. Everything this process does between
`t0` and `t1` is what is measured; its peak RSS and threads are this process's alone. Before
`t0` it boots the ephemeral API and makes the lanes' limits, as a deployment finds both
(`api_boot_s`, `setup_s`), then lets the API settle (`settle_s`): about a second after it boots,
the ephemeral API stalls once for ~0.3 s (its background services' first pass), and that stall
landed on the flow's own `create_flow_run`. A deployment's long-running server passed it long ago.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.probes import ApiCounter, ProcessSampler, StackSampler, StoreTimer, read_status
from benchmarks.synthetic import PROJECT_ID

# Seconds from the API's boot to `t0`, in every mode and lane count alike (see the docstring):
# measured, the one stall comes 1-1.5 s after boot; after 3 s `create_flow_run` takes ~45 ms.
API_SETTLE_S = 3.0
# How often the process sampler reads /proc/self/status (from the environment, else 20 ms).
# The lanes benchmark's idle scenario, which measures this process's CPU while it mostly
# waits, samples every 0.5 s: at 20 ms the sampler alone used ~1.4% of a core there.
SAMPLE_S = float(os.environ.get("BENCH_SAMPLE_S", "0.02"))


def run_baseline() -> dict[str, Any]:
    """The same client and pipeline steps as the flow, in a plain sequential loop."""
    from storyboard import pipeline
    from storyboard.lane import LaneSession, lanes_from_settings
    from storyboard.settings import load_settings
    from storyboard.store import Store
    from storyboard.store.connection import BATCH_KEEP_OPEN_S
    from storyboard.workflow import load_workflow

    settings = load_settings()
    config = pipeline.PipelineConfig.from_settings(settings)
    workflow = load_workflow(settings.workflow)
    store = Store(
        settings.database,
        lock_timeout_s=settings.store_lock_timeout_s,
        keep_open_s=BATCH_KEEP_OPEN_S,
    )
    run_id = str(uuid.uuid4())
    stale_after_s = settings.image_timeout_s
    done = 0
    with LaneSession(lanes_from_settings(settings)[0]) as session:
        session.wait_until_up(settings.startup_wait_s)
        store.reset_stale(stale_after_s)
        for sentence in store.dirty_sentences(PROJECT_ID):
            resolved = pipeline.resolve(store, sentence.project_id, sentence.id)
            prepared = pipeline.prepare(session, workflow, resolved, config)
            claimed = pipeline.claim(
                store, prepared, run_id=run_id, attempt=1, stale_after_s=stale_after_s
            )
            if claimed is None:
                continue
            rendered = pipeline.render(session, store, prepared, claimed, config)
            pipeline.record_pictures(
                store, [pipeline.write_picture(store, rendered, config, session)]
            )
            done += 1
    return {"state": "Completed", "message": f"{done} rendered"}


def run_flow(image_batch: Any, draft: bool = False) -> dict[str, Any]:
    state = image_batch(project_id=PROJECT_ID, draft=draft, return_state=True)
    return {"state": state.type.value.title(), "message": state.message}


def run_flow_batch_slot(image_batch: Any) -> dict[str, Any]:
    """Experiment, not production: the `gpu` slot taken once for the whole batch instead of
    once per render. The per-task slot of Prefect's task engine is switched off in this
    process only, and one lease (renewed by Prefect in the background) covers the run, so
    another batch on the same lane still waits. Measures what the per-render slot costs."""
    from prefect import task_engine
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    task_engine._concurrency = lambda **_: contextlib.nullcontext()  # type: ignore[assignment]
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
    with concurrency("tag:gpu", occupy=1, lease_duration=60):
        return run_flow(image_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["flow", "baseline", "flow-batch-slot"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--draft", action="store_true", help="the flow's draft pass")
    args = parser.parse_args()

    result: dict[str, Any] = {"mode": args.mode}
    api = ApiCounter()
    timer = StoreTimer()
    with contextlib.ExitStack() as stack:
        stack.enter_context(api.active())
        if args.mode.startswith("flow"):
            # Boot the ephemeral API first and report it apart: a deployment finds it running.
            from prefect.client.orchestration import get_client
            from prefect.server.api.server import SubprocessASGIServer

            boot = time.monotonic()
            with get_client(sync_client=True) as client:
                client.hello()
            result["api_boot_s"] = time.monotonic() - boot
            api.api_url = SubprocessASGIServer().api_url
            # The lanes' limits, as `python -m flows.setup` makes them once per installation:
            # a nightly batch finds them (one read), rather than creating them (a write each).
            from flows.gpu_limit import ensure_lane_limits
            from storyboard.lane import lanes_from_settings
            from storyboard.settings import load_settings

            setup = time.monotonic()
            lanes = lanes_from_settings(load_settings())
            ensure_lane_limits([lane.limit_tag for lane in lanes], logging.getLogger("bench"))
            result["setup_s"] = time.monotonic() - setup
            from flows.image_batch import image_batch

            result["settle_s"] = max(
                0.0, boot + result["api_boot_s"] + API_SETTLE_S - time.monotonic()
            )
            time.sleep(result["settle_s"])
        result["rss_before_run"] = read_status()["VmRSS"]
        api.reset()
        stack.enter_context(timer.active())
        sampler = stack.enter_context(ProcessSampler(SAMPLE_S))
        profiler = stack.enter_context(StackSampler()) if args.profile else None
        t0, cpu0 = time.monotonic(), time.process_time()
        if args.mode == "flow":
            outcome = run_flow(image_batch, draft=args.draft)
        elif args.mode == "flow-batch-slot":
            outcome = run_flow_batch_slot(image_batch)
        else:
            outcome = run_baseline()
        t1, cpu1 = time.monotonic(), time.process_time()
    result.update(outcome)
    result.update(
        t0=t0,
        t1=t1,
        # Every thread of this process (not the simulator's, not the ephemeral API's).
        cpu_s=cpu1 - cpu0,
        stored_at=timer.stored_at,
        store_seconds=dict(timer.seconds),
        store_busy_s=timer.busy_s,
        store_calls=dict(timer.calls),
        api_requests=dict(api.by_endpoint),
        api_times=list(api.times),
        peak_rss=sampler.peak_rss,
        max_threads=sampler.max_threads,
        threads_after=read_status()["Threads"],
        thread_names=sampler.names,
    )
    if profiler is not None:
        result["profile"] = profiler.report()
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

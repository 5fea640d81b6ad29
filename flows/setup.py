"""One idempotent setup command for a Prefect server: pool, limits, deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m flows.setup --timezone UTC

Creates (or updates) the process work pool `gpu`, each lane's tag concurrency limit of 1 (the
guard of one ComfyUI server across machines, named by lane on the Concurrency page;
flows.gpu_limit; on one machine the lane lock guards it too), and every deployment of
prefect.yaml. Running it again changes nothing that is already right.

The pool's limit is not what keeps a GPU to one feeder (the lane limits do that, and the
batch deployment's own limit keeps batches to one at a time); it only bounds how many flow
run processes the workers start: one batch plus ON_DEMAND_PER_LANE on-demand runs per lane,
so an on-demand run never waits at the pool behind a batch. Each of them queues at the front
of a server, so more than two per lane would only wait on the GPU.

Start the worker with PREFECT_WORKER_QUERY_SECONDS=1: Prefect's default poll (10 s) adds up
to 10 s to every on-demand render; at 1 s the flow run's process start is most of what is left
(benchmarks/on_demand.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import get_current_settings
from prefect.workers.process import ProcessWorker

from flows.gpu_limit import LANE_LIMIT, ensure_lane_limits
from storyboard.errors import StoryboardError
from storyboard.lane import Lane, lanes_from_settings
from storyboard.settings import load_settings

POOL = "gpu"
BATCH_RUNS = 1  # prefect.yaml's image-batch/default runs one at a time
ON_DEMAND_PER_LANE = 2  # one at the front of each server's queue, one on its way there
PROJECT_DIR = Path(__file__).resolve().parent.parent
LOGGER = logging.getLogger("flows.setup")


def pool_limit(lanes: Sequence[Lane]) -> int:
    return BATCH_RUNS + ON_DEMAND_PER_LANE * len(lanes)


def ensure_pool_and_limits(lanes: Sequence[Lane]) -> None:
    with get_client(sync_client=True) as client:
        pool = WorkPoolCreate(
            name=POOL,
            type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
            concurrency_limit=pool_limit(lanes),
        )
        client.create_work_pool(pool, overwrite=True)
    ensure_lane_limits([lane.limit_tag for lane in lanes], LOGGER)


def deploy(timezone: str, project_dir: Path) -> None:
    env = {
        **os.environ,
        "STORYBOARD_SCHEDULE_TIMEZONE": timezone,
        "STORYBOARD_PROJECT_DIR": str(project_dir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
    done = subprocess.run(command, cwd=project_dir, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: `prefect deploy --all` failed (exit {done.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.setup", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--timezone", default="UTC", help="IANA timezone of the nightly 02:00 run (default UTC)"
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=PROJECT_DIR,
        help="directory holding prefect.yaml and the flows (default: this checkout)",
    )
    args = parser.parse_args(argv)
    try:
        ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"error: unknown timezone {args.timezone!r}; use an IANA name", file=sys.stderr)
        return 2
    if get_current_settings().api.url is None:
        print(
            "error: PREFECT_API_URL is not set; point it at your Prefect server"
            " (e.g. http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return 2
    try:
        lanes = lanes_from_settings(load_settings())
    except StoryboardError as exc:  # a bad STORYBOARD_COMFYUI_URLS: one line naming it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ensure_pool_and_limits(lanes)
    tags = ", ".join(f"{lane.limit_tag!r} (lane {lane.name!r})" for lane in lanes)
    print(
        f"work pool {POOL!r} (limit {pool_limit(lanes)}) and tag limits {tags} ({LANE_LIMIT}) ready"
    )
    deploy(args.timezone, args.project_dir.resolve())
    print("deployments image-batch/default and generate-image/on-demand ready")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

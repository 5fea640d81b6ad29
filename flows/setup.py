"""One idempotent setup command for a Prefect server: pool, limits, deployments.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m flows.setup --timezone UTC

Creates (or updates) the process work pool `gpu` with a concurrency limit of 1, the `gpu` tag
concurrency limit of 1 that guards the ComfyUI server across machines (flows.gpu_limit; on one
machine the lane lock guards it too), and every deployment of prefect.yaml.
Running it again changes nothing that is already right.
"""

from __future__ import annotations

import argparse
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

from flows.gpu_limit import LANE_LIMIT
from storyboard.lane import DEFAULT_LIMIT_TAG

POOL = "gpu"
POOL_LIMIT = 1
PROJECT_DIR = Path(__file__).resolve().parent.parent


def ensure_pool_and_limits() -> None:
    with get_client(sync_client=True) as client:
        pool = WorkPoolCreate(
            name=POOL,
            type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
            concurrency_limit=POOL_LIMIT,
        )
        client.create_work_pool(pool, overwrite=True)
        client.create_concurrency_limit(tag=DEFAULT_LIMIT_TAG, concurrency_limit=LANE_LIMIT)


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
    ensure_pool_and_limits()
    print(
        f"work pool {POOL!r} (limit {POOL_LIMIT}) and tag limit {DEFAULT_LIMIT_TAG!r}"
        f" ({LANE_LIMIT}) ready"
    )
    deploy(args.timezone, args.project_dir.resolve())
    print("deployments image-batch/default and generate-image/on-demand ready")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

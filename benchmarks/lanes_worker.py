"""`benchmarks.worker`'s flow mode, plus the orchestrator's CPU time over the measured run.

    python -m benchmarks.lanes_worker --mode flow --out result.json

The lanes come from the environment the driver sets (`STORYBOARD_COMFYUI_URLS`). The
result gains `cpu_s`: this process's CPU time (every thread: the task runner's workers,
the lanes' event loops, Prefect's service threads) from the flow's call to its return.
The ephemeral Prefect API is a subprocess of its own and is not in it.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import worker

_run_flow = worker.run_flow


def run_flow_timed(image_batch: Any) -> dict[str, Any]:
    cpu0 = time.process_time()
    outcome = _run_flow(image_batch)
    outcome["cpu_s"] = time.process_time() - cpu0
    return outcome


if __name__ == "__main__":
    # worker.main looks run_flow up when it runs, so the timed one is what it calls.
    worker.run_flow = run_flow_timed
    worker.main()

"""The simulator in a process of its own, so its CPU and memory are not the orchestrator's.

    python -m benchmarks.simproc --steps 20 --step-s 0.1     # --steps 0: each graph's own

Prints one JSON line `{"url": ...}` when it listens; then, for each line `runs` read on stdin,
prints the RunRecords so far as one JSON line; exits at end of input. RunRecord times are
`time.monotonic()`, one clock for every process on Linux (CLOCK_MONOTONIC), so they compare
directly with the orchestrator's timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from storyboard.simulator import SimulatorConfig, serve_simulator


async def serve(steps: int, step_s: float) -> None:
    loop = asyncio.get_running_loop()
    # 0: every prompt takes its own graph's sampler steps, as a real server (drafts: fewer).
    config = SimulatorConfig(steps=steps or None, step_s=step_s)
    async with serve_simulator(config) as sim:
        print(json.dumps({"url": sim.url}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "runs":
                runs = [[r.prompt_id, r.start, r.end, r.status] for r in sim.runs]
                print(json.dumps({"runs": runs}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-s", type=float, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.steps, args.step_s))


if __name__ == "__main__":
    main()

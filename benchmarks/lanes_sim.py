"""One lane's simulated GPU server in a process of its own, for the multi-lane benchmark.

    python -m benchmarks.lanes_sim --steps 20 --step-s 0.1 --lora-switch-seconds 3

Like `benchmarks.simproc`, plus what warming up costs (`--load-seconds`,
`--lora-switch-seconds`, `--reference-seconds`) and what the lane benchmark must know
of each run. It prints `{"url": ...}` once it listens, then answers one JSON line per
command read on stdin:

- `count`: `{"ok": k}`, the runs that ended in success so far (cheap, for polling);
- `runs`: `{"runs": [...]}`, every RunRecord with the sentence it rendered (the
  benchmark's prompts say `storyboard frame {i}:`) and the warm state it left
  (references by content digest, so two servers' names for one image compare equal);
- `kill`: the same `runs` answer, then SIGKILL to itself: the lane dies with no goodbye
  on its sockets, and the answer holds exactly the runs that finished before it.

It exits at end of input. Times are `time.monotonic()` (CLOCK_MONOTONIC, one clock for
every process), comparable with the orchestrator's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from typing import Any

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from storyboard.simulator.graph import execution_order
from storyboard.simulator.warm import warm_state

SENTENCE = re.compile(r"storyboard frame (\d+):")
OUTPUT_CLASSES = ("SaveImage", "PreviewImage")


def sentence_of(graph: dict[str, Any]) -> int | None:
    found = SENTENCE.search(json.dumps(graph))
    return int(found.group(1)) if found else None


def warm_of(sim: ComfyUISimulator, graph: dict[str, Any]) -> dict[str, Any]:
    outputs = [k for k, node in graph.items() if node.get("class_type") in OUTPUT_CLASSES]
    state = warm_state(graph, execution_order(graph, outputs))
    return {
        "models": sorted(state.models),
        "loras": sorted(list(lora) for lora in state.loras),
        "references": sorted(sim.files.input_digest(name) or name for name in state.references),
    }


def records(sim: ComfyUISimulator) -> list[dict[str, Any]]:
    out = []
    for run in sim.runs:
        graph = sim.graphs.get(run.prompt_id, {})
        out.append(
            {
                "prompt_id": run.prompt_id,
                "start": run.start,
                "end": run.end,
                "status": run.status,
                "load_s": run.load_s,
                "lora_s": run.lora_s,
                "reference_s": run.reference_s,
                "sentence": sentence_of(graph),
                "warm": warm_of(sim, graph),
            }
        )
    return out


async def serve(config: SimulatorConfig) -> None:
    loop = asyncio.get_running_loop()
    async with serve_simulator(config) as sim:
        print(json.dumps({"url": sim.url}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.strip()
            if command == "count":
                ok = sum(1 for run in sim.runs if run.status == "success")
                print(json.dumps({"ok": ok}), flush=True)
            elif command in ("runs", "kill"):
                # Built and printed without awaiting: no run can end between this answer
                # and the kill, so the answer is exactly what this server finished.
                print(json.dumps({"runs": records(sim)}), flush=True)
                if command == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lanes_sim")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-s", type=float, required=True)
    parser.add_argument("--load-seconds", type=float, default=0.0)
    parser.add_argument("--lora-switch-seconds", type=float, default=0.0)
    parser.add_argument("--reference-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        steps=args.steps,
        step_s=args.step_s,
        load_s=args.load_seconds,
        lora_switch_s=args.lora_switch_seconds,
        reference_s=args.reference_seconds,
    )
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()

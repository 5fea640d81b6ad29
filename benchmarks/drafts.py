"""Drafts against finals: one storyboard drawn as drafts, then rendered as finals, side by side.

    .venv/bin/python -m benchmarks.drafts [--n 20] [--step-s 0.05] [--out FILE]

Seeds the synthetic storyboard (`synthetic.py`: N sentences with 0-2 characters' references and
LoRAs) once, starts one simulator process that charges `--step-s` per sampler step of each
graph's own steps (as a real server: a draft's STORYBOARD_DRAFT_STEPS, a final's 20 from
flux-2.json), then runs the real `image-batch` flow twice in fresh worker processes on the same
store: the draft pass (`draft=True`), then the final pass. Each pass is timed as
`benchmarks.worker` times a run (its own `t0`..`t1`, after the embedded API is up), and the
simulator's busy seconds within that window are the pass's GPU time. The simulator charges no
more for a larger reference (STORYBOARD_DRAFT_REFERENCE_MEGAPIXELS is not in these numbers):
on a real GPU the smaller references save more.

Prints a table and writes every number as JSON (default `benchmarks/out/drafts.json`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import REPO, Simulator, prefect_home, worker_env
from benchmarks.synthetic import seed
from storyboard.store import Store

DRAFT_STEPS = 8
FINAL_STEPS = 20  # workflows/image/flux-2.json


def run_pass(
    name: str, data_dir: Path, scratch: Path, sim: Simulator, log: Any, draft: bool
) -> dict[str, Any]:
    """One worker process running the flow on the seeded store; its numbers and GPU time."""
    root = scratch / name
    root.mkdir()
    out = root / "result.json"
    command = [sys.executable, "-m", "benchmarks.worker", "--mode", "flow", "--out", str(out)]
    if draft:
        command.append("--draft")
    log.write(f"\n===== {name} =====\n")
    log.flush()
    env = worker_env(
        data_dir, prefect_home(root, scratch), sim.url, {"STORYBOARD_DRAFT_STEPS": "8"}
    )
    subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=log, check=True)
    raw: dict[str, Any] = json.loads(out.read_text())
    t0, t1 = raw["t0"], raw["t1"]
    runs = [r for r in sim.runs() if r[3] == "success" and t0 <= r[1] <= t1]
    return {
        "pass": name,
        "state": raw["state"],
        "message": raw["message"],
        "renders": len(runs),
        "wall_s": t1 - t0,
        "gpu_s": sum(end - start for _, start, end, _ in runs),
        "cpu_s": raw["cpu_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drafts", description=__doc__)
    parser.add_argument("--n", type=int, default=20, help="sentences (default 20)")
    parser.add_argument(
        "--step-s", type=float, default=0.05, help="seconds per sampler step (default 0.05)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "drafts.json")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="storyboard-drafts-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_path = args.out.with_suffix(".log")
    try:
        data_dir = scratch / "data"
        seed(Store(data_dir / "storyboard.duckdb"), data_dir, args.n)
        with log_path.open("w") as log:
            sim = Simulator(0.0, log, ["--steps", "0", "--step-s", repr(args.step_s)])
            try:
                passes = [
                    run_pass("draft", data_dir, scratch, sim, log, draft=True),
                    run_pass("final", data_dir, scratch, sim, log, draft=False),
                ]
            finally:
                sim.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    draft, final = passes
    result = {
        "n": args.n,
        "step_s": args.step_s,
        "steps": {"draft": DRAFT_STEPS, "final": FINAL_STEPS},
        "passes": passes,
        "wall_ratio": draft["wall_s"] / final["wall_s"],
        "gpu_ratio": draft["gpu_s"] / final["gpu_s"],
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"N = {args.n}, {args.step_s:g} s per sampler step (log: {log_path})")
    print(f"{'pass':<6} {'state':<10} {'renders':>7} {'wall s':>8} {'gpu s':>8} {'cpu s':>7}")
    for row in passes:
        print(
            f"{row['pass']:<6} {row['state']:<10} {row['renders']:>7} {row['wall_s']:>8.2f}"
            f" {row['gpu_s']:>8.2f} {row['cpu_s']:>7.2f}"
        )
    print(f"draft / final: wall {result['wall_ratio']:.2f}, GPU {result['gpu_ratio']:.2f}")
    every = all(row["state"] == "Completed" and row["renders"] == args.n for row in passes)
    return 0 if every else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The image-stage benchmark: `image-batch` against the simulator, beside a plain-loop baseline.

    python -m benchmarks.run                 # STANDARD: the duty-cycle bars, N = 10/100 at T = 0
    python -m benchmarks.run --full          # FULL: adds N = 1000 at T = 0 and N = 100 at T = 2 s
    python -m benchmarks.run --quick         # smoke run, < 2 min
    python -m benchmarks.run --n 10,100 --t 0,2
    python -m benchmarks.run --n 10000 --t 0 --modes flow   # the manual scale benchmark

Every (N, T) configuration runs each mode in a fresh process against a fresh simulator
process and a fresh store seeded with N dirty sentences, baseline first, then the flow.
Results: a table on stdout, benchmarks/out/results.json and benchmarks/out/results.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.synthetic import seed
from storyboard.store import Store

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
WORKFLOW = REPO / "workflows" / "image" / "flux-2.json"

# (N, T seconds per render). T = 10 s only for a small N: 20 renders are 200 s per mode.
# The bars: duty cycle at T = 2 and 10 s with N = 20; overhead at T = 0, N = 100 vs 1000.
STANDARD = [(10, 0.0), (100, 0.0), (20, 2.0), (20, 10.0)]
FULL = [*STANDARD, (1000, 0.0), (100, 2.0)]
QUICK = [(5, 0.0), (5, 0.5)]
MAX_RENDER_S = 1200.0  # --n/--t products whose N*T exceeds this are skipped (say so)
STEPS = 20  # sampler steps per render when T > 0; step_s = T / STEPS
MODES = ("baseline", "flow", "flow-batch-slot")  # the last one only when asked for
DEFAULT_MODES = "baseline,flow"
MIGRATED_DB = "prefect-migrated.db"  # in a benchmark's scratch folder: see prefect_home()
MIGRATE_S = 300.0


@dataclass(frozen=True)
class Config:
    n: int
    t: float

    @property
    def label(self) -> str:
        return f"N={self.n} T={self.t:g}s"


def sim_args(t: float) -> list[str]:
    steps, step_s = (1, 0.0) if t == 0 else (STEPS, t / STEPS)
    return ["--steps", str(steps), "--step-s", repr(step_s)]


class Simulator:
    """The simulator subprocess (benchmarks.simproc)."""

    def __init__(self, t: float, log: IO[str], args: list[str] | None = None) -> None:
        """`args`: the simulator's own (`--steps`, `--step-s`) instead of `sim_args(t)`."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.simproc", *(args or sim_args(t))],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator process did not start (see the log)")
        self.url: str = json.loads(line)["url"]

    def runs(self) -> list[list[Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("runs\n")
        self.proc.stdin.flush()
        runs: list[list[Any]] = json.loads(self.proc.stdout.readline())["runs"]
        return runs

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# Prefect settings of the caller's that a worker keeps: the test suite's (no block types
# registered at the API's start, a trust store of one certificate) spare its smoke runs ~2 s
# of CPU per fresh home and ~40 ms per Prefect client. Unset, as in `make bench`, a worker
# starts as a user's batch does, and that is what a benchmark measures.
KEPT_PREFECT = ("PREFECT_API_BLOCKS_REGISTER_ON_START", "PREFECT_API_SSL_CERT_FILE")


def worker_env(
    data_dir: Path, prefect_home: Path, comfyui_url: str, extra: dict[str, str]
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith(("STORYBOARD_", "PREFECT_")) or k in KEPT_PREFECT)
        and k not in ("COMFYUI_URL", "COMFYUI_WS_URL")
    }
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # A loaded machine can take longer than the 20 s default to boot the ephemeral API.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        DO_NOT_TRACK="1",
        STORYBOARD_DATA_DIR=str(data_dir),
        STORYBOARD_COMFYUI_URL=comfyui_url,
        STORYBOARD_WORKFLOW=str(WORKFLOW),
        STORYBOARD_RETRY_BACKOFF_S="1",
        STORYBOARD_STARTUP_WAIT_S="10",
    )
    env.update(extra)
    return env


def prefect_home(root: Path, scratch: Path) -> Path:
    """A fresh Prefect home for one measured run, its database copied from the benchmark's one
    migrated database (made on first use unless `--prefect-db` gave one): `api_boot_s` is the
    boot a deployment's server has, and no run pays the ~8 s of CPU a migration costs."""
    migrated = scratch / MIGRATED_DB
    if not migrated.exists():
        migrate_prefect_db(scratch / "prefect-template").replace(migrated)
    home = root / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated, home / "prefect.db")
    return home


def migrate_prefect_db(home: Path) -> Path:
    """Prefect's database in `home` (made if need be), migrated by this Prefect; its path."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        check=True,
        capture_output=True,
        timeout=MIGRATE_S,
    )
    return home / "prefect.db"


def keep_prefect_db(scratch: Path, given: Path | None) -> None:
    """`--prefect-db`: a database already migrated by this Prefect, used in place of making one."""
    if given is not None:
        shutil.copyfile(given, scratch / MIGRATED_DB)


def add_prefect_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefect-db",
        type=Path,
        help="a Prefect database this Prefect has migrated (`prefect server database upgrade`),"
        " copied into each measured run's Prefect home; default: one migrated per benchmark",
    )


def run_mode(
    config: Config, mode: str, scratch: Path, log: IO[str], profile: bool, extra: dict[str, str]
) -> dict[str, Any]:
    """Seed a fresh store, start a fresh simulator, run one worker; raw numbers back."""
    root = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch))
    data_dir = root / "data"
    seed(Store(data_dir / "storyboard.duckdb"), data_dir, config.n)
    sim = Simulator(config.t, log)
    out = root / "result.json"
    try:
        command = [sys.executable, "-m", "benchmarks.worker", "--mode", mode, "--out", str(out)]
        if profile:
            command.append("--profile")
        log.write(f"\n===== {config.label} {mode} =====\n")
        log.flush()
        subprocess.run(
            command,
            cwd=REPO,
            env=worker_env(data_dir, prefect_home(root, scratch), sim.url, extra),
            stdout=log,
            stderr=log,
            check=True,
        )
        raw: dict[str, Any] = json.loads(out.read_text())
        raw["runs"] = sim.runs()
    finally:
        sim.close()
        shutil.rmtree(root, ignore_errors=True)
    return raw


def metrics(config: Config, raw: dict[str, Any]) -> dict[str, Any]:
    """The issue's numbers from one mode's raw measurements."""
    n, t = config.n, config.t
    runs = sorted(raw["runs"], key=lambda r: r[1])
    ok = [r for r in runs if r[3] == "success"]
    busy = sum(r[2] - r[1] for r in runs)
    wall = raw["t1"] - raw["t0"]
    stored = raw["stored_at"]
    first_start = runs[0][1] if runs else None
    window = (max(stored) - first_start) if stored and first_start is not None else None
    concurrency = 0
    ends: list[float] = []
    for _, start, end, _ in runs:
        ends = [e for e in ends if e > start] + [end]
        concurrency = max(concurrency, len(ends))
    gaps = sorted(b[1] - a[2] for a, b in itertools.pairwise(runs))
    api_total = sum(raw["api_requests"].values())
    store_total = sum(raw["store_seconds"].values())
    return {
        "n": n,
        "t": t,
        "mode": raw["mode"],
        "state": raw["state"],
        "message": raw.get("message"),
        "images_stored": len(stored),
        "renders": len(runs),
        "renders_ok": len(ok),
        "max_concurrency": concurrency,
        "api_boot_s": raw.get("api_boot_s"),
        "settle_s": raw.get("settle_s"),
        "startup_s": (first_start - raw["t0"]) if first_start is not None else None,
        "wall_s": wall,
        "overhead_ms": 1000 * (wall - n * t) / n,
        # The simulator's own work (graph walk, placeholder PNG) is busy time too; this one
        # charges the orchestrator only with what is not render time.
        "overhead_excl_render_ms": 1000 * (wall - busy) / n,
        "render_busy_s": busy,
        # GPU idle between one render's end and the next one's start.
        "gap_median_ms": 1000 * gaps[len(gaps) // 2] if gaps else None,
        "gap_max_ms": 1000 * gaps[-1] if gaps else None,
        "duty_cycle": (busy / window) if window else None,
        "peak_rss_mib": raw["peak_rss"] / 2**20,
        "max_threads": raw["max_threads"],
        "cpu_ms_per_image": 1000 * raw["cpu_s"] / n,
        "store_ms_per_image": 1000 * store_total / n,
        "store_calls_per_image": sum(raw["store_calls"].values()) / n,
        "api_requests_per_image": api_total / n,
        "store_seconds": raw["store_seconds"],
        "store_calls": raw["store_calls"],
        "api_requests": raw["api_requests"],
        "profile": raw.get("profile"),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = [
    ("N", "n", "d"),
    ("T s", "t", "g"),
    ("mode", "mode", "s"),
    ("start s", "startup_s", ".2f"),
    ("wall s", "wall_s", ".1f"),
    ("ovh ms/img", "overhead_ms", ".1f"),
    ("duty %", "duty_pct", ".2f"),
    ("gap med ms", "gap_median_ms", ".0f"),
    ("RSS MiB", "peak_rss_mib", ".0f"),
    ("thr", "max_threads", "d"),
    ("cpu ms/img", "cpu_ms_per_image", ".1f"),
    ("store ms/img", "store_ms_per_image", ".1f"),
    ("API req/img", "api_requests_per_image", ".1f"),
    ("ok", "images_stored", "d"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " | ratio ovh | ratio wall |"]
    lines.append("|" + "---|" * (len(COLUMNS) + 2))
    for row in rows:
        shown = {**row, "duty_pct": None if row["duty_cycle"] is None else 100 * row["duty_cycle"]}
        cells = [fmt(shown[key], spec) for _, key, spec in COLUMNS]
        cells += [fmt(row.get("ratio_overhead"), ".2f"), fmt(row.get("ratio_wall"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_list(text: str, kind: type) -> list[Any]:
    return [kind(part) for part in text.split(",") if part.strip()]


def plan(args: argparse.Namespace) -> list[Config]:
    if args.configs:
        return [
            Config(int(n), float(t))
            for n, t in (item.split("x") for item in parse_list(args.configs, str))
        ]
    if args.n or args.t:
        ns = parse_list(args.n, int) if args.n else [10, 100, 1000]
        ts = parse_list(args.t, float) if args.t else [0.0, 2.0]
        pairs = []
        for n in ns:
            for t in ts:
                if n * t > args.max_render_s:
                    print(f"skipped N={n} T={t:g}s: {n * t:g} s of rendering > --max-render-s")
                    continue
                pairs.append((n, t))
    else:
        pairs = QUICK if args.quick else FULL if args.full else STANDARD
    return [Config(n, t) for n, t in pairs]


def machine() -> dict[str, Any]:
    import prefect

    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(meminfo[1]) / 2**20, 1),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "platform": platform.platform(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small N, T = 0 and 0.5 s (< 2 min)")
    parser.add_argument("--full", action="store_true", help="add N = 1000 (T = 0), N = 100 (T = 2)")
    parser.add_argument("--configs", default="", help="exact NxT pairs, e.g. 10x0,20x2")
    parser.add_argument("--n", default="", help="comma-separated sentence counts, e.g. 10,100")
    parser.add_argument("--t", default="", help="comma-separated seconds per render, e.g. 0,2")
    parser.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help="comma-separated, of baseline, flow and flow-batch-slot (an experiment: the gpu"
        " slot held once per batch, not per render); default baseline,flow",
    )
    parser.add_argument("--max-render-s", type=float, default=MAX_RENDER_S)
    parser.add_argument("--profile", action="store_true", help="sample the flow's stacks")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the measured processes (repeatable), e.g."
        " PREFECT_API_URL=http://127.0.0.1:4200/api to measure against a running server",
    )
    add_prefect_db_option(parser)
    parser.add_argument("--out", type=Path, default=OUT, help="directory for results and plot")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    modes = [m for m in MODES if m in parse_list(args.modes, str)]
    configs = plan(args)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "run.log"
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="storyboard-bench-"))
    try:
        keep_prefect_db(scratch, args.prefect_db)
        with log_path.open("w") as log:
            for config in configs:
                by_mode: dict[str, dict[str, Any]] = {}
                for mode in modes:
                    print(f"{config.label} {mode} ...", end=" ", flush=True)
                    begin = time.monotonic()
                    by_mode[mode] = metrics(
                        config, run_mode(config, mode, scratch, log, args.profile, extra)
                    )
                    print(f"{time.monotonic() - begin:.0f} s", flush=True)
                base = by_mode.get("baseline")
                for name, ours in by_mode.items():
                    if base and name != "baseline":
                        ours["ratio_overhead"] = ratio(ours["overhead_ms"], base["overhead_ms"])
                        ours["ratio_wall"] = ratio(ours["wall_s"], base["wall_s"])
                rows.extend(by_mode.values())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "machine": machine(),
        "command": " ".join(
            ["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "elapsed_s": time.monotonic() - started,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    from benchmarks.plot import plot

    plot(rows, args.out / "results.png")
    print()
    print(table(rows))
    print(
        f"\nresults: {args.out / 'results.json'}, plot: {args.out / 'results.png'}, log: {log_path}"
    )
    failed = [r for r in rows if r["images_stored"] != r["n"]]
    for row in failed:
        print(
            f"WARNING: {row['mode']} N={row['n']} T={row['t']:g}: {row['images_stored']}"
            f" stored, {row['state']}: {row['message']}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

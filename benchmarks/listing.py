"""`storyboard sentences PROJECT --dirty` over a big project: the time to its first line and
the peak memory of the whole listing, as a user runs it (a process, its output piped).

    python -m benchmarks.listing [--n 1000000] [--out DIR]

Imports N sentences from a Parquet file (`storyboard import`, timed apart), then runs the
listing twice: cut short by `head -1` (the first line's time) and read to the end by a pipe
(the whole listing's time and its peak RSS, from the kernel's rusage of that child).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PROJECT = "big"


def write_sentences(path: Path, n: int) -> None:
    ids = [f"s{i}" for i in range(1, n + 1)]
    table = pa.table(
        {
            "id": ids,
            "project_id": [PROJECT] * n,
            "position": list(range(1, n + 1)),
            "text": [f"Sentence {i}." for i in range(1, n + 1)],
            "image_prompt": [f"a harbour at dusk, boats, picture {i}" for i in range(1, n + 1)],
        }
    )
    pq.write_table(table, path)


def storyboard(data: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "storyboard", *argv]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listing")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="storyboard-listing-") as tmp:
        data = Path(tmp) / "data"
        env = {**os.environ, "STORYBOARD_DATA_DIR": str(data)}
        projects, sentences = Path(tmp) / "projects.json", Path(tmp) / "sentences.parquet"
        projects.write_text(json.dumps([{"id": PROJECT, "name": "Big"}]))
        write_sentences(sentences, args.n)
        subprocess.run(storyboard(data, "import", "projects", str(projects)), env=env, check=True)
        began = time.monotonic()
        subprocess.run(
            storyboard(data, "import", "sentences", str(sentences)),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        import_s = time.monotonic() - began

        listing = storyboard(data, "sentences", PROJECT, "--dirty")
        began = time.monotonic()
        with subprocess.Popen(listing, env=env, stdout=subprocess.PIPE) as head:
            assert head.stdout is not None
            head.stdout.readline()  # the header
            first_s = time.monotonic() - began
            head.stdout.close()
            head.wait()

        began = time.monotonic()
        whole = subprocess.Popen(listing, env=env, stdout=subprocess.PIPE)
        assert whole.stdout is not None
        lines = sum(1 for _ in whole.stdout)
        whole.stdout.close()
        _, _, usage = os.wait4(whole.pid, 0)  # this child's own rusage
        whole.returncode = 0
        whole_s = time.monotonic() - began
        peak_mib = usage.ru_maxrss / 1024
    result = {
        "n": args.n,
        "import_s": round(import_s, 1),
        "first_line_s": round(first_s, 2),
        "whole_listing_s": round(whole_s, 1),
        "lines": lines,
        "listing_peak_rss_mib": round(peak_mib, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "listing.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark command runs end to end and yields every metric (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.run import main

METRICS = (
    "startup_s",
    "wall_s",
    "overhead_ms",
    "duty_cycle",
    "peak_rss_mib",
    "max_threads",
    "store_ms_per_image",
    "api_requests_per_image",
)

pytestmark = pytest.mark.slow  # simulator and worker processes


@pytest.mark.timeout(180)
def test_benchmark_runs_both_modes_and_reports_every_metric(
    tmp_path: Path, prefect_db: Path
) -> None:
    argv = ["--n", "3", "--t", "0", "--prefect-db", str(prefect_db)]
    assert main([*argv, "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    rows = {row["mode"]: row for row in results["rows"]}
    assert set(rows) == {"baseline", "flow"}
    for mode, row in rows.items():
        missing = [name for name in METRICS if row[name] is None]
        assert not missing, f"{mode}: no value for {missing}"
        assert (row["n"], row["images_stored"], row["renders_ok"]) == (3, 3, 3), mode
        assert row["max_concurrency"] == 1, mode
        # The baseline records each picture (complete_job); a batch records them in groups.
        calls = row["store_calls"]
        assert calls.get("complete_job", 0) + calls.get("complete_jobs", 0) in range(1, 4), mode
    assert rows["baseline"]["api_requests_per_image"] == 0
    assert rows["flow"]["api_requests_per_image"] > 0
    assert rows["flow"]["ratio_overhead"] is not None
    assert results["machine"]["prefect"]
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")

"""The multi-lane benchmark runs end to end and its own parts measure what they claim.

No timing is asserted: the bars are for `python -m benchmarks.lanes`, not for CI.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks.lanes import LaneSim, main
from benchmarks.lanes_metrics import batch_metrics, ledger, position_order_switch_s
from benchmarks.lanes_seed import LORAS, REFERENCE_SETS, mixed_pairs
from benchmarks.run import sim_args

pytestmark = pytest.mark.slow  # simulator and worker processes


def warm(lora: str, *refs: str) -> dict[str, object]:
    return {"models": ["UNETLoader:m"], "loras": [[lora, 1.0, 0.0]], "references": list(refs)}


def test_storyboard_order_pays_every_change_and_dealing_splits_the_sequence() -> None:
    sentences = {0: warm("a", "r1"), 1: warm("b", "r1"), 2: warm("a", "r1"), 3: warm("b", "r2")}

    one_lane = position_order_switch_s(sentences, 1, lora_switch_s=3.0, reference_s=1.0)
    two_lanes = position_order_switch_s(sentences, 2, lora_switch_s=3.0, reference_s=1.0)

    # One lane: a r1 (3+1), b (3), a (3), b r2 (3+1). Two lanes: 0,2 (a r1 twice: 3+1)
    # and 1,3 (b r1: 3+1, then r2 new: 1).
    assert one_lane == 14.0
    assert two_lanes == 9.0


def test_the_mixed_storyboard_has_every_pair_equally_often_in_shuffled_positions() -> None:
    pairs = mixed_pairs(120)

    counts = {pair: pairs.count(pair) for pair in set(pairs)}
    assert len(counts) == len(LORAS) * len(REFERENCE_SETS) == 12
    assert set(counts.values()) == {10}
    changes = sum(1 for a, b in itertools.pairwise(pairs) if a != b)
    assert changes > 100  # shuffled: storyboard order nearly always switches
    assert mixed_pairs(120) == pairs  # the same storyboard every run


def test_ledger_counts_failed_and_repeated_attempts_but_not_released_jobs() -> None:
    released = "released: the run ended before this attempt finished"
    jobs = [
        ("s1", "failed", 1, released), ("s1", "completed", 1, None),  # lane died: free
        ("s2", "failed", 1, "ComfyUI said no"), ("s2", "completed", 2, None),  # two spent
        ("s3", "completed", 1, None),
    ]  # fmt: skip

    assert ledger(jobs) == {
        "jobs": 5,
        "jobs_by_status": {"completed": 3, "failed": 2},
        "jobs_released": 1,
        "attempts_spent": 2,
        "max_attempt": 2,
        "sentences_with_several_jobs": 2,
    }


def test_duplicate_renders_and_idle_lanes_are_reported() -> None:
    def run(sentence: int, start: float, end: float) -> dict[str, object]:
        return {"sentence": sentence, "start": start, "end": end, "status": "success",
                "load_s": 0.0, "lora_s": 0.0, "reference_s": 0.0}  # fmt: skip

    raw = {
        "t0": 0.0, "t1": 5.0, "stored_at": [2.0, 3.0, 4.0], "state": "Completed",
        "store_seconds": {"complete_job": 0.3}, "store_calls": {"complete_job": 3},
        "api_requests": {}, "peak_rss": 2**20, "max_threads": 1, "cpu_s": 0.6,
        # lane b idles 1 s between its renders and ends 1 s before lane a
        "lanes": {"a": [run(0, 1.0, 2.0), run(1, 2.0, 4.0)],
                  "b": [run(1, 0.5, 1.0), run(2, 2.0, 3.0)]},
    }  # fmt: skip

    row = batch_metrics(raw, n=3, t=1.0)

    assert row["sentences_rendered_twice"] == [1]
    assert row["per_lane"]["a"]["duty"] == 1.0
    assert row["per_lane"]["b"]["duty"] == pytest.approx(1.5 / 2.5)
    assert row["per_lane"]["b"]["duty_batch"] == pytest.approx(1.5 / 3.5)
    assert row["throughput"] == pytest.approx(3 / 4.0)
    assert row["lane_efficiency"] == pytest.approx(3 / 4.0 * (4.5 / 4) / 2)
    assert row["cpu_ms_per_image"] == pytest.approx(200.0)
    assert row["store_ms_per_image"] == pytest.approx(100.0)


@pytest.mark.timeout(60)
def test_a_killed_lane_answers_with_its_runs_then_refuses_connections(tmp_path: Path) -> None:
    with (tmp_path / "sim.log").open("w") as log:
        sim = LaneSim("lane0", sim_args(0.0), log)
        try:
            assert sim.ask("count") == {"ok": 0}
            sim.kill()
        finally:
            sim.close()

    assert sim.proc.returncode == -signal.SIGKILL
    assert sim.runs() == []
    address = urlsplit(sim.url)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((address.hostname, address.port), timeout=2),
    ):
        pass


@pytest.mark.timeout(180)
def test_the_lanes_benchmark_runs_a_mixed_batch_on_two_lanes(
    tmp_path: Path, prefect_db: Path
) -> None:
    argv = ["--scenarios", "warm", "--warm-n", "6", "--warm-t", "0", "--warm-lanes", "2",
            "--lora-switch-s", "0.2", "--reference-s", "0.1",
            "--prefect-db", str(prefect_db)]  # fmt: skip

    assert main([*argv, "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    row = results["warm"]
    assert (row["n"], row["images_stored"], row["sentences_rendered"]) == (6, 6, 6)
    assert sorted(row["per_lane"]) == ["lane0", "lane1"]
    assert sum(lane["renders_ok"] for lane in row["per_lane"].values()) == 6
    assert row["sentences_rendered_twice"] == []
    # Six shuffled sentences of 12 possible pairs: storyboard order switches at least on
    # the first prompt of each lane (a LoRA and a reference each: 0.3 s).
    assert row["position_switch_s"] >= 2 * 0.3
    assert row["switch_s"] > 0
    assert row["cpu_ms_per_image"] > 0
    assert row["ledger"]["attempts_spent"] == 0
    assert [bar["bar"] for bar in results["verdicts"]] == [
        "warm: switching <= 25% of storyboard order"
    ]

"""Scenarios 2 and 3: a real server SIGKILLed mid-batch, alone (and started again) or beside a
second lane. Every sentence completes, none twice, and no attempt is spent on the kill."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.support.real import (
    ComfyUI,
    jobs,
    pictures,
    popen_storyboard,
    storyboard,
    storyboard_env,
    wait_for,
)


def assert_no_attempt_spent(data_dir: Path) -> Counter[str]:
    """Each sentence completed exactly once, no failed job, every job a first attempt."""
    rows = jobs(data_dir)
    failed = [(row["sentence_id"], row["error"]) for row in rows if row["status"] == "failed"]
    assert not failed, failed
    assert max(row["attempt"] for row in rows) == 1, rows
    done = Counter(row["sentence_id"] for row in rows if row["status"] == "completed")
    assert sorted(done) == [f"s{n:02d}" for n in range(1, 9)], rows
    assert set(done.values()) == {1}, f"rendered twice: {done}"
    return Counter(row["status"] for row in rows)


def test_a_server_killed_mid_batch_and_started_again_costs_no_attempt(
    start_comfyui: Callable[..., list[ComfyUI]],
    prefect_server: dict[str, str],
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    (server,) = start_comfyui("only")
    data = tmp_path / "data"
    env = storyboard_env(prefect_server, data, server.url)
    assert storyboard("seed-demo", env=env).returncode == 0
    batch = popen_storyboard("render", "lighthouse", env=env, log=tmp_path / "render.log")
    wait_for(lambda: len(pictures(data)) >= 2, "two stored pictures")

    server.kill()
    down_at = len(pictures(data))
    server.start()
    back_s = wait_for(lambda: batch.poll() is not None, "the batch to end", timeout=600)

    output = (tmp_path / "render.log").read_text()
    assert batch.returncode == 0, output
    assert "8 completed" in output, output
    statuses = assert_no_attempt_spent(data)
    figure(
        f"restart: killed after {down_at}/8 stored, server started again; 8/8 completed, "
        f"0 attempts spent ({statuses['released']} released), {back_s:.0f} s after the restart"
    )


def test_two_lanes_one_killed_mid_batch_the_other_finishes_everything(
    start_comfyui: Callable[..., list[ComfyUI]],
    prefect_server: dict[str, str],
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    doomed, survivor = start_comfyui("doomed", "survivor")
    data = tmp_path / "data"
    urls = f"doomed={doomed.url},survivor={survivor.url}"
    # A lane whose server stays away 5 s is set aside; its sentences go to the other lane.
    env = storyboard_env(prefect_server, data, urls, STORYBOARD_RECONNECT_WAIT_S="5")
    assert storyboard("seed-demo", env=env).returncode == 0
    batch = popen_storyboard("render", "lighthouse", env=env, log=tmp_path / "render.log")
    wait_for(lambda: len(pictures(data)) >= 2, "two stored pictures")

    doomed.kill()
    killed_at = len(pictures(data))
    wait_for(lambda: batch.poll() is not None, "the batch to end", timeout=600)

    output = (tmp_path / "render.log").read_text()
    assert batch.returncode == 0, output
    assert "8 completed" in output, output
    statuses = assert_no_attempt_spent(data)
    figure(
        f"two lanes, one SIGKILLed after {killed_at}/8 stored: 8/8 completed, none twice, "
        f"0 attempts spent ({statuses['released']} released)"
    )

"""One feeder per ComfyUI server in every mode: two batch processes on the embedded default,
a killed feeder, and a slot a Prefect server restart left behind."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from flows.doctor_gpu import examine_gpu_limit
from flows.image_batch import image_batch
from flows.lane_feed import LANE_DEPTH
from storyboard.doctor import examine
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.batches import embedded_env, start_batch, wait_until
from tests.support.processes import ProcessTree
from tests.support.reliability import PROJECT, Tiny, make_tiny

pytestmark = pytest.mark.slow  # batch processes on embedded APIs

WAITING = "is fed by another batch on this machine"


@pytest.fixture(name="sim_thread")
def sim_thread_fixture() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(steps=2, step_s=0.01)) as thread:
        yield thread


def rendered_once_each(tiny: Tiny) -> dict[str, int]:
    return {sid: len(tiny.runs(sid, "success")) for sid in tiny.sentence_ids}


def test_two_batch_processes_on_the_embedded_api_feed_one_server_one_at_a_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sim_thread: SimulatorThread,
    prefect_home: Path,
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread, sentences=8)
    # Renders are slow (6 s) until the second batch is at the lane: the first still feeds then.
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "60")
    env = embedded_env(prefect_home)  # one PREFECT_HOME, one data dir: as a user
    tiny.sim.faults.slow_steps(3.0)
    first = start_batch(env, tmp_path / "first.log")
    second = None
    try:
        wait_until(lambda: tiny.sim.running is not None, "the first batch renders", alive=first)
        second = start_batch(env, tmp_path / "second.log")
        # Until the second reaches the lane: told to wait (the guard holds) or feeding as well.
        wait_until(
            lambda: second.said(WAITING) or tiny.sim.max_in_flight() > LANE_DEPTH,
            "the second batch at the lane",
            alive=second,
        )
        tiny.sim.faults.slow_steps(0.01)
        assert first.finish() == 0, first.text()
        assert second.finish() == 0, second.text()
    finally:
        for process in (first, second):
            if process is not None:
                process.kill_group()

    assert tiny.sim.max_in_flight() <= LANE_DEPTH, "both batches fed the server at once"
    assert second.said(WAITING)
    assert rendered_once_each(tiny) == dict.fromkeys(tiny.sentence_ids, 1)
    assert all(tiny.sentence(sid).status == "completed" for sid in tiny.sentence_ids)


def dead_run_jobs(tiny: Tiny) -> set[str]:
    """The sentences whose running job the doctor finds held by a dead run."""
    found = examine(tiny.store, tiny.data_dir, stale_after_s=3600)
    return {f.sentence_id for f in found if f.kind == "dead-run-job" and f.sentence_id}


def test_a_killed_feeder_does_not_keep_the_lane(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sim_thread: SimulatorThread,
    prefect_home: Path,
    processes: ProcessTree,
) -> None:
    """A batch on the embedded API killed with SIGKILL alone (the OOM killer): the API it
    started stops too (its watchdog), and the next batch, started at once with the image
    timeout an hour, holds the lane, takes over the dead run's claims with no attempt spent
    and completes everything."""
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread, sentences=4)
    # No timeout has to pass: the killed run's claims are known dead at once (run_lock).
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "3600")
    env = embedded_env(prefect_home)
    tiny.sim.faults.slow_steps(0.5)
    killed = start_batch(env, tmp_path / "killed.log")
    nxt = None
    try:
        # Once s1 has rendered, the next render outlasts s1's recording (grouped, within 2 s)
        # however loaded the machine: the kill lands with s1 recorded and a render running.
        wait_until(lambda: tiny.runs("s1", "success") != [], "the first render done", alive=killed)
        tiny.sim.faults.slow_steps(3.0)
        wait_until(
            lambda: tiny.sentence("s1").status == "completed" and tiny.sim.running is not None,
            "the first batch past its first render",
            alive=killed,
        )
        started = processes.descendants(killed.pid)
        assert started, "the embedded Prefect API runs in a process of its own"
        # Its undertaker would clear its claims at once (tests/flows/test_undertaker.py);
        # killed with it (an OOM kill of the whole service), the next run takes them over.
        [undertaker] = processes.running(killed.pid, "flows.undertaker")
        os.kill(undertaker, signal.SIGKILL)
        os.kill(killed.pid, signal.SIGKILL)  # the batch only, as `kill -9 PID` does
        assert killed.finish(30) == -signal.SIGKILL
        deadline = time.monotonic() + 15
        while any(processes.alive(pid) for pid in started):
            assert time.monotonic() < deadline, "the killed batch's embedded API outlived it"
            time.sleep(0.05)
        tiny.sim.faults.slow_steps(0.01)
        # What it left on the server drains (its undertaker, killed too, cannot take it off):
        # the lane's depth is checked for the next batch alone.
        deadline = time.monotonic() + 30
        while tiny.sim.queue() != {"queue_running": [], "queue_pending": []}:
            assert time.monotonic() < deadline, "the killed batch's prompts never ended"
            time.sleep(0.05)
        # Its claims are a dead run's at once: the next batch takes them over.
        left = {job.sentence_id for job in tiny.store.running_jobs()}
        assert left and left <= dead_run_jobs(tiny)
        nxt = start_batch(env, tmp_path / "next.log")
        assert nxt.finish() == 0, nxt.text()
    finally:
        for process in (killed, nxt):
            if process is not None:
                process.kill_group()

    assert not nxt.said(WAITING)  # the dead run's slot did not hold it up
    assert nxt.said("held by no live run")  # the dead run's slot count, given back
    assert nxt.said("took over") and not nxt.said("skipped")
    for sid in left:  # taken over, no attempt spent
        jobs = tiny.store.jobs_for(PROJECT, sid)
        assert [(j.status, j.attempt) for j in jobs] == [("released", 1), ("completed", 1)]
    assert all(tiny.sentence(sid).status == "completed" for sid in tiny.sentence_ids)
    assert len(tiny.runs("s1", "success")) == 1  # completed before the kill: not redone
    assert tiny.sim.max_in_flight() <= LANE_DEPTH


@pytest.mark.usefixtures("no_feeder_runs")
def test_a_slot_left_by_a_server_restart_is_freed_by_the_next_batch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sim_thread: SimulatorThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One second for the slot: the batch cannot wait for it, it must free it.
    make_tiny(tmp_path, monkeypatch, sim_thread, STORYBOARD_QUEUE_TIMEOUT_S="1")
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=1)
        # What a restart leaves: the count in the database, the lease gone with the server's
        # memory (Prefect's default lease storage), and no run that could hold it.
        client.update_global_concurrency_limit(
            "tag:gpu", GlobalConcurrencyLimitUpdate(active_slots=1)
        )
    try:
        with caplog.at_level(logging.WARNING):
            state = image_batch(return_state=True)

        assert state.is_completed(), state.message
        assert "freed its slot, held by a dead run: 1 slot(s) counted with no holder" in (
            caplog.text
        )
        after = examine_gpu_limit("gpu", stale_after_s=60)
        assert after.counted == 0 and after.healthy, after.lines()
    finally:  # never leave the shared test API's lane blocked for the next tests
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                "tag:gpu", GlobalConcurrencyLimitUpdate(active_slots=0)
            )

"""`flows.doctor_gpu --repair` never frees the slot of a live batch: one on this machine on the
embedded default (its lane lock), one seen only through the Prefect server (its flow run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypes
from prefect.client.schemas.objects import StateType
from prefect.settings import get_current_settings

from flows.doctor_gpu import examine_gpu_limit
from flows.lane_feed import LANE_DEPTH
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.batches import embedded_env, start, start_batch, wait_until
from tests.support.reliability import make_tiny

pytestmark = pytest.mark.slow  # batch processes on an embedded API


@pytest.fixture(name="sim_thread")
def sim_thread_fixture() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(steps=2, step_s=0.01)) as thread:
        yield thread


def test_repair_on_the_embedded_api_leaves_the_slot_of_a_live_batch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sim_thread: SimulatorThread,
    prefect_home: Path,
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread, sentences=6)
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "60")
    env = embedded_env(prefect_home)
    # The batch renders for longer than the doctor's embedded API takes to boot: 6 renders of
    # 2 steps, 10 s each. 3 s steps gave a 36 s window, and a boot on a loaded machine took
    # about that (the doctor then found the lane already let go). Sped up once it has looked.
    tiny.sim.faults.slow_steps(10.0)
    batch = start_batch(env, tmp_path / "batch.log")
    try:
        wait_until(lambda: batch.said("holding lane"), "the batch holds the lane", alive=batch)
        doctor = start(["-m", "flows.doctor_gpu", "--repair"], env, tmp_path / "doctor.log")
        assert doctor.finish() == 0, doctor.text()
        still_feeding = batch.popen.poll() is None
        tiny.sim.faults.slow_steps(0.01)
        assert batch.finish() == 0, batch.text()
    finally:
        batch.kill_group()

    assert still_feeding, "the batch ended before the doctor looked: nothing was tested"
    report = doctor.text()
    assert "1 slot(s) taken" in report
    assert f"live: a batch feeds lane 'default' on this machine (pid {batch.pid}," in report
    assert "freed" not in report
    assert tiny.sim.max_in_flight() <= LANE_DEPTH
    assert all(tiny.sentence(sid).status == "completed" for sid in tiny.sentence_ids)


def running_batches() -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=StateTypes(any_=[StateType.RUNNING]))
            )
        )
    return [str(run.id) for run in runs]


@pytest.mark.usefixtures("prefect_api")
def test_repair_on_a_server_never_frees_the_flow_run_lease_of_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> None:
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread, sentences=3)
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "60")
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    tiny.sim.faults.slow_steps(1.0)
    # Runs an earlier test on this worker's API left Running (its own processes killed).
    before = set(running_batches())
    batch = start_batch(env, tmp_path / "batch.log")
    try:
        wait_until(lambda: batch.said("holding lane"), "the batch holds the lane", alive=batch)
        # As from another machine: no lane lock to look at, only what the server knows.
        report = examine_gpu_limit("gpu", stale_after_s=60, repair=True, lanes=[])
        holders = [run for run in running_batches() if run not in before]
        tiny.sim.faults.slow_steps(0.01)
        assert batch.finish() == 0, batch.text()
    finally:
        batch.kill_group()

    assert report.counted == 1 and not report.repaired, report.lines()
    assert len(holders) == 1 and any(holders[0] in line for line in report.live), report.lines()
    assert all(tiny.sentence(sid).status == "completed" for sid in tiny.sentence_ids)
    after = examine_gpu_limit("gpu", stale_after_s=60, lanes=[])
    assert after.counted == 0 and after.healthy, after.lines()

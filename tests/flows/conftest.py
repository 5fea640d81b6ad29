"""Fixtures of the flow tests here: the reliability tests' simulator and tiny project (their
builders are in tests/support/reliability.py). A module that needs another simulator defines
its own `sim_thread`, which takes precedence over this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from flows.doctor_gpu import feeder_runs
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.reliability import Tiny, make_tiny


@pytest.fixture(name="sim_thread")
def sim_thread_fixture() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(steps=2, step_s=0.01)) as thread:
        yield thread


@pytest.fixture(name="tiny")
def tiny_fixture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> Tiny:
    return make_tiny(tmp_path, monkeypatch, sim_thread)


@pytest.fixture
def no_feeder_runs(prefect_api: None) -> None:
    """The worker's shared test API with no batch or on-demand run left Running or Pending
    by an earlier test (a feeder it killed, a run it created and never started): such a run,
    with no evidence either way, may be on another machine, and a test of a slot no run
    holds must not find one."""
    with get_client(sync_client=True) as client:
        for run_id, _, _ in feeder_runs(client):
            client.set_flow_run_state(
                run_id, Crashed(message="left by an earlier test"), force=True
            )

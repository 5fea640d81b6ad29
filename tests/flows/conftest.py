"""Fixtures of the flow tests here: the reliability tests' simulator and tiny project (their
builders are in tests/support/reliability.py). A module that needs another simulator defines
its own `sim_thread`, which takes precedence over this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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

"""Which lane an on-demand render goes to: GET /queue of every lane, against real simulators."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from storyboard.errors import ComfyUIConnectionError
from storyboard.lane import Lane
from storyboard.lane_choice import choose_lane
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.clients import graph

# Long renders: what a test queues stays on the server while the lanes are asked.
SLOW = SimulatorConfig(steps=100, step_s=0.1)


def lane_of(name: str, url: str) -> Lane:
    return Lane(name=name, comfyui_url=url, ws_url="ws" + url.removeprefix("http") + "/ws")


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the probe closes


def queue_prompts(url: str, count: int) -> None:
    for seed in range(count):
        body = {"prompt": graph(seed), "prompt_id": str(uuid.uuid4())}
        response = httpx.post(f"{url}/prompt", json=body, timeout=5)
        assert response.status_code == 200, response.text


@pytest.fixture
def two_sims() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    with SimulatorThread(SLOW) as busy, SimulatorThread(SLOW) as idle:
        yield busy, idle


def test_the_lane_with_the_least_work_ahead_is_chosen_and_a_silent_one_left_out(
    two_sims: tuple[SimulatorThread, SimulatorThread],
) -> None:
    busy, idle = two_sims
    queue_prompts(busy.url, 2)
    dead = lane_of("dead", closed_port_url())
    lanes = [dead, lane_of("busy", busy.url), lane_of("idle", idle.url)]

    chosen = choose_lane(lanes, wait_s=2)
    assert (chosen.lane.name, chosen.running, chosen.pending) == ("idle", 0, 0)

    # Without the idle one, the busy lane is the only one answering: 1 running, 1 pending.
    chosen = choose_lane(lanes[:2], wait_s=2)
    assert (chosen.lane.name, chosen.running, chosen.pending) == ("busy", 1, 1)


def test_no_lane_answering_within_the_wait_names_every_lane() -> None:
    lanes = [lane_of("left", closed_port_url()), lane_of("right", closed_port_url())]
    started = time.monotonic()
    with pytest.raises(ComfyUIConnectionError) as raised:
        choose_lane(lanes, wait_s=0.6, timeout_s=0.5)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert "\n" not in message
    assert "lane 'left'" in message and "lane 'right'" in message
    assert "STORYBOARD_COMFYUI_URLS" in message

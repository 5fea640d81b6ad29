"""A server that answers but executes nothing: a prompt waiting in its queue is not held for the
whole queue budget (an hour) but taken off once the queue has shown no progress for `stall_s`.

The prompts ahead of ours are another client's, as on a shared server: their steps are sent to
that client only, so all our socket hears of them is the server's status at each queue change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from storyboard.comfyui.waiting import QueueWatch, ahead_of
from storyboard.errors import ComfyUIStalledError, ComfyUIUnavailableError, is_retryable
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import client_for, graph


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=3, step_s=0.005), port=0) as server:
        yield server


async def _submit_as_another_client(sim: ComfyUISimulator, seed: int) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{sim.url}/prompt", json={"prompt": graph(seed=seed), "client_id": "someone-else"}
        )
    prompt_id: str = answer.json()["prompt_id"]
    return prompt_id


async def test_a_prompt_behind_a_hung_one_is_taken_off_and_the_server_called_stuck(
    sim: ComfyUISimulator,
) -> None:
    sim.faults.hang_next(1)
    hung = await _submit_as_another_client(sim, seed=1)
    async for comfy in client_for(sim.url, stall_s=1.0):
        began = time.monotonic()
        with pytest.raises(ComfyUIStalledError) as caught:
            await comfy.run(graph(seed=2), timeout_s=60)
        waited = time.monotonic() - began
    error = caught.value
    assert error.running == (hung,)
    assert f"prompt {hung} ran for 1 s without a sign of progress" in str(error)
    assert "STORYBOARD_STALL_S" in str(error) and "our prompt: removed" in str(error)
    assert isinstance(error, ComfyUIUnavailableError) and not is_retryable(error)
    assert waited >= 1.0  # never before the bound; the queue budget (an hour) never reached
    queue = sim.queue()
    assert [row[1] for row in queue["queue_running"]] == [hung]  # someone else's: untouched
    assert queue["queue_pending"] == []  # ours: taken off, it will not run behind our back


async def test_a_queue_that_moves_holds_a_prompt_longer_than_the_bound(
    sim: ComfyUISimulator,
) -> None:
    # Three prompts of 0.6 s each ahead of ours: 1.8 s of waiting in all against a bound of
    # 1 s, each change of the queue heard on our socket as the server's status.
    sim.faults.slow_steps(0.2)
    ahead = [await _submit_as_another_client(sim, seed=seed) for seed in (3, 4, 5)]
    async for comfy in client_for(sim.url, stall_s=1.0):
        result = await comfy.run(graph(seed=6), timeout_s=60)
    assert [run.prompt_id for run in sim.runs] == [*ahead, result.prompt_id]
    assert all(run.status == "success" for run in sim.runs)


async def test_without_a_bound_a_stuck_queue_is_waited_out_as_before(
    sim: ComfyUISimulator,
) -> None:
    sim.faults.hang_next(1)
    await _submit_as_another_client(sim, seed=7)
    async for comfy in client_for(sim.url):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0):
                await comfy.run(graph(seed=8), timeout_s=60)


def test_the_watch_needs_silence_and_two_equal_looks_half_the_bound_apart() -> None:
    watch = QueueWatch(stall_s=10.0, moved_at=0.0)
    still = ahead_of("ours", ["hung"], ["a", "ours"])
    assert still == (("hung",), ("a",))

    assert watch.seconds_to_look(now=0.0, heard_at=0.0) == 5.0
    assert not watch.look_due(now=4.9, heard_at=0.0)
    assert not watch.looked(now=5.0, heard_at=0.0, ahead=still)  # a first look: no verdict
    assert watch.seconds_to_look(now=5.0, heard_at=0.0) == 5.0
    assert watch.looked(now=10.0, heard_at=0.0, ahead=still)  # silent 10 s, the same twice


def test_a_frame_heard_or_a_queue_that_changed_starts_the_silence_again() -> None:
    watch = QueueWatch(stall_s=10.0, moved_at=0.0)
    first = ahead_of("ours", ["a"], ["b", "ours"])
    assert not watch.looked(now=5.0, heard_at=0.0, ahead=first)
    # A frame at 7: the look at 5 is older than the silence, a fresh one is due at 12.
    assert watch.seconds_to_look(now=8.0, heard_at=7.0) == 4.0
    assert not watch.looked(now=12.0, heard_at=7.0, ahead=first)
    assert watch.seconds_to_look(now=12.0, heard_at=7.0) == 5.0
    assert watch.looked(now=17.0, heard_at=7.0, ahead=first)

    watch = QueueWatch(stall_s=10.0, moved_at=0.0)
    assert not watch.looked(now=5.0, heard_at=0.0, ahead=first)
    moved = ahead_of("ours", ["b"], ["ours"])  # a finished, b runs: no frame reached us
    assert not watch.looked(now=10.0, heard_at=0.0, ahead=moved)
    assert watch.moved_at == 10.0
    assert not watch.looked(now=15.0, heard_at=0.0, ahead=moved)  # 5 s of silence: not yet
    assert watch.looked(now=20.0, heard_at=0.0, ahead=moved)


def test_a_prompt_no_longer_waiting_is_never_stalled() -> None:
    watch = QueueWatch(stall_s=10.0, moved_at=0.0)
    assert ahead_of("ours", ["ours"], []) is None  # it runs: the run's own budget bounds it
    assert not watch.looked(now=5.0, heard_at=0.0, ahead=None)
    assert not watch.looked(now=10.0, heard_at=0.0, ahead=None)
    assert watch.moved_at == 10.0

"""On-demand renders jump the queue: `front=True` posts `"front": true` and keeps it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from storyboard.comfyui import ComfyUIClient, Event, Started
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import graph

WAIT_S = 10.0


class PromptBodies:
    """The JSON body of every POST /prompt the client sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path == "/prompt":
            self.bodies.append(json.loads(request.content))


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=2, step_s=0.005), port=0) as server:
        yield server


@pytest.fixture
def bodies() -> PromptBodies:
    return PromptBodies()


@pytest.fixture
async def comfy(sim: ComfyUISimulator, bodies: PromptBodies) -> AsyncIterator[ComfyUIClient]:
    async with (
        httpx.AsyncClient(event_hooks={"request": [bodies]}) as http,
        ComfyUIClient(
            sim.url, http=http, backoff=lambda _: 0.01, poll_interval_s=0.05, request_timeout_s=5
        ) as client,
    ):
        yield client


async def _until(condition: Any, what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_front_prompt_runs_before_those_queued_earlier(
    sim: ComfyUISimulator, comfy: ComfyUIClient, bodies: PromptBodies
) -> None:
    sim.faults.hang_next(1)  # the batch's running prompt holds the GPU
    running = await comfy.submit(graph(seed=1))
    await _until(lambda: sim.running is not None, "the first prompt to start")
    batch = [await comfy.submit(graph(seed=seed)) for seed in (2, 3)]
    urgent = await comfy.submit(graph(seed=4), front=True)

    assert [body.get("front") for body in bodies.bodies] == [None, None, None, True]
    await comfy.cancel(running)
    for prompt_id in [urgent, *batch]:
        await comfy.wait(prompt_id, timeout_s=WAIT_S)
    order = [run.prompt_id for run in sim.runs if run.status == "success"]
    assert order == [urgent, *batch]


async def test_a_front_prompt_resubmitted_after_a_restart_goes_to_the_front_again(
    sim: ComfyUISimulator, comfy: ComfyUIClient, bodies: PromptBodies
) -> None:
    sim.faults.hang_next(1)
    restarted: list[str] = []

    def restart_when_started(event: Event) -> None:
        if isinstance(event, Started) and not restarted:
            restarted.append(event.prompt_id)
            sim.faults.restart()

    result = await comfy.run(
        graph(seed=5), timeout_s=WAIT_S, on_event=restart_when_started, front=True
    )
    assert restarted and result.prompt_id != restarted[0]  # it was lost and sent again
    assert [body.get("front") for body in bodies.bodies] == [True, True]

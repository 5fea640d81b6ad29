"""Time and restarts: queue wait is not render time, a restart costs no attempt.

Against the simulator over real sockets: another client's prompts queued ahead of
ours, `faults.restart(down_s=...)` (queue and history lost, connections refused
for a while) and `faults.refuse_connections` past the reconnect wait.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image

from storyboard.comfyui import ComfyUIClient, Event, Started
from storyboard.errors import ComfyUIConnectionError, ComfyUIUnavailableError, is_retryable
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import client_for, fast_backoff, graph
from tests.support.simulator import submit

STEP_S = 0.2  # three steps: a render of about 0.6 s


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=3, step_s=STEP_S), port=0) as server:
        yield server


def _seed(sim: ComfyUISimulator, prompt_id: str) -> int:
    return int(sim.graphs[prompt_id]["3"]["inputs"]["seed"])


async def test_waiting_behind_another_clients_prompts_is_not_charged_to_the_render_timeout(
    sim: ComfyUISimulator,
) -> None:
    # A render of ~0.6 s against a 3 s timeout (room for a busy machine), behind the other
    # client's eight renders (~5 s): only the queue wait exceeds the timeout.
    async with httpx.AsyncClient(base_url=sim.url) as other:  # no client_id: another program
        for seed in range(101, 109):
            await submit(other, graph(seed=seed), None)
    async for comfy in client_for(sim.url):
        results = await asyncio.gather(
            *(comfy.run(graph(seed=seed), timeout_s=3.0) for seed in (1, 2))
        )
    assert all(len(result.images) == 1 for result in results)
    assert [run.status for run in sim.runs] == ["success"] * 10
    for result in results:
        assert result.queue_s > 3.0  # at least the other client's renders ahead
        assert 2 * STEP_S < result.render_s < 3.0


async def test_queue_and_render_seconds_are_measured_separately(sim: ComfyUISimulator) -> None:
    async for comfy in client_for(sim.url):
        first, second = await asyncio.gather(
            comfy.run(graph(seed=3), timeout_s=5), comfy.run(graph(seed=4), timeout_s=5)
        )
    # Which one the server ran first is its choice; on a busy machine any wait grows, so only
    # lower bounds and the order of the two waits are asserted.
    ran_first, waited = sorted((first, second), key=lambda result: result.queue_s)
    assert waited.queue_s > 2 * STEP_S  # it waited for the other's whole render
    assert ran_first.render_s > 2 * STEP_S and waited.render_s > 2 * STEP_S


async def test_a_restart_with_one_render_running_and_one_queued_costs_no_attempt(
    sim: ComfyUISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    restarted = asyncio.Event()

    def restart_once_started(event: Event) -> None:
        if isinstance(event, Started) and not restarted.is_set():
            restarted.set()
            sim.faults.restart(down_s=2.0)

    async for comfy in client_for(sim.url, backoff=lambda attempt: min(0.05 * attempt, 0.5)):
        with caplog.at_level(logging.WARNING, logger="storyboard.comfyui"):
            results = await asyncio.gather(
                comfy.run(graph(seed=5), timeout_s=5, on_event=restart_once_started),
                comfy.run(graph(seed=6), timeout_s=5),
            )
    assert restarted.is_set()
    assert all(len(result.images) == 1 for result in results)
    assert {_seed(sim, result.prompt_id) for result in results} == {5, 6}
    # The running one was lost; afterwards each picture was rendered exactly once.
    assert sim.runs[0].status == "lost"
    rendered = Counter(_seed(sim, run.prompt_id) for run in sim.runs if run.status == "success")
    assert rendered == {5: 1, 6: 1}
    assert all(count == 1 for count in sim.submissions.values())  # no prompt id posted twice
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waits) == 1  # one line for the whole outage, not one per attempt


async def test_a_restart_between_the_finish_and_the_history_read_costs_no_attempt(
    sim: ComfyUISimulator,
) -> None:
    # The render finished, but its history is written late and the restart takes it:
    # the client must not spend the attempt on "history stayed empty"; the server does
    # not know the prompt any more, so it is lost and rendered again in the same run.
    sim.faults.history_delay(1.0)

    async def restart_once_rendered() -> None:
        while not any(run.status == "success" for run in sim.runs):
            await asyncio.sleep(0.005)
        sim.faults.restart(down_s=0.3)

    restarter = asyncio.create_task(restart_once_rendered())
    async for comfy in client_for(sim.url, history_attempts=20):
        result = await comfy.run(graph(seed=8), timeout_s=10)
    await restarter
    assert len(result.images) == 1
    assert [run.status for run in sim.runs] == ["success", "success"]
    assert result.prompt_id == sim.runs[1].prompt_id  # the resubmitted prompt's picture
    assert _seed(sim, result.prompt_id) == 8


async def test_a_server_away_longer_than_the_reconnect_wait_is_unavailable_within_it(
    sim: ComfyUISimulator,
) -> None:
    sim.faults.hang_next(1)

    def outage_when_started(event: Event) -> None:
        if isinstance(event, Started):
            sim.faults.refuse_connections(5.0)

    async for comfy in client_for(sim.url, reconnect_wait_s=0.5):
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ComfyUIUnavailableError, match=r"more than 0\.5s") as caught:
            await comfy.run(graph(seed=7), timeout_s=30, on_event=outage_when_started)
        waited = loop.time() - began
    assert waited < 2.0  # about the reconnect wait, far less than the outage
    assert not is_retryable(caught.value)
    assert caught.value.prompt_id in sim.graphs


async def _refused(url: str) -> None:
    """Return once a new connection to `url` is refused (the outage has begun)."""
    async with httpx.AsyncClient(base_url=url) as probe:
        for _ in range(200):
            try:
                await probe.get("/system_stats", timeout=1)
            except httpx.ConnectError:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the simulator kept accepting connections")


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def fresh_connections(url: str, **options: Any) -> AsyncIterator[ComfyUIClient]:
    """A client opening a new connection per request, as after a real server's death (the
    simulator's outage closes the listener, not the keep-alive connections it served)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(limits=limits) as http,
        ComfyUIClient(url, http=http, poll_interval_s=0.05, **options) as client,
    ):
        yield client


async def test_a_restart_while_a_reference_is_uploaded_costs_no_attempt(
    sim: ComfyUISimulator,
) -> None:
    # The socket is open (a render ran), then the server goes away for a moment: the upload
    # of the next sentence's reference waits for it, as a render would, instead of failing.
    backoff = lambda attempt: min(0.05 * attempt, 0.5)  # noqa: E731
    async with fresh_connections(sim.url, backoff=backoff, reconnect_wait_s=10) as comfy:
        await comfy.run(graph(seed=9), timeout_s=5)
        sim.faults.restart(down_s=1.0)
        await _refused(sim.url)
        name = await comfy.upload_image(png_bytes((255, 0, 0)), filename_hint="hero.png")
    assert name in sim.files.input_files()


async def test_an_upload_to_a_server_that_stays_away_ends_after_the_reconnect_wait(
    sim: ComfyUISimulator,
) -> None:
    async with fresh_connections(sim.url, backoff=fast_backoff, reconnect_wait_s=0.5) as comfy:
        await comfy.run(graph(seed=10), timeout_s=5)
        sim.faults.restart(down_s=5.0)
        await _refused(sim.url)
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ComfyUIUnavailableError, match=r"more than 0\.5s"):
            await comfy.upload_image(png_bytes((0, 255, 0)))
        assert loop.time() - began < 2.0  # the reconnect wait, not the outage
    assert sim.files.input_files() == []


async def test_a_prompt_posted_while_the_server_restarts_is_posted_once_it_is_back(
    sim: ComfyUISimulator,
) -> None:
    backoff = lambda attempt: min(0.05 * attempt, 0.5)  # noqa: E731
    async with fresh_connections(sim.url, backoff=backoff, reconnect_wait_s=10) as comfy:
        await comfy.run(graph(seed=11), timeout_s=5)
        sim.faults.restart(down_s=1.0)
        await _refused(sim.url)
        result = await comfy.run(graph(seed=12), timeout_s=5)
    assert len(result.images) == 1
    assert [_seed(sim, run.prompt_id) for run in sim.runs] == [11, 12]


async def test_a_restart_while_a_picture_is_downloaded_costs_no_attempt(
    sim: ComfyUISimulator,
) -> None:
    # The render is done, then the server goes away before its picture is fetched: the
    # download waits for it (its output folder survives a restart) instead of failing.
    backoff = lambda attempt: min(0.05 * attempt, 0.5)  # noqa: E731
    async with fresh_connections(sim.url, backoff=backoff, reconnect_wait_s=10) as comfy:
        result = await comfy.run(graph(seed=13), timeout_s=5)
        sim.faults.restart(down_s=1.0)
        await _refused(sim.url)
        data = await comfy.download(result.images[0], max_bytes=2**24)
        with pytest.raises(ComfyUIConnectionError):  # a thumbnail is asked once, not waited for
            sim.faults.restart(down_s=1.0)
            await _refused(sim.url)
            await comfy.download(result.images[0], max_bytes=2**24, preview="jpeg;90")
    assert data.startswith(b"\x89PNG")

"""The hostile-server faults (trickle, endless body, odd outputs) and the in-flight tally."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from tests.support.captures import sd_tiny
from tests.support.simulator import messages_until_done, socket, submit, wait_for


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=2, step_s=0.01)) as running:
        yield running


@pytest.fixture
async def http(sim: ComfyUISimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


def _graph(seed: int) -> dict[str, object]:
    graph = sd_tiny()
    graph["3"]["inputs"]["seed"] = seed
    return graph


async def _render(sim: ComfyUISimulator, http: httpx.AsyncClient, seed: int) -> dict[str, str]:
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, _graph(seed), "c")
        await messages_until_done(ws, prompt_id)
    [image] = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["outputs"]["9"]["images"]
    return dict(image)


async def test_trickle_view_announces_the_file_but_sends_a_byte_at_a_time(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    image = await _render(sim, http, 1)
    sim.faults.trickle_view_next(1, byte_every_s=0.05)
    received = b""
    async with http.stream("GET", "/view", params=image) as response:
        size = int(response.headers["content-length"])
        stop = time.monotonic() + 0.3
        async for chunk in response.aiter_raw():
            received += chunk
            if time.monotonic() > stop:
                break
    assert response.status_code == 200
    assert 1 <= len(received) <= 10 < size
    whole = await http.get("/view", params=image)  # the fault ran out: a normal answer
    assert len(whole.content) == size and whole.content.startswith(received)


async def test_endless_history_streams_until_the_client_hangs_up(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.endless_history_next(1)
    received = 0
    async with http.stream("GET", "/history/some-id") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        async for chunk in response.aiter_raw():
            if received == 0:
                assert chunk.startswith(b"[")
            received += len(chunk)
            if received > 1_000_000:
                break
    assert received > 1_000_000
    assert (await http.get("/history/some-id")).json() == {}


async def test_output_next_size_replaces_the_requested_size(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.output_next(1, size=(40, 24))
    odd = await _render(sim, http, 2)
    normal = await _render(sim, http, 3)
    with Image.open(io.BytesIO((await http.get("/view", params=odd)).content)) as picture:
        assert picture.size == (40, 24)
    with Image.open(io.BytesIO((await http.get("/view", params=normal)).content)) as picture:
        assert picture.size == (256, 144)  # what sd_tiny's latent asks for


async def test_output_next_16_bit_png_keeps_the_picture_in_its_range(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.output_next(1, mode="I;16")
    image = await _render(sim, http, 4)
    assert image["filename"].endswith("_.png")
    data = (await http.get("/view", params=image)).content
    with Image.open(io.BytesIO(data)) as picture:
        assert (picture.format, picture.mode) == ("PNG", "I;16")
        low, high = picture.getextrema()
    assert high > 255 and high - low > 257  # clipped to 8 bits it would be all white


async def test_output_next_float_is_a_tiff_in_zero_to_one(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.output_next(1, mode="F")
    image = await _render(sim, http, 5)
    assert image["filename"].endswith("_.tif")
    response = await http.get("/view", params=image)
    assert response.headers["content-type"] == "image/tiff"
    with Image.open(io.BytesIO(response.content)) as picture:
        assert (picture.format, picture.mode) == ("TIFF", "F")
        low, high = picture.getextrema()
    assert 0.0 <= low < high <= 1.0  # as an 8-bit value it would be all black


def test_output_next_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="output_next mode must be one of"):
        ComfyUISimulator().faults.output_next(1, mode="RGBA")


async def test_max_in_flight_counts_queued_and_running_per_client(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.hang_next(1)
    first = await submit(http, _graph(10), "a")
    await wait_for(lambda: sim.running is not None, "the first prompt to run")
    second = await submit(http, _graph(11), "a")
    await submit(http, _graph(12), "b")
    assert (sim.max_in_flight("a"), sim.max_in_flight("b"), sim.max_in_flight()) == (2, 1, 3)

    await http.post("/queue", json={"delete": [second]})
    await http.post("/interrupt", json={"prompt_id": first})
    await wait_for(lambda: sim.queue_remaining() == 0, "the queue to drain")
    async with socket(sim, "d") as ws:
        for seed in (20, 21, 22):  # one at a time: each ended before the next was sent
            await messages_until_done(ws, await submit(http, _graph(seed), "d"))
    assert sim.max_in_flight("d") == 1
    assert sim.max_in_flight() == 3
    assert sim.max_in_flight("nobody") == 0


async def test_a_restart_empties_the_in_flight_tally(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.hang_next(1)
    await submit(http, _graph(30), "a")
    await submit(http, _graph(31), "a")
    sim.faults.restart()
    await asyncio.sleep(0)
    async with socket(sim, "a") as ws:
        await messages_until_done(ws, await submit(http, _graph(32), "a"))
    assert sim.max_in_flight("a") == 2  # not 3: the two lost with the restart are gone

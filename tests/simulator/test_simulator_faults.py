"""Each injected fault does what a real ComfyUI failure does, seen over real sockets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from tests.support.captures import sd_tiny
from tests.support.simulator import messages_until_done, socket, submit, types, wait_for


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=3, step_s=0.01)) as running:
        yield running


@pytest.fixture
async def http(sim: ComfyUISimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


async def test_fail_next_sends_execution_error_then_recovers(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.fail_next(1, "CUDA out of memory")
    async with socket(sim, "c") as ws:
        failed = await messages_until_done(ws, await submit(http, sd_tiny(), "c"))
        graph = sd_tiny()
        graph["3"]["inputs"]["seed"] = 7
        fine = await messages_until_done(ws, await submit(http, graph, "c"))
    assert types(failed)[-3:] == ["execution_error", "status", "executing"]
    error = failed[-3]["data"]
    assert (error["node_id"], error["node_type"]) == ("3", "KSampler")
    assert error["exception_message"] == "CUDA out of memory"
    assert "execution_success" in types(fine)
    assert [r.status for r in sim.runs] == ["error", "success"]


async def test_broken_checkpoint_fails_like_the_capture(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    graph = sd_tiny()
    graph["4"]["inputs"]["ckpt_name"] = "garbage.safetensors"
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, graph, "c")
        seen = await messages_until_done(ws, prompt_id)
    [error] = [m["data"] for m in seen if m["type"] == "execution_error"]
    assert error["node_type"] == "CheckpointLoaderSimple"
    assert error["current_inputs"] == {"ckpt_name": ["garbage.safetensors"]}
    history = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert history["status"]["completed"] is False and history["outputs"] == {}


async def test_dropped_socket_does_not_stop_the_run(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.drop_websockets(after_steps=1)
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, sd_tiny(), "c")
        with pytest.raises(ConnectionClosed):
            await messages_until_done(ws, prompt_id)
    await wait_for(lambda: sim.history(prompt_id), "the run to finish without its socket")
    assert [r.status for r in sim.runs] == ["success"]
    assert sim.submissions[prompt_id] == 1


async def test_history_delay_keeps_history_empty_after_the_run(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.history_delay(0.3)
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, sd_tiny(), "c")
        seen = await messages_until_done(ws, prompt_id)
        assert "execution_success" in types(seen)
        assert (await http.get(f"/history/{prompt_id}")).json() == {}
    await wait_for(lambda: sim.history(prompt_id), "the delayed history")


async def test_refused_connections_come_back_on_the_same_port(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    url = sim.url
    sim.faults.refuse_connections(0.3)
    async with httpx.AsyncClient(base_url=url) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get("/system_stats")
        for _ in range(200):
            try:
                response = await fresh.get("/system_stats")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
        assert response.status_code == 200
    assert sim.url == url


async def test_corrupt_next_truncates_the_png(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.corrupt_next(1)
    async with socket(sim, "c") as ws:
        seen = await messages_until_done(ws, await submit(http, sd_tiny(), "c"))
    [output] = [m["data"]["output"] for m in seen if m["type"] == "executed"]
    data = (await http.get("/view", params=output["images"][0])).content
    assert data.startswith(b"\x89PNG")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


async def test_restart_loses_queue_history_and_sockets(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c") as ws:
        done = await submit(http, sd_tiny(), "c")
        await messages_until_done(ws, done)
        sim.faults.hang_next(1)
        graph = sd_tiny()
        graph["3"]["inputs"]["seed"] = 9
        lost = await submit(http, graph, "c")
        queued = await submit(http, sd_tiny(), "c")
        await wait_for(lambda: sim.running is not None, "the hanging prompt to start")
        sim.faults.restart()
        with pytest.raises(ConnectionClosed):
            await messages_until_done(ws, lost)
    for prompt_id in (done, lost, queued):
        assert (await http.get(f"/history/{prompt_id}")).json() == {}
        assert (await http.get(f"/api/jobs/{prompt_id}")).status_code == 404
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert [r.status for r in sim.runs] == ["success", "lost"]
    # Still serving: a new run after the restart works and is not served from the lost cache.
    async with socket(sim, "c") as ws:
        seen = await messages_until_done(ws, await submit(http, sd_tiny(), "c"))
    assert "progress" in types(seen)


async def test_slow_steps_changes_time_per_step(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.slow_steps(60.0)
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, sd_tiny(), "c")
        await wait_for(lambda: sim.running is not None, "the run to start")
        await http.post("/interrupt", json={"prompt_id": prompt_id})
        seen = await messages_until_done(ws, prompt_id)
    # A minute per step: interrupted before the first step could report progress.
    assert "execution_interrupted" in types(seen)
    assert "progress" not in types(seen)


async def test_previews_are_binary_frames_only_when_asked_for(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, sd_tiny(), "c", extra_data={"preview_method": "auto"})
        frames = []
        while True:
            raw = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(raw, bytes):
                frames.append(raw)
            elif '"node": null' in raw and prompt_id in raw:
                break
    assert len(frames) == 3  # one per step of the fixture's 3
    # Type 1, format 1: JPEG, what the captured server sends by default.
    assert all(f[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x01" for f in frames)
    assert Image.open(io.BytesIO(frames[0][8:])).format == "JPEG"

"""The simulator against the real ComfyUI captures: message order, 400 bodies, history shape."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from tests.support.captures import (
    CAPTURED_MODELS,
    NODE_ERROR_CASES,
    captured_error,
    error_graph,
    load_json,
    sd_tiny,
    ws_trace_types,
)
from tests.support.simulator import messages_until_done, socket, submit, types, wait_for


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    # steps=None: the graph's own 2 steps, as in the captured run.
    config = SimulatorConfig(steps=None, step_s=0.001, models=copy.deepcopy(CAPTURED_MODELS))
    async with serve_simulator(config) as running:
        yield running


@pytest.fixture
async def http(sim: ComfyUISimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


def _shape(value: Any) -> Any:
    """Keys and value types, recursively: what must match between two bodies."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


async def test_message_sequence_matches_captured_run(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c1") as ws:
        prompt_id = await submit(http, sd_tiny(), "c1")
        seen = await messages_until_done(ws, prompt_id)
    # progress_state frames are bookkeeping the client ignores; the greeting was read already.
    captured = [t for t in ws_trace_types() if t != "progress_state"][1:]
    assert [t for t in types(seen) if t != "progress_state"] == captured
    executing = [m["data"]["node"] for m in seen if m["type"] == "executing"]
    assert sorted(executing[:-1]) == sorted(sd_tiny()) and executing[-1] is None
    assert all(m["data"]["prompt_id"] == prompt_id for m in seen if m["type"] != "status")


async def test_history_has_captured_shape(sim: ComfyUISimulator, http: httpx.AsyncClient) -> None:
    async with socket(sim, "c1") as ws:
        prompt_id = await submit(http, sd_tiny(), "c1")
        await messages_until_done(ws, prompt_id)
    history = (await http.get(f"/history/{prompt_id}")).json()
    [captured] = load_json("history.json").values()
    entry = history[prompt_id]
    assert _shape(entry) == _shape(captured)
    assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["9"]
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"
    ]  # fmt: skip
    [image] = entry["outputs"]["9"]["images"]
    assert image == {"filename": "sd_tiny_00001_.png", "subfolder": "", "type": "output"}


@pytest.mark.parametrize("case", [*NODE_ERROR_CASES, "unknown_class_type", "no_outputs"])
async def test_400_bodies_match_captures(http: httpx.AsyncClient, case: str) -> None:
    response = await http.post("/prompt", json={"prompt": error_graph(case), "client_id": "c"})
    assert response.status_code == 400
    assert response.json() == captured_error(case)


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("no_prompt_key", {"client_id": "c"}),
        ("invalid_prompt_id", {"prompt_id": "not-a-uuid"}),
        ("uppercase_prompt_id", {"prompt_id": str(uuid.uuid4()).upper()}),
    ],
)
async def test_request_level_400s_match_captures(
    http: httpx.AsyncClient, case: str, body: dict[str, Any]
) -> None:
    if case != "no_prompt_key":
        body["prompt"] = sd_tiny()
    response = await http.post("/api/prompt", json=body)
    assert response.status_code == 400
    assert response.json() == captured_error(case)


async def test_identical_graph_is_fully_cached(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c1") as ws:
        first_id = await submit(http, sd_tiny(), "c1")
        first = await messages_until_done(ws, first_id)
        second_id = await submit(http, sd_tiny(), "c1")
        second = await messages_until_done(ws, second_id)
    [cached] = [m["data"]["nodes"] for m in second if m["type"] == "execution_cached"]
    assert sorted(cached) == sorted(sd_tiny())
    assert "executing" not in types(second)[:-1] and "progress" not in types(second)
    outputs = [
        [m["data"]["output"] for m in run if m["type"] == "executed"] for run in (first, second)
    ]
    assert outputs[0] == outputs[1]
    assert sim.files.dirs["output"].joinpath("sd_tiny_00001_.png").is_file()
    assert not sim.files.dirs["output"].joinpath("sd_tiny_00002_.png").exists()


async def test_changed_seed_reuses_only_unchanged_nodes(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    graph = sd_tiny()
    async with socket(sim, "c1") as ws:
        await messages_until_done(ws, await submit(http, graph, "c1"))
        graph["3"]["inputs"]["seed"] = 43
        seen = await messages_until_done(ws, await submit(http, graph, "c1"))
    [cached] = [m["data"]["nodes"] for m in seen if m["type"] == "execution_cached"]
    assert sorted(cached) == ["4", "5", "6", "7"]
    [executed] = [m["data"]["output"] for m in seen if m["type"] == "executed"]
    assert executed["images"][0]["filename"] == "sd_tiny_00002_.png"


async def test_late_socket_gets_only_its_greeting(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c1") as ws:
        prompt_id = await submit(http, sd_tiny(), "c1")
        await messages_until_done(ws, prompt_id)
    async with socket(sim, "c1") as late:
        assert (await http.get(f"/history/{prompt_id}")).json() != {}
        with pytest.raises(TimeoutError):
            await _recv(late, 0.2)


async def _recv(ws: Any, timeout: float) -> Any:
    return await asyncio.wait_for(ws.recv(), timeout)


async def test_messages_go_only_to_the_newest_socket_of_the_submitting_client(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with (
        socket(sim, "mine") as replaced,
        socket(sim, "mine") as newest,
        socket(sim, "other") as other,
    ):
        prompt_id = await submit(http, sd_tiny(), "mine")
        seen = await messages_until_done(newest, prompt_id)
        assert "execution_success" in types(seen)
        # ComfyUI keeps one socket per client id: the replaced one, still open, gets nothing.
        with pytest.raises(TimeoutError):
            await _recv(replaced, 0.1)
        # The other client sees queue status broadcasts and nothing of the run.
        other_types = []
        for _ in range(3):
            other_types.append(await _recv(other, 5))
        assert all('"type": "status"' in raw for raw in other_types)
        with pytest.raises(TimeoutError):
            await _recv(other, 0.1)


async def test_prompt_without_client_id_reaches_nobody_but_progress(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "watcher") as ws:
        prompt_id = await submit(http, sd_tiny(), None)
        await wait_for(lambda: sim.history(prompt_id), "the run to finish")
        kinds = set()
        with contextlib.suppress(TimeoutError):
            while True:
                kinds.add(_type(await _recv(ws, 0.2)))
    assert kinds <= {"status", "progress", "progress_state"} and "progress" in kinds


def _type(raw: Any) -> str:
    return str(json.loads(raw)["type"])

"""The simulator's queue: one prompt at a time, in order; interrupt, delete, jobs; files."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

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


def _graph(seed: int) -> dict[str, object]:
    graph = sd_tiny()
    graph["3"]["inputs"]["seed"] = seed
    return graph


async def test_prompts_run_one_at_a_time_in_order(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c") as ws:
        ids = [await submit(http, _graph(seed), "c") for seed in range(4)]
        for prompt_id in ids:
            await messages_until_done(ws, prompt_id)
    assert [run.prompt_id for run in sim.runs] == ids
    assert all(run.status == "success" for run in sim.runs)
    assert 1 <= sim.max_in_flight("c") <= len(ids)
    assert all(a.end <= b.start for a, b in zip(sim.runs, sim.runs[1:], strict=False))
    assert sim.busy_seconds() == pytest.approx(sum(r.end - r.start for r in sim.runs))
    assert dict(sim.submissions) == dict.fromkeys(ids, 1)


async def test_interrupt_stops_only_the_named_running_prompt(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.hang_next(1)
    async with socket(sim, "c") as ws:
        running = await submit(http, _graph(1), "c")
        pending = await submit(http, _graph(2), "c")
        await wait_for(lambda: sim.running is not None, "the first prompt to start")
        await http.post("/interrupt", json={"prompt_id": pending})  # not running: no effect
        assert (await http.get(f"/api/jobs/{running}")).json()["status"] == "in_progress"
        assert (await http.get(f"/api/jobs/{pending}")).json()["status"] == "pending"
        await http.post("/api/interrupt", json={"prompt_id": running})
        first = await messages_until_done(ws, running)
        await messages_until_done(ws, pending)
    assert types(first)[-3:] == ["execution_interrupted", "status", "executing"]
    interrupted = first[-3]["data"]
    assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "KSampler")
    assert [r.status for r in sim.runs] == ["interrupted", "success"]
    history = (await http.get(f"/history/{running}")).json()[running]
    assert history["status"]["status_str"] == "error" and history["outputs"] == {}
    assert (await http.get(f"/api/jobs/{running}")).json()["status"] == "cancelled"
    assert (await http.get(f"/api/jobs/{pending}")).json()["status"] == "completed"


async def test_front_puts_a_prompt_before_the_pending_ones_not_the_running_one(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.hang_next(1)
    async with socket(sim, "c") as ws:
        running = await submit(http, _graph(1), "c")
        await wait_for(lambda: sim.running is not None, "the first prompt to start")
        batch = [await submit(http, _graph(seed), "c") for seed in (2, 3)]
        urgent = await submit(http, _graph(4), "c", front=True)
        later = await submit(http, _graph(5), "c", front=True)  # as ComfyUI: newest front first
        queue = (await http.get("/queue")).json()
        assert [row[1] for row in queue["queue_running"]] == [running]
        assert [row[1] for row in queue["queue_pending"]] == [later, urgent, *batch]
        numbers = [row[0] for row in queue["queue_pending"]]
        assert numbers[0] < numbers[1] < 0 < numbers[2] < numbers[3]
        await http.post("/interrupt", json={"prompt_id": running})
        for prompt_id in (running, later, urgent, *batch):
            await messages_until_done(ws, prompt_id)
    assert [r.prompt_id for r in sim.runs] == [running, later, urgent, *batch]
    assert sim.max_concurrency() == 1


async def test_delete_and_clear_remove_pending_prompts(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    sim.faults.hang_next(1)
    async with socket(sim, "c") as ws:
        running = await submit(http, _graph(1), "c")
        doomed = [await submit(http, _graph(seed), "c") for seed in (2, 3, 4)]
        await wait_for(lambda: sim.running is not None, "the first prompt to start")
        await http.post("/queue", json={"delete": [doomed[0]]})
        queue = (await http.get("/queue")).json()
        assert [row[1] for row in queue["queue_running"]] == [running]
        assert [row[1] for row in queue["queue_pending"]] == doomed[1:]
        assert (await http.post(f"/api/jobs/{doomed[1]}/cancel")).json() == {"cancelled": True}
        await http.post("/api/queue", json={"clear": True})
        assert (await http.get("/queue")).json()["queue_pending"] == []
        assert (await http.get(f"/api/jobs/{doomed[2]}")).status_code == 404
        await http.post("/interrupt")  # no body: whatever runs
        await messages_until_done(ws, running)
    assert [r.prompt_id for r in sim.runs] == [running]
    assert (await http.post(f"/api/jobs/{running}/cancel")).json() == {"cancelled": False}


async def test_upload_dedups_renames_and_overwrites(http: httpx.AsyncClient) -> None:
    async def upload(data: bytes, **fields: str) -> dict[str, str]:
        response = await http.post(
            "/upload/image",
            files={"image": ("ref a.png", data, "image/png")},
            data={"type": "input", "subfolder": "refs", **fields},
        )
        assert response.status_code == 200
        result: dict[str, str] = response.json()
        return result

    assert await upload(b"one") == {"name": "ref a.png", "subfolder": "refs", "type": "input"}
    assert (await upload(b"one"))["name"] == "ref a.png"
    assert (await upload(b"two"))["name"] == "ref a (1).png"
    assert (await upload(b"three", overwrite="true"))["name"] == "ref a.png"
    view = await http.get("/view", params={"filename": "ref a.png", "subfolder": "refs",
                                           "type": "input"})  # fmt: skip
    assert view.content == b"three"
    info = (await http.get("/object_info/LoadImage")).json()
    assert info["LoadImage"]["input"]["required"]["image"][0] == [
        "refs/ref a (1).png", "refs/ref a.png"
    ]  # fmt: skip
    escape = await http.post(
        "/upload/image", files={"image": ("x.png", b"x")}, data={"subfolder": "../.."}
    )
    assert escape.status_code == 400


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "../secret.png"}, 400),
        ({"filename": "x.png", "subfolder": "../.."}, 400),
        ({"filename": "missing.png"}, 404),
        ({"filename": "x.png", "type": "elsewhere"}, 400),
    ],
)
async def test_view_refuses_traversal_and_missing(
    http: httpx.AsyncClient, params: dict[str, str], status: int
) -> None:
    assert (await http.get("/view", params=params)).status_code == status


async def test_unicode_prefix_and_subfolder_round_trip(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    graph = sd_tiny()
    graph["9"]["inputs"]["filename_prefix"] = "Kapitel 1/Szene ä 猫"
    async with socket(sim, "c") as ws:
        seen = await messages_until_done(ws, await submit(http, graph, "c"))
    [output] = [m["data"]["output"] for m in seen if m["type"] == "executed"]
    [image] = output["images"]
    assert image == {
        "filename": "Szene ä 猫_00001_.png",
        "subfolder": "Kapitel 1",
        "type": "output",
    }
    picture = await http.get("/api/view", params=image)
    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (256, 144)


async def test_missing_reference_image_is_rejected(http: httpx.AsyncClient) -> None:
    graph = sd_tiny()
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": "refs/nope.png"}}
    graph["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    response = await http.post("/prompt", json={"prompt": graph})
    # SaveImage is still valid, so ComfyUI runs it and reports the failed output's node.
    assert response.status_code == 200
    errors = response.json()["node_errors"]["20"]
    assert errors["errors"][0]["type"] == "custom_validation_failed"
    assert errors["dependent_outputs"] == ["21"]


async def test_models_and_object_info_list_the_configured_files(http: httpx.AsyncClient) -> None:
    assert "flux2_dev_fp8mixed.safetensors" in (await http.get("/models/diffusion_models")).json()
    assert (await http.get("/models/nope")).status_code == 404
    info = (await http.get("/api/object_info")).json()
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == [
        "flux2_dev_fp8mixed.safetensors"
    ]
    assert (await http.get("/object_info/NoSuchNode")).json() == {}
    assert (await http.get("/system_stats")).status_code == 200
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}

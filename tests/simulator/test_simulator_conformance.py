"""Every capture in tests/fixtures against the simulator, frame by frame where it is modelled.

The traces are compared whole: every WebSocket frame, its type, keys and values
(ids, timestamps and output file counters left out, 1 and 1.0 told apart),
binary previews by event type and format or metadata. Known differences from
the real server, and so not compared: preview image bytes (a placeholder frame,
not a decoded latent), `/api/jobs` listing, `/embeddings`, the models
folder list of `/models` (the simulator lists only its configured folders), and
the `traceback` lines of `execution_error` (always empty here).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import connect

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from tests.support.captures import (
    CAPTURED_MODELS,
    load_json,
    normalise_frame,
    object_info,
    sd_tiny,
    trace_frames,
)
from tests.support.simulator import WAIT_S, messages_until_done, socket, submit, wait_for

FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    config = SimulatorConfig(step_s=0.001, models=copy.deepcopy(CAPTURED_MODELS))
    async with serve_simulator(config) as running:
        yield running


@pytest.fixture
async def http(sim: ComfyUISimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


async def _warm_up(sim: ComfyUISimulator, http: httpx.AsyncClient) -> None:
    """An earlier prompt of another client, as the captured server had run before."""
    async with socket(sim, "earlier") as ws:
        await messages_until_done(ws, await submit(http, sd_tiny(), "earlier"))


async def _frames(
    sim: ComfyUISimulator, http: httpx.AsyncClient, graph: dict[str, Any], *,
    previews: bool = False, flags: bool = False,
) -> list[str]:  # fmt: skip
    """Every frame one socket receives, from its greeting to `executing` null."""
    extra = {"extra_data": {"preview_method": "latent2rgb"}} if previews else {}
    seen: list[str] = []
    async with connect(f"{sim.ws_url}?clientId=c", max_size=None) as ws:
        seen.append(normalise_frame(await asyncio.wait_for(ws.recv(), WAIT_S)))
        if flags:
            await ws.send(json.dumps(FLAGS))
            seen.append(normalise_frame(await asyncio.wait_for(ws.recv(), WAIT_S)))
        prompt_id = await submit(http, graph, "c", **extra)
        while True:
            raw = await asyncio.wait_for(ws.recv(), WAIT_S)
            seen.append(normalise_frame(raw))
            if isinstance(raw, str) and json.loads(raw) == {
                "type": "executing", "data": {"node": None, "prompt_id": prompt_id}
            }:  # fmt: skip
                return seen


def _with_seed(seed: int) -> dict[str, Any]:
    graph = sd_tiny()
    graph["3"]["inputs"]["seed"] = seed
    return graph


async def test_fresh_run_matches_ws_trace(sim: ComfyUISimulator, http: httpx.AsyncClient) -> None:
    # Nothing cached; previews requested (history.json shows latent2rgb), type 1 JPEG.
    assert await _frames(sim, http, sd_tiny(), previews=True) == trace_frames("ws_trace.jsonl")


async def test_partly_cached_run_matches_its_trace(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    await _warm_up(sim, http)
    graph = sd_tiny()
    graph["6"]["inputs"]["text"] = "a lighthouse in fog"
    graph["7"]["inputs"]["text"] = "oversaturated"
    # Loader and latent reused; both text encoders and what follows run, in ComfyUI's order.
    assert await _frames(sim, http, graph) == trace_frames("ws_trace_partly_cached.jsonl")


@pytest.mark.parametrize(
    "trace", ["ws_trace_previews_flags.jsonl", "ws_trace_preview_metadata.jsonl"]
)
async def test_declared_preview_metadata_matches_its_trace(
    sim: ComfyUISimulator, http: httpx.AsyncClient, trace: str
) -> None:
    await _warm_up(sim, http)
    # A new seed: only the sampler and what follows run; type-4 previews before `progress`.
    frames = await _frames(sim, http, _with_seed(7), previews=True, flags=True)
    assert frames == trace_frames(trace)


async def test_feature_flags_count_only_as_the_first_message(sim: ComfyUISimulator) -> None:
    async with socket(sim, "late") as ws:
        await ws.send(json.dumps({"type": "hello", "data": {}}))
        await ws.send(json.dumps(FLAGS))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
    assert not sim.hub.wants_metadata("late")


async def test_features_route_answers_the_captured_flags(http: httpx.AsyncClient) -> None:
    captured = load_json("protocol_probe.json")["GET /features"]["json"]
    assert (await http.get("/features")).json() == captured
    assert (await http.get("/api/features")).json() == captured


async def test_png_previews_when_configured() -> None:
    async with (
        serve_simulator(SimulatorConfig(step_s=0.001, preview_format="PNG")) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
    ):
        frames = await _frames(sim, http, sd_tiny(), previews=True)
    binary = [json.loads(f) for f in frames if "binary" in f]
    assert binary == [{"type": "binary-1", "data": 2}] * 2  # format 2: PNG, one per step


async def test_the_graph_s_own_step_count_is_reported(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    graph = _with_seed(3)
    graph["3"]["inputs"]["steps"] = 5
    async with socket(sim, "c") as ws:
        seen = await messages_until_done(ws, await submit(http, graph, "c"))
    progress = [(m["data"]["value"], m["data"]["max"]) for m in seen if m["type"] == "progress"]
    assert progress == [(step, 5) for step in range(1, 6)]


async def test_forced_steps_only_when_asked() -> None:
    async with (
        serve_simulator(SimulatorConfig(steps=1, step_s=0.0)) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
        socket(sim, "c") as ws,
    ):
        seen = await messages_until_done(ws, await submit(http, sd_tiny(), "c"))
    assert [m["data"]["max"] for m in seen if m["type"] == "progress"] == [1]


async def test_identical_graph_names_the_same_file_and_a_deleted_one_404s(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    async with socket(sim, "c") as ws:
        first = await submit(http, sd_tiny(), "c")
        await messages_until_done(ws, first)
        [image] = (await http.get(f"/history/{first}")).json()[first]["outputs"]["9"]["images"]
        sim.files.locate("output", image["subfolder"], image["filename"]).unlink()
        again = await submit(http, sd_tiny(), "c")  # another prompt id, the same graph
        await messages_until_done(ws, again)
    assert (await http.get(f"/history/{again}")).json()[again]["outputs"]["9"]["images"] == [image]
    assert (await http.get("/view", params=image)).status_code == 404


@pytest.mark.parametrize(
    ("preview", "kind"), [("jpeg;50", "JPEG"), ("webp", "WEBP"), ("png;90", "WEBP")]
)
async def test_view_re_encodes_an_output_as_its_preview_parameter_asks(
    sim: ComfyUISimulator, http: httpx.AsyncClient, preview: str, kind: str
) -> None:
    # ComfyUI 0.25.0 server.py: jpeg or webp at the given quality (90 without one), any other
    # format as webp; the file's own size.
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, sd_tiny(), "c")
        await messages_until_done(ws, prompt_id)
    [image] = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["outputs"]["9"]["images"]
    stored = (await http.get("/view", params=image)).content

    answer = await http.get("/view", params={**image, "preview": preview})

    assert answer.status_code == 200
    assert answer.headers["content-type"] == f"image/{kind.lower()}"
    with Image.open(io.BytesIO(answer.content)) as shown, Image.open(io.BytesIO(stored)) as png:
        assert (shown.format, shown.size) == (kind, png.size)


@pytest.mark.parametrize("case", ["execution_error_garbage_ckpt", "execution_interrupted"])
async def test_failed_runs_match_the_captured_messages_and_history(
    sim: ComfyUISimulator, http: httpx.AsyncClient, case: str
) -> None:
    captured = load_json("errors.json")[case]
    graph = sd_tiny()
    await _warm_up(sim, http)  # the captured server had run sd_tiny before either
    if case == "execution_error_garbage_ckpt":
        graph["4"]["inputs"]["ckpt_name"] = "garbage.safetensors"
    else:
        graph["5"]["inputs"]["width"] = 320  # only the latent changed: 4, 6, 7 cached
        graph["3"]["inputs"]["steps"] = 30
        sim.faults.slow_steps(0.5)  # time to interrupt after the first step, as captured
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, graph, "c")
        seen = []
        if case == "execution_interrupted":
            while not seen or seen[-1]["type"] != "progress":
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT_S)))
            await http.post("/interrupt", json={"prompt_id": prompt_id})
        seen += await messages_until_done(ws, prompt_id)
    ours = [normalise_frame(json.dumps(m)) for m in seen if m["type"] != "progress_state"]
    theirs = [normalise_frame(json.dumps(m)) for m in captured["ws_messages"] if "type" in m]
    assert _without_traceback(ours) == _without_traceback(theirs)
    entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    assert entry["outputs"] == captured["history_outputs"]
    status = json.loads(normalise_frame(json.dumps({"type": "s", "data": entry["status"]})))
    expected = {"type": "s", "data": captured["history_status"]}
    assert _without_traceback([json.dumps(status)]) == _without_traceback(
        [normalise_frame(json.dumps(expected))]
    )


def _without_traceback(frames: list[str]) -> list[Any]:
    """Frames without tracebacks and with `current_outputs` sorted (a set on the server)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: sorted(v) if k == "current_outputs" else strip(v)
                for k, v in value.items()
                if k != "traceback"
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(json.loads(frame)) for frame in frames]


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


async def test_object_info_has_the_captured_shape(http: httpx.AsyncClient) -> None:
    # The captured server had one input image: LoadImage lists it.
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    files = {"image": ("example.png", png.getvalue(), "image/png")}
    assert (await http.post("/upload/image", files=files)).status_code == 200
    captured = object_info()
    served = (await http.get("/object_info")).json()
    # The same models as the captured server: every captured class is served exactly.
    assert {name: served[name] for name in captured} == captured
    ksampler = load_json("protocol_probe.json")["GET /object_info/KSampler"]
    assert (await http.get("/object_info/KSampler")).json() == ksampler
    assert (await http.get("/object_info/NoSuchNode")).json() == {}


async def test_probe_answers_match(sim: ComfyUISimulator, http: httpx.AsyncClient) -> None:
    probe = load_json("protocol_probe.json")
    for route in ("GET /prompt", "GET /api/prompt", "GET /queue"):
        response = await http.get(route.split()[1])
        assert response.json() == probe[route]["json"], route
    for folder in ("checkpoints", "loras"):
        answer = (await http.get(f"/models/{folder}")).json()
        assert answer == probe[f"GET /models/{folder}"]["json"]
    assert (await http.get("/models/nope")).status_code == 404
    await _warm_up(sim, http)
    [entry] = (await http.get("/history", params={"max_items": 1})).json().values()
    [captured] = probe["GET /history?max_items=1"]["json"].values()
    assert sorted(entry) == sorted(captured["keys"])


async def test_jobs_and_queue_rows_have_the_captured_shape(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    probe = load_json("protocol_probe.json")
    sim.faults.hang_next(1)
    running = await submit(http, _with_seed(50), "c")
    await wait_for(lambda: sim.running is not None, "the run to start")
    await submit(http, _with_seed(51), "c")
    queue = (await http.get("/queue")).json()
    captured = probe["GET /queue (1 running, 2 pending)"]
    assert [len(row) for row in queue["queue_running"]] == [captured["item_len"]]
    assert _shape(queue["queue_running"][0][3]) == _shape(captured["queue_running"][0][3])
    job = (await http.get(f"/api/jobs/{running}")).json()
    assert _shape(job) == _shape(probe["GET /api/jobs/{running id}"])
    assert job["status"] == "in_progress"
    cancel = await http.post(f"/api/jobs/{running}/cancel")
    assert cancel.json() == probe["POST /api/jobs/{id}/cancel"]["json"]


async def test_a_restart_forgets_every_job(sim: ComfyUISimulator, http: httpx.AsyncClient) -> None:
    await _warm_up(sim, http)
    [old] = list(sim.graphs)
    assert (await http.get(f"/api/jobs/{old}")).json()["status"] == "completed"
    sim.faults.restart()
    response = await http.get(f"/api/jobs/{old}")
    assert (response.status_code, response.json()) == (404, {"error": "Job not found"})
    assert (await http.get(f"/history/{old}")).json() == {}
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}


async def test_a_prompt_without_client_id_shows_others_what_the_probe_saw(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    captured = load_json("protocol_probe.json")["no client_id: what another socket sees"]
    await _warm_up(sim, http)  # the probe's prompt had 4, 6, 7 and 5 cached
    async with socket(sim, "watcher") as ws:
        prompt_id = await submit(http, _with_seed(60), None)
        await wait_for(lambda: sim.history(prompt_id), "the run to finish")
        await wait_for(lambda: sim.queue_remaining() == 0, "the final status")
        seen = []
        while len(seen) < len(captured["types"]):
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.1)
    assert seen == captured["types"]


async def test_delete_interrupt_and_cancel_send_what_the_probe_saw(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    captured = load_json("protocol_probe.json")["ws during queue/delete/interrupt"]
    await _warm_up(sim, http)
    sim.faults.slow_steps(60.0)  # as on the probed server, no step ends before the interrupt
    seen: list[str] = []
    async with socket(sim, "c") as ws:

        async def read() -> None:
            while True:
                seen.append(normalise_frame(await ws.recv()))

        reader = asyncio.create_task(read())
        first = await submit(http, _with_seed(70), "c")
        second = await submit(http, _with_seed(71), "c")
        third = await submit(http, _with_seed(72), "c")
        await http.post("/queue", json={"delete": [third]})
        await wait_for(lambda: sim.running is not None, "the first prompt to run")
        await http.post("/interrupt", json={"prompt_id": first})
        await wait_for(lambda: sim.job(second)["status"] == "in_progress", "the second to run")
        assert (await http.post(f"/api/jobs/{second}/cancel")).json() == {"cancelled": True}
        await wait_for(lambda: len([f for f in seen if '"node": null' in f]) == 2, "both ends")
        reader.cancel()
    # Status broadcasts interleave by timing; the run's own frames are in a fixed order.
    # (The probe recorded no progress_state.)
    theirs = [normalise_frame(json.dumps(m)) for m in captured]
    ours = [f for f in seen if '"status"' not in f and '"progress_state"' not in f]
    assert ours == [f for f in theirs if '"status"' not in f]
    assert sim.job(third) is None


async def test_crop_nodes_are_described_as_comfyui_0_25_describes_them(
    http: httpx.AsyncClient,
) -> None:
    # From comfy_extras/nodes_images.py through the V3 schema's get_v1_info (both are
    # IO.ComfyNode classes, so every NodeInfoV1 field is present, in its order).
    box = {"x": 0, "y": 0, "width": 512, "height": 512}
    expected = {
        "ImageCrop": ("Crop Image (DEPRECATED)", True, ["trim"], False, ""),
        "ImageCropV2": (
            "Crop Image", False, ["crop", "cut", "trim"], True,
            "Crop an image to the specified dimensions.",
        ),
    }  # fmt: skip
    for name, (display, deprecated, aliases, intermediate, description) in expected.items():
        (info,) = (await http.get(f"/object_info/{name}")).json().values()
        assert list(info) == [
            "input", "input_order", "is_input_list", "output", "output_is_list", "output_name",
            "output_tooltips", "output_matchtypes", "name", "display_name", "description",
            "python_module", "category", "output_node", "deprecated", "experimental",
            "dev_only", "api_node", "price_badge", "search_aliases", "essentials_category",
            "has_intermediate_output",
        ]  # fmt: skip
        assert (info["name"], info["display_name"], info["description"]) == (
            name,
            display,
            description,
        )
        assert info["deprecated"] is deprecated
        assert info["has_intermediate_output"] is intermediate
        assert info["search_aliases"] == aliases
        assert info["python_module"] == "comfy_extras.nodes_images"
        assert (info["category"], info["essentials_category"]) == ("image/transform", "Image Tools")
        assert info["output_node"] is False
        assert info["input"]["required"]["image"] == ["IMAGE", {}]
    v2 = (await http.get("/object_info/ImageCropV2")).json()["ImageCropV2"]
    assert v2["input"]["required"]["crop_region"] == [
        "BOUNDING_BOX",
        {"default": box, "socketless": True, "component": "ImageCrop"},
    ]
    old = (await http.get("/object_info/ImageCrop")).json()["ImageCrop"]
    assert old["input"]["required"]["x"] == [
        "INT",
        {"default": 0, "min": 0, "max": 16384, "step": 1},
    ]
    assert old["input"]["required"]["width"] == [
        "INT",
        {"default": 512, "min": 1, "max": 16384, "step": 1},
    ]


async def test_a_fully_cached_prompt_sends_what_comfyui_sends(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    # execution.py: the cached output node is still staged, so execute() sends its cached
    # `executed` and finish_progress() a `progress_state`; PromptQueue sends `status` on
    # put (queued), on get (started) and on task_done (history written), then main.py the
    # `executing` null.
    await _warm_up(sim, http)
    frames = [json.loads(f) for f in await _frames(sim, http, sd_tiny())]
    assert [(f["type"], f["data"].get("node")) for f in frames] == [
        ("status", None), ("status", None), ("status", None),
        ("execution_start", None), ("execution_cached", None),
        ("executed", "9"), ("progress_state", None),
        ("execution_success", None), ("status", None), ("executing", None),
    ]  # fmt: skip
    statuses = [f["data"]["status"]["exec_info"]["queue_remaining"] for f in frames[:3]]
    assert [*statuses, frames[8]["data"]["status"]["exec_info"]["queue_remaining"]] == [
        0, 1, 1, 0
    ]  # fmt: skip
    assert "sid" in frames[0]["data"] and "sid" not in frames[1]["data"]
    assert frames[4]["data"]["nodes"] == list(sd_tiny())
    (state,) = frames[6]["data"]["nodes"].values()
    assert (state["node_id"], state["value"], state["max"], state["state"]) == (
        "9",
        1.0,
        1.0,
        "finished",
    )

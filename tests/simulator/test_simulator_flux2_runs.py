"""The simulator runs the product's FLUX.2 graph as the real ComfyUI 0.25 does.

Each case here is a difference the real-server conformance test (tests/real/
test_conformance.py) found and the simulator now follows: the sampler's step count from its
scheduler, ImageCropV2's preview output, the integer progress of a cached output node and
the UNet file that fails to load.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from storyboard.simulator import ComfyUISimulator, SimulatorConfig, serve_simulator
from storyboard.simulator.config import DEFAULT_MODELS
from storyboard.workflow import LoraChoice, RenderParams, inject, load_workflow
from tests.support.flows import FLUX_WORKFLOW
from tests.support.simulator import messages_until_done, socket, submit


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    models = copy.deepcopy(DEFAULT_MODELS)
    models["diffusion_models"].append("broken.safetensors")
    async with serve_simulator(SimulatorConfig(step_s=0.001, models=models)) as running:
        yield running


@pytest.fixture
async def http(sim: ComfyUISimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as client:
        yield client


def flux_graph(steps: int = 3) -> dict[str, Any]:
    params = RenderParams(
        prompt="a lighthouse",
        width=256,
        height=144,
        seed=5,
        lora=LoraChoice("storyboard_noir_v1.safetensors"),
        steps=steps,
        crop_class="ImageCropV2",
    )
    return inject(load_workflow(FLUX_WORKFLOW), params).graph


async def run(sim: ComfyUISimulator, http: httpx.AsyncClient, graph: dict[str, Any]) -> Any:
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, graph, "c")
        frames = await messages_until_done(ws, prompt_id)
    history = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
    return frames, history


async def test_a_custom_sampler_steps_as_its_scheduler_says(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    # SamplerCustomAdvanced has no `steps`: ComfyUI steps once per interval of the sigmas
    # Flux2Scheduler made (the simulator used to take 1).
    frames, _ = await run(sim, http, flux_graph(steps=3))
    progress = [(f["data"]["value"], f["data"]["max"]) for f in frames if f["type"] == "progress"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


async def test_the_crop_preview_says_it_is_not_animated(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    frames, history = await run(sim, http, flux_graph())
    crop = next(n for n, node in flux_graph().items() if node["class_type"] == "ImageCropV2")
    (executed,) = [f for f in frames if f["type"] == "executed" and f["data"]["node"] == crop]
    assert executed["data"]["output"]["animated"] == [False]
    assert history["outputs"][crop]["animated"] == [False]
    save = next(n for n, node in flux_graph().items() if node["class_type"] == "SaveImage")
    assert "animated" not in history["outputs"][save]


async def test_a_cached_output_node_finishes_with_integer_progress(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    # ComfyUI's finish_progress of a cached node sends 1 of 1 as integers (a run node's
    # progress_state are floats).
    await run(sim, http, flux_graph())
    frames, _ = await run(sim, http, flux_graph())
    (state,) = [f for f in frames if f["type"] == "progress_state"]
    (node,) = state["data"]["nodes"].values()
    assert (type(node["value"]), type(node["max"]), node["state"]) == (int, int, "finished")


async def test_a_unet_file_that_does_not_load_fails_its_loader(
    sim: ComfyUISimulator, http: httpx.AsyncClient
) -> None:
    graph = flux_graph()
    loader = next(n for n, node in graph.items() if node["class_type"] == "UNETLoader")
    graph[loader]["inputs"]["unet_name"] = "broken.safetensors"
    frames, history = await run(sim, http, graph)
    (error,) = [f["data"] for f in frames if f["type"] == "execution_error"]
    assert (error["node_id"], error["node_type"]) == (loader, "UNETLoader")
    assert loader not in error["executed"]
    assert error["exception_type"] == "safetensors._safetensors_rust.SafetensorError"
    assert error["current_inputs"] == {
        "unet_name": ["broken.safetensors"],
        "weight_dtype": ["default"],
    }
    assert (history["status"]["status_str"], history["outputs"], history["meta"]) == (
        "error",
        {},
        {},
    )

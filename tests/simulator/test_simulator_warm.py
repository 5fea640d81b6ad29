"""Warm models: the simulator charges a model load, LoRA switches and new references."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from storyboard.cli import build_parser
from storyboard.commands.simulator import config_from
from storyboard.simulator import ComfyUISimulator, RunRecord, SimulatorConfig, serve_simulator
from storyboard.simulator.warm import WarmState, charges, warm_state
from tests.support.captures import sd_tiny
from tests.support.paths import REPO
from tests.support.simulator import messages_until_done, socket, submit, wait_for

FLUX = REPO / "workflows" / "image" / "flux-2.json"
LOAD_S, LORA_S, REFERENCE_S = 0.2, 0.1, 0.05
NOIR, WATERCOLOR = "storyboard_noir_v1.safetensors", "storyboard_watercolor_v1.safetensors"


def flux(seed: int, lora: tuple[str, float] | None, references: list[str]) -> dict[str, Any]:
    """The FLUX.2 template at 64x64 with this LoRA (or none) and reference chain."""
    graph: dict[str, Any] = json.loads(FLUX.read_text(encoding="utf-8"))
    for name in ("7", "8", "9", "10"):  # the template's one reference chain
        del graph[name]
    conditioning: list[Any] = ["6", 0]
    for index, image in enumerate(references):
        ids = [f"r{index}{part}" for part in "lsev"]
        graph[ids[0]] = {"class_type": "LoadImage", "inputs": {"image": image}}
        graph[ids[1]] = {"class_type": "ImageScaleToTotalPixels", "inputs": {
            "image": [ids[0], 0], "upscale_method": "lanczos", "megapixels": 1.0,
            "resolution_steps": 1}}  # fmt: skip
        graph[ids[2]] = {"class_type": "VAEEncode",
                         "inputs": {"pixels": [ids[1], 0], "vae": ["3", 0]}}  # fmt: skip
        latent = {"conditioning": conditioning, "latent": [ids[2], 0]}
        graph[ids[3]] = {"class_type": "ReferenceLatent", "inputs": latent}
        conditioning = [ids[3], 0]
    graph["11"]["inputs"]["conditioning"] = conditioning
    if lora is None:
        del graph["4"]
        graph["11"]["inputs"]["model"] = ["1", 0]
    else:
        graph["4"]["inputs"].update(lora_name=lora[0], strength_model=lora[1])
    graph["5"]["inputs"]["text"] = f"frame {seed}"
    graph["12"]["inputs"]["noise_seed"] = seed
    for size_node in ("14", "15"):
        graph[size_node]["inputs"].update(width=64, height=64)
    return graph


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    config = SimulatorConfig(
        steps=1, step_s=0.0, load_s=LOAD_S, lora_switch_s=LORA_S, reference_s=REFERENCE_S
    )
    async with serve_simulator(config) as running:
        yield running


async def _render(
    sim: ComfyUISimulator, http: httpx.AsyncClient, graph: dict[str, Any]
) -> RunRecord:
    async with socket(sim, "c") as ws:
        prompt_id = await submit(http, graph, "c")
        await messages_until_done(ws, prompt_id)
    run = sim.runs[-1]
    assert (run.prompt_id, run.status) == (prompt_id, "success")
    return run


async def test_each_cause_is_charged_only_when_the_previous_prompt_differs(
    sim: ComfyUISimulator,
) -> None:
    async with httpx.AsyncClient(base_url=sim.url, timeout=10) as http:
        for name, colour in (("a.png", "red"), ("b.png", "green"), ("c.png", "blue")):
            files = {"image": (name, _png(colour), "image/png")}
            assert (await http.post("/upload/image", files=files)).status_code == 200
        steps = [
            (flux(1, (NOIR, 1.0), ["a.png"]), (LOAD_S, LORA_S, REFERENCE_S)),  # cold server
            (flux(2, (NOIR, 1.0), ["a.png"]), (0.0, 0.0, 0.0)),  # all warm
            (flux(3, (NOIR, 0.5), ["a.png", "b.png"]), (0.0, LORA_S, REFERENCE_S)),  # strength
            (flux(4, (WATERCOLOR, 0.5), ["b.png", "a.png"]), (0.0, LORA_S, 0.0)),  # name; order
            (flux(5, None, []), (0.0, LORA_S, 0.0)),  # unpatching counts too
            (flux(6, (NOIR, 1.0), ["c.png"]), (0.0, LORA_S, REFERENCE_S)),  # none -> LoRA
        ]
        for graph, (load_s, lora_s, reference_s) in steps:
            run = await _render(sim, http, graph)
            assert (run.load_s, run.lora_s, run.reference_s) == pytest.approx(
                (load_s, lora_s, reference_s)
            ), graph["5"]["inputs"]["text"]
            assert run.switch_s == pytest.approx(lora_s + reference_s)
            # The charge is time the GPU is busy, not only a number.
            assert run.end - run.start >= load_s + lora_s + reference_s - 0.01
        assert sim.switch_seconds() == pytest.approx(5 * LORA_S + 3 * REFERENCE_S)

        sim.faults.restart()
        await wait_for(lambda: sim.warm is None, "the restart")
        run = await _render(sim, http, flux(7, (NOIR, 1.0), ["c.png"]))
        assert (run.load_s, run.lora_s, run.reference_s) == pytest.approx(
            (LOAD_S, LORA_S, REFERENCE_S)
        )


def test_other_model_files_are_a_load_and_a_plain_load_image_is_no_reference() -> None:
    graph = sd_tiny()
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]  # img2img: encoded, but not a reference
    nodes = list(graph)
    first = warm_state(graph, nodes)
    assert first.references == frozenset() and first.loras == frozenset()
    other = copy.deepcopy(graph)
    other["4"]["inputs"]["ckpt_name"] = "other.safetensors"
    prices = {"load_s": 1.0, "lora_switch_s": 2.0, "reference_s": 3.0}
    assert charges(first, warm_state(other, nodes), **prices).total_s == 1.0
    assert charges(first, first, **prices).total_s == 0.0
    assert charges(None, first, **prices).load_s == 1.0
    empty = WarmState(frozenset(), frozenset(), frozenset())
    assert charges(None, empty, **prices).total_s == 1.0  # a fresh server loads regardless


async def test_an_interrupt_during_the_warm_up_ends_the_run_early() -> None:
    config = SimulatorConfig(steps=1, step_s=0.0, load_s=30.0)
    async with (
        serve_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.url) as http,
        socket(sim, "c") as ws,
    ):
        prompt_id = await submit(http, flux(1, None, []), "c")
        await wait_for(lambda: sim.warm is not None, "the warm-up to begin")
        await http.post("/interrupt", json={"prompt_id": prompt_id})
        await messages_until_done(ws, prompt_id)
    assert sim.runs[-1].status == "interrupted"
    assert sim.runs[-1].end - sim.runs[-1].start < 10


def test_the_command_passes_the_charges_on() -> None:
    args = build_parser().parse_args([
        "simulate-comfyui", "--load-seconds", "60", "--lora-switch-seconds", "3",
        "--reference-seconds", "1.5",
    ])  # fmt: skip
    config = config_from(args)
    assert (config.load_s, config.lora_switch_s, config.reference_s) == (60.0, 3.0, 1.5)


def test_config_rejects_negative_charges() -> None:
    for name in ("load_s", "lora_switch_s", "reference_s"):
        with pytest.raises(ValueError, match=name):
            SimulatorConfig(**{name: -1.0})

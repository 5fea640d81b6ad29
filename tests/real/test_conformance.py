"""Conformance: the simulator against a real ComfyUI, with the graphs the product builds.

The same graphs go to both servers on loopback: the WebSocket frames each sends to its
client (types, order, data keys and the values that carry structure), the /history entry's
key structure, the 400 body of a graph that fails validation, and /object_info of every
class our graphs use. Every difference that remains is listed, with its reason, in
conformance_differences.json; the test fails on one that is not listed and on a listed one
that no longer occurs, so the list stays the truth about the simulator.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import io
import json
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import connect

from storyboard.comfyui.uploads import content_name
from storyboard.pipeline import UPLOAD_SUBFOLDER, PipelineConfig
from storyboard.settings import load_settings
from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.simulator.config import DEFAULT_MODELS
from storyboard.workflow import (
    LoraChoice,
    RenderParams,
    crop_class_for,
    graph_for_job,
    inject,
    load_workflow,
)
from storyboard.workflow.slots import CROP_CLASSES
from tests.support.real import RENDER_ENV, REPO, ComfyUI

DIFFERENCES = Path(__file__).with_name("conformance_differences.json")
FLUX_WORKFLOW = REPO / "workflows" / "image" / "flux-2.json"
RUN_TIMEOUT_S = 240.0  # a CPU render of the test size takes seconds; a busy machine more
BROKEN_UNET = "broken.safetensors"  # in the real tier's models: UNETLoader fails on it
MISSING_LORA = "no_such_lora.safetensors"
WARM_UP = "warm-up"
# Node inputs that list files of a model or input folder: what differs there is the files.
FILE_LISTS = {
    ("UNETLoader", "unet_name"),
    ("CLIPLoader", "clip_name"),
    ("VAELoader", "vae_name"),
    ("LoraLoaderModelOnly", "lora_name"),
    ("LoraLoader", "lora_name"),
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("LoadImage", "image"),
}


# -- one server's answers --------------------------------------------------------------------


@dataclass
class Answer:
    """What one server did with one submission."""

    status_code: int
    body: Any
    frames: list[Any] = field(default_factory=list)  # parsed text frames, or bytes
    history: dict[str, Any] | None = None


async def submit(base_url: str, graph: dict[str, Any]) -> Answer:
    """Submit `graph` with a client id of our own and record its socket until the prompt is
    done (ComfyUI's `executing` with node null for it) or refused."""
    client_id = uuid.uuid4().hex
    ws_url = base_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    frames: list[Any] = []
    async with connect(ws_url, max_size=None) as socket:
        # The greeting status comes before anything we cause; wait for it so that it is
        # always first on both servers.
        frames.append(json.loads(await asyncio.wait_for(socket.recv(), RUN_TIMEOUT_S)))
        async with httpx.AsyncClient(timeout=30) as http:
            payload = {
                "prompt": graph,
                "client_id": client_id,
                # As our client asks for them: binary previews are part of the comparison.
                "extra_data": {"preview_method": "latent2rgb"},
            }
            response = await http.post(f"{base_url}/prompt", json=payload)
            body = response.json()
            if response.status_code != 200:
                return Answer(response.status_code, body, frames)
            prompt_id = body["prompt_id"]
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                assert left > 0, f"{base_url}: prompt {prompt_id} not done in {RUN_TIMEOUT_S} s"
                raw = await asyncio.wait_for(socket.recv(), left)
                frame = raw if isinstance(raw, bytes) else json.loads(raw)
                frames.append(frame)
                if (
                    isinstance(frame, dict)
                    and frame.get("type") == "executing"
                    and frame["data"].get("node") is None
                    and frame["data"].get("prompt_id") == prompt_id
                ):
                    break
            # The history entry is written before that last frame on both servers.
            entry = (await http.get(f"{base_url}/history/{prompt_id}")).json()
    return Answer(200, body, frames, entry.get(prompt_id))


def upload(base_url: str, data: bytes) -> str:
    """Upload a reference as the product does (content name, our subfolder)."""
    name = content_name(data)
    response = httpx.post(
        f"{base_url}/upload/image",
        files={"image": (name, data, "image/png")},
        data={"subfolder": UPLOAD_SUBFOLDER, "type": "input", "overwrite": "true"},
        timeout=30,
    )
    response.raise_for_status()
    answer = response.json()
    return f"{answer['subfolder']}/{answer['name']}" if answer["subfolder"] else answer["name"]


# -- normalising ------------------------------------------------------------------------------


def shape(value: Any) -> Any:
    """Keys and types, recursively, without the values (file names, times, ids)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        # A list's element shapes, each once, in first-seen order (lengths follow the graph).
        seen: list[Any] = []
        for item in value:
            if shape(item) not in seen:
                seen.append(shape(item))
        return seen
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def token(frame: Any) -> str:
    """One frame as the comparison sees it: its type, its data's keys, and the values that
    carry structure (which node, which state, which step); ids and times are left out."""
    if isinstance(frame, bytes):
        event, kind = struct.unpack(">II", frame[:8])
        fmt = Image.open(io.BytesIO(frame[8:])).format if event == 1 else "?"
        return f"binary event={event} format={kind} image={fmt}"
    kind, data = frame["type"], frame["data"]
    text = f"{kind} {sorted(data)}"
    if kind == "status":
        text += f" exec_info={sorted(data['status']['exec_info'].items())}"
    elif kind in ("executing", "executed"):
        text += f" node={data['node']}"
        if kind == "executed":
            text += f" output={json.dumps(shape(data['output']), sort_keys=True)}"
    elif kind == "execution_cached":
        text += f" nodes={sorted(data['nodes'])}"
    elif kind == "progress":
        text += f" node={data['node']} {data['value']}/{data['max']}"
    elif kind == "progress_state":
        nodes = data["nodes"]
        states = sorted((n, s["state"], s["value"], s["max"]) for n, s in nodes.items())
        keys = sorted({key for s in nodes.values() for key in s})
        text += f" node_keys={keys} nodes={states}"
    elif kind == "execution_error":
        text += f" node_type={data['node_type']} exception_type={data['exception_type']}"
        text += f" executed={sorted(data['executed'])}"
    return text


def flatten(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs of a nested value; a list's items by index."""
    if isinstance(value, dict):
        if not value:
            yield path, "{}"
        for key, item in value.items():
            yield from flatten(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        if not value:
            yield path, "[]"
        for index, item in enumerate(value):
            yield from flatten(item, f"{path}[{index}]")
    else:
        yield path, value


def without_file_lists(class_type: str, spec: dict[str, Any]) -> dict[str, Any]:
    """An /object_info entry with the files of a model or input folder taken out."""
    spec = copy.deepcopy(spec)
    for group in spec.get("input", {}).values():
        if not isinstance(group, dict):
            continue
        for name, entry in group.items():
            if (class_type, name) not in FILE_LISTS or not isinstance(entry, list):
                continue
            if entry and isinstance(entry[0], list):
                entry[0] = "<files>"
            elif entry and entry[0] == "COMBO" and len(entry) > 1:
                entry[1]["options"] = "<files>"
    return spec


# -- comparing ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    differences: list[str] = field(default_factory=list)
    frames: int = 0
    fields: int = 0

    def sequences(self, case: str, real: list[str], sim: list[str]) -> None:
        self.frames += len(real)
        matcher = difflib.SequenceMatcher(a=real, b=sim, autojunk=False)
        for op, a0, a1, b0, b1 in matcher.get_opcodes():
            if op != "equal":
                self.differences.append(
                    f"{case} ws {op}: real {real[a0:a1]} / simulator {sim[b0:b1]}"
                )

    def trees(self, where: str, real: Any, sim: Any) -> None:
        left, right = dict(flatten(real)), dict(flatten(sim))
        self.fields += len(left)
        for path in sorted(left.keys() | right.keys()):
            if path not in right:
                self.differences.append(f"{where} {path}: only real ({left[path]!r})")
            elif path not in left:
                self.differences.append(f"{where} {path}: only simulator ({right[path]!r})")
            elif left[path] != right[path]:
                self.differences.append(
                    f"{where} {path}: real {left[path]!r} / simulator {right[path]!r}"
                )


def listed_differences() -> dict[str, str]:
    """Every listed difference with its reason (one reason may cover several lines)."""
    entries = json.loads(DIFFERENCES.read_text(encoding="utf-8"))
    assert all(entry["reason"].strip() and entry["differences"] for entry in entries)
    return {line: entry["reason"] for entry in entries for line in entry["differences"]}


# -- the graphs ---------------------------------------------------------------------------------


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> PipelineConfig:
    """The product's render settings at the real tier's test sizes."""
    for name, value in {**RENDER_ENV, "STORYBOARD_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    return PipelineConfig.from_settings(load_settings())


def product_graph(
    config: PipelineConfig, object_info: dict[str, Any], references: list[str], seed: int = 1234
) -> dict[str, Any]:
    """A render's graph as storyboard.pipeline makes it (inject, then the job's copy)."""
    width, height = config.frame
    params = RenderParams(
        prompt="A lighthouse keeper climbs the stairs at dusk",
        width=width,
        height=height,
        seed=seed,
        lora=LoraChoice("storyboard_watercolor_v1.safetensors", 0.8),
        references=references,
        steps=config.steps,
        reference_megapixels=config.reference_megapixels,
        crop_class=crop_class_for(object_info),
    )
    return graph_for_job(inject(load_workflow(FLUX_WORKFLOW), params).graph, "conformance")


def reference_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 120, 40)).save(out, format="PNG")
    return out.getvalue()


def cases(config: PipelineConfig, base_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The scenarios, in order, against one server (the cached one follows its original)."""
    info = httpx.get(f"{base_url}/object_info", timeout=30).json()
    # ComfyUI keeps the cache of its last prompt only: one of our own first leaves both
    # servers with the same cache, whatever the shared server ran before (not compared).
    yield WARM_UP, product_graph(config, info, [], seed=99)
    plain = product_graph(config, info, [])
    yield "no-reference", plain
    yield "cached", plain
    yield "one-reference", product_graph(config, info, [upload(base_url, reference_png())])
    broken = copy.deepcopy(plain)
    for node in broken.values():
        if node["class_type"] == "UNETLoader":
            node["inputs"]["unet_name"] = BROKEN_UNET
    yield "execution-error", broken
    missing = copy.deepcopy(plain)
    for node in missing.values():
        if node["class_type"] == "LoraLoaderModelOnly":
            node["inputs"]["lora_name"] = MISSING_LORA
    yield "validation-400", missing


def run_cases(config: PipelineConfig, base_url: str) -> dict[str, Answer]:
    return {case: asyncio.run(submit(base_url, graph)) for case, graph in cases(config, base_url)}


def classes_used(config: PipelineConfig, info: dict[str, Any]) -> set[str]:
    graph = product_graph(config, info, [f"{UPLOAD_SUBFOLDER}/x.png"])
    template = json.loads(FLUX_WORKFLOW.read_text(encoding="utf-8"))
    return {n["class_type"] for n in [*graph.values(), *template.values()]} | set(CROP_CLASSES)


def test_the_simulator_answers_as_a_real_comfyui(
    shared_comfyui: ComfyUI, config: PipelineConfig, figure: Callable[[str], None]
) -> None:
    began = time.monotonic()
    real = run_cases(config, shared_comfyui.url)
    models = copy.deepcopy(DEFAULT_MODELS)
    models["diffusion_models"].append(BROKEN_UNET)  # present on the real server too
    sim_config = SimulatorConfig(step_s=0.01, models=models)
    with SimulatorThread(sim_config) as simulator:
        sim = run_cases(config, simulator.url)
        sim_info = httpx.get(f"{simulator.url}/object_info", timeout=30).json()
    real_info = shared_comfyui.get("/object_info")

    compared = Comparison()
    for case, answer in real.items():
        if case == WARM_UP:
            continue
        other = sim[case]
        assert answer.status_code == other.status_code, (case, answer.body, other.body)
        if case in ("no-reference", "one-reference"):
            # Progress follows the sampler's steps on both: one `progress` frame per step.
            for side in (answer, other):
                steps = [f for f in side.frames if isinstance(f, dict) and f["type"] == "progress"]
                assert len(steps) == config.steps, (case, len(steps))
        compared.sequences(
            case, [token(f) for f in answer.frames], [token(f) for f in other.frames]
        )
        if answer.status_code == 200:
            compared.trees(f"{case} history", shape(answer.history), shape(other.history))
            messages = [m[0] for m in (answer.history or {})["status"]["messages"]]
            sim_messages = [m[0] for m in (other.history or {})["status"]["messages"]]
            compared.trees(f"{case} history messages", messages, sim_messages)
        else:
            compared.trees(f"{case} body", shape(answer.body), shape(other.body))
            compared.trees(
                f"{case} body values", _error_values(answer.body), _error_values(other.body)
            )
    for class_type in sorted(classes_used(config, real_info)):
        assert class_type in real_info, f"the real server has no {class_type}"
        compared.trees(
            f"object_info {class_type}",
            without_file_lists(class_type, real_info[class_type]),
            without_file_lists(class_type, sim_info.get(class_type, {})),
        )

    listed = listed_differences()
    found = set(compared.differences)
    figure(
        f"conformance: {compared.frames} frames and {compared.fields} fields compared, "
        f"{len(found)} differences ({len(listed)} listed) in {time.monotonic() - began:.1f} s"
    )
    unlisted = sorted(found - listed.keys())
    gone = sorted(listed.keys() - found)
    assert not unlisted, "differences not in conformance_differences.json:\n" + "\n".join(unlisted)
    assert not gone, "listed differences that no longer occur:\n" + "\n".join(gone)


def _error_values(body: dict[str, Any]) -> dict[str, Any]:
    """A 400 body's values that do not depend on the files present (`details` and
    `input_config` list the server's files)."""
    return {
        "error": body["error"],
        "node_errors": {
            node: {
                "class_type": entry["class_type"],
                "dependent_outputs": sorted(entry["dependent_outputs"]),
                "errors": [
                    {
                        "type": error["type"],
                        "message": error["message"],
                        "input_name": error["extra_info"].get("input_name"),
                        "received_value": error["extra_info"].get("received_value"),
                    }
                    for error in entry["errors"]
                ],
            }
            for node, entry in body["node_errors"].items()
        },
    }

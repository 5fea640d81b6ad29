"""What the simulator reads out of an API-format graph: order, cache keys, frame inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from storyboard.comfyui.objectinfo import is_link

SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
LATENTS = {"EmptyLatentImage": 8, "EmptySD3LatentImage": 16, "EmptyFlux2LatentImage": 16}
LORAS = frozenset({"LoraLoader", "LoraLoaderModelOnly"})
CROPS = frozenset({"ImageCrop", "ImageCropV2"})

Graph = Mapping[str, Any]


def _links(node: Mapping[str, Any]) -> list[str]:
    inputs = node.get("inputs", {})
    return [value[0] for value in inputs.values() if is_link(value) and value[0]]


def execution_order(graph: Graph, outputs: list[str]) -> list[str]:
    """Nodes the outputs need, each after everything it reads from."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in order or node_id in visiting:
            return
        visiting.add(node_id)
        for source in _links(graph[node_id]):
            visit(source)
        order.append(node_id)

    for output_id in outputs:
        visit(output_id)
    return order


def comfy_order(
    graph: Graph, outputs: list[str], cached: set[str], is_output: Callable[[str], bool]
) -> list[str]:
    """The nodes ComfyUI runs, in its order (comfy_execution.graph.ExecutionList, re-derived).

    Each output joins the list; other nodes only when not cached. Nodes are found
    depth first with a stack (the last input first), then among the nodes whose
    sources are done ComfyUI picks an output, else one feeding an output, else one
    two links before an output, else the first found. This reproduces the captured
    orders 4 5 7 6 3 8 9 (nothing cached) and 7 6 3 8 9 (4 and 5 cached).
    """
    pending: list[str] = []  # in discovery order, like ComfyUI's pendingNodes dict
    blocking: dict[str, set[str]] = {}  # node -> the pending nodes that wait for it
    blockers: dict[str, set[str]] = {}  # node -> the pending nodes it waits for
    for output_id in outputs:
        stack = [output_id]
        while stack:
            node_id = stack.pop()
            if node_id in blockers:
                continue
            pending.append(node_id)
            blockers[node_id] = set()
            blocking.setdefault(node_id, set())
            for source in _links(graph[node_id]):
                if source not in cached:
                    stack.append(source)
                    blockers[node_id].add(source)
                    blocking.setdefault(source, set()).add(node_id)

    def leads_to_output(node_id: str, links: int) -> bool:
        nexts = blocking.get(node_id, set())
        return any(is_output(n) if links == 1 else leads_to_output(n, links - 1) for n in nexts)

    order: list[str] = []
    while pending:
        ready = [n for n in pending if not blockers[n]]
        if not ready:  # a cycle: ComfyUI rejects it at validation; never loop here
            break
        picked = next(
            (n for links in (0, 1, 2) for n in ready if (is_output(n) if links == 0
             else leads_to_output(n, links))),
            ready[0],
        )  # fmt: skip
        pending.remove(picked)
        order.append(picked)
        for waiting in blocking.get(picked, set()):
            blockers[waiting].discard(picked)
    return order


def signatures(graph: Graph, file_digest: Callable[[str], str]) -> dict[str, str]:
    """A cache key per node: its class, literal inputs and the keys of its sources.

    LoadImage also hashes the file's bytes, as ComfyUI re-runs it when the file changes.
    """
    keys: dict[str, str] = {}

    def key(node_id: str) -> str:
        if node_id not in keys:
            node = graph[node_id]
            parts: dict[str, Any] = {"class_type": node.get("class_type")}
            for name, value in sorted(node.get("inputs", {}).items()):
                parts[name] = ["link", key(value[0]), value[1]] if is_link(value) else value
            if node.get("class_type") == "LoadImage":
                parts["file"] = file_digest(str(node.get("inputs", {}).get("image", "")))
            text = json.dumps(parts, sort_keys=True, default=str)
            keys[node_id] = hashlib.sha256(text.encode()).hexdigest()
        return keys[node_id]

    for node_id in graph:
        key(node_id)
    return keys


@dataclass(frozen=True)
class FrameInputs:
    width: int
    height: int
    batch_size: int
    prompt: str
    seed: int
    loras: tuple[str, ...]
    references: tuple[str, ...]


def frame_inputs(graph: Graph, nodes: list[str]) -> FrameInputs:
    """The prompt, seed, size, LoRAs and reference images of the nodes that run."""
    width, height, batch, seed = 512, 512, 1, 0
    texts: list[str] = []
    loras: list[str] = []
    references: list[str] = []
    for node_id in nodes:
        node = graph[node_id]
        class_type, inputs = node.get("class_type"), node.get("inputs", {})
        if class_type in LATENTS:
            multiple = LATENTS[class_type]
            width = max(multiple, int(inputs.get("width", width)) // multiple * multiple)
            height = max(multiple, int(inputs.get("height", height)) // multiple * multiple)
            batch = max(1, int(inputs.get("batch_size", 1)))
        elif class_type in CROPS:
            # ImageCropV2 takes the box as one `crop_region` object, ImageCrop as four inputs.
            box = inputs.get("crop_region") if class_type == "ImageCropV2" else inputs
            box = box if isinstance(box, Mapping) else {}
            # As ComfyUI's: the box starts inside the image and ends at its edge at the latest.
            x = min(int(box.get("x", 0)), width - 1)
            y = min(int(box.get("y", 0)), height - 1)
            width = max(1, min(int(box.get("width", 512)), width - x))
            height = max(1, min(int(box.get("height", 512)), height - y))
        elif class_type == "CLIPTextEncode" and isinstance(inputs.get("text"), str):
            texts.append(inputs["text"])
        elif class_type in LORAS and isinstance(inputs.get("lora_name"), str):
            loras.append(inputs["lora_name"])
        elif class_type == "LoadImage" and isinstance(inputs.get("image"), str):
            references.append(inputs["image"])
        for name in ("seed", "noise_seed"):
            if isinstance(inputs.get(name), int):
                seed = inputs[name]
    prompt = _positive_text(graph, nodes) or max(texts, key=len, default="")
    return FrameInputs(width, height, batch, prompt, seed, tuple(loras), tuple(references))


_POSITIVE_PATH = ("positive", "guider", "conditioning")


def _positive_text(graph: Graph, nodes: list[str]) -> str | None:
    """The text of the CLIPTextEncode a sampler's positive conditioning comes from."""
    stack = [n for n in nodes if graph[n].get("class_type") in SAMPLERS]
    seen: set[str] = set()
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        inputs = graph[node_id].get("inputs", {})
        if graph[node_id].get("class_type") == "CLIPTextEncode" and isinstance(
            inputs.get("text"), str
        ):
            return str(inputs["text"])
        stack.extend(inputs[name][0] for name in _POSITIVE_PATH if is_link(inputs.get(name)))
    return None


def sampler_steps(graph: Graph, node_id: str) -> int:
    """How many steps a sampler node runs: its own `steps` (KSampler), else the `steps` of
    the scheduler its `sigmas` come from (SamplerCustomAdvanced fed by Flux2Scheduler or
    BasicScheduler: ComfyUI steps once per sigma interval); 1 when neither says."""
    inputs = graph[node_id].get("inputs", {})
    own = inputs.get("steps")
    if isinstance(own, int) and not isinstance(own, bool):
        return max(1, own)
    sigmas = inputs.get("sigmas")
    if is_link(sigmas) and sigmas[0] in graph:
        steps = graph[sigmas[0]].get("inputs", {}).get("steps")
        if isinstance(steps, int) and not isinstance(steps, bool):
            return max(1, steps)
    return 1

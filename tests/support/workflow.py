"""Shared helpers for the workflow tests: object_info with FLUX.2 models, graph shapes."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from storyboard.workflow import Graph
from storyboard.workflow.graph import as_link
from tests.support.paths import FIXTURES, REPO

FLUX = REPO / "workflows" / "image" / "flux-2.json"
SD = REPO / "workflows" / "image" / "sd-basic.json"
REFERENCE_NAMES = ["storyboard/ref-a.png", "storyboard/ref-b.png", "storyboard/ref-c.png"]


def object_info() -> dict[str, Any]:
    """The captured /object_info, with the model names a FLUX.2 server has.

    The capture came from a server without FLUX models, so those lists are empty there. Its
    crop nodes (ImageCrop, ImageCropV2) were captured from a real ComfyUI 0.25.0 later.
    """
    info: dict[str, Any] = json.loads((FIXTURES / "object_info.subset.json").read_text())
    required = {name: spec["input"]["required"] for name, spec in info.items()}
    required["UNETLoader"]["unet_name"][0] = ["flux2_dev_fp8mixed.safetensors"]
    required["CLIPLoader"]["clip_name"][0] = ["mistral_3_small_flux2_bf16.safetensors"]
    required["VAELoader"]["vae_name"][0] += ["flux2-vae.safetensors"]
    loras = ["storyboard_noir_v1.safetensors", "storyboard_watercolor_v1.safetensors"]
    required["LoraLoaderModelOnly"]["lora_name"][0] += loras
    required["LoraLoader"]["lora_name"][0] += loras
    required["LoadImage"]["image"][0] += REFERENCE_NAMES
    return info


def structure(graph: Graph) -> list[str]:
    """The graph's shape with node ids erased: each node described by what feeds it."""
    memo: dict[str, Any] = {}

    def describe(node_id: str) -> Any:
        if node_id not in memo:
            node = graph[node_id]
            inputs = []
            for name, value in sorted(node["inputs"].items()):
                link = as_link(value)
                shown = ("link", describe(link[0]), link[1]) if link else json.dumps(value)
                inputs.append((name, shown))
            memo[node_id] = (node["class_type"], tuple(inputs))
        return memo[node_id]

    return sorted(repr(describe(node_id)) for node_id in graph)


def renumber(graph: Graph, rng: random.Random) -> Graph:
    """The same graph under new, shuffled node ids (some of them not numeric)."""
    old = list(graph)
    new = [str(n) for n in rng.sample(range(1, 10_000), len(old))]
    new[0] = "x:" + new[0]  # ComfyUI ids are arbitrary strings (subgraphs use "a:b")
    rng.shuffle(new)
    mapping = dict(zip(old, new, strict=True))
    out: Graph = {}
    for node_id in rng.sample(old, len(old)):
        node = copy.deepcopy(graph[node_id])
        for name, value in node["inputs"].items():
            link = as_link(value)
            if link is not None:
                node["inputs"][name] = [mapping[link[0]], link[1]]
        out[mapping[node_id]] = node
    return out


def shuffled(value: Any, rng: random.Random) -> Any:
    """A deep copy with every dict's key order shuffled."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


def nodes_of(graph: Graph, class_type: str) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type]


def dangling_links(graph: Graph) -> list[tuple[str, str]]:
    return [
        (node_id, name)
        for node_id, node in graph.items()
        for name, value in node["inputs"].items()
        if (link := as_link(value)) is not None and link[0] not in graph
    ]

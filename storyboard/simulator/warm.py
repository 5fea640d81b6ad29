"""What a real GPU server keeps warm between prompts, and what the simulator charges when it cannot.

A ComfyUI on a GPU pays, before a prompt's first sampler step:
- a model load for the first prompt after start or restart, or when the prompt's
  model files differ from the loaded ones (`load_s`);
- a LoRA switch when the prompt's style LoRAs (name and strengths) differ from
  the previous prompt's, none -> some and some -> none included (`lora_switch_s`:
  the weights are patched or unpatched);
- a VAE encode for each reference image, by image name, that the previous prompt
  did not encode (`reference_s` each).

"Previous" is the last prompt that reached its sampler; a run that fails before it
leaves the warm state as it was. Only what differs from the last prompt counts, as
in ComfyUI's own cache, which keeps one prompt's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from storyboard.comfyui.objectinfo import is_link
from storyboard.simulator.graph import LORAS

# Loader node -> the input naming its model file.
MODEL_LOADERS = {
    "CheckpointLoaderSimple": "ckpt_name",
    "UNETLoader": "unet_name",
    "CLIPLoader": "clip_name",
    "VAELoader": "vae_name",
}
REFERENCE_SINK = "ReferenceLatent"


@dataclass(frozen=True)
class WarmState:
    """What one prompt leaves loaded: model files, patched LoRAs, encoded references."""

    models: frozenset[str]
    loras: frozenset[tuple[str, float, float]]
    references: frozenset[str]


@dataclass(frozen=True)
class Charges:
    """Seconds a prompt pays before sampling, by cause."""

    load_s: float = 0.0
    lora_s: float = 0.0
    reference_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.load_s + self.lora_s + self.reference_s


def _strength(inputs: Mapping[str, Any], name: str) -> float:
    value = inputs.get(name, 1.0)
    return float(value) if isinstance(value, int | float) else 1.0


def _feeds_reference(graph: Mapping[str, Any], start: str, nodes: list[str]) -> bool:
    """Whether `start`'s output reaches a ReferenceLatent among `nodes`."""
    readers: dict[str, list[str]] = {}
    for node_id in nodes:
        for value in graph[node_id].get("inputs", {}).values():
            if is_link(value):
                readers.setdefault(str(value[0]), []).append(node_id)
    stack, seen = [start], {start}
    while stack:
        for reader in readers.get(stack.pop(), []):
            if graph[reader].get("class_type") == REFERENCE_SINK:
                return True
            if reader not in seen:
                seen.add(reader)
                stack.append(reader)
    return False


def warm_state(graph: Mapping[str, Any], nodes: list[str]) -> WarmState:
    """The state `nodes` of `graph` (the ones that run) leave on the server."""
    models: set[str] = set()
    loras: set[tuple[str, float, float]] = set()
    references: set[str] = set()
    for node_id in nodes:
        class_type = graph[node_id].get("class_type")
        inputs = graph[node_id].get("inputs", {})
        if class_type in MODEL_LOADERS:
            models.add(f"{class_type}:{inputs.get(MODEL_LOADERS[class_type])}")
        elif class_type in LORAS and isinstance(inputs.get("lora_name"), str):
            clip = _strength(inputs, "strength_clip") if class_type == "LoraLoader" else 0.0
            loras.add((inputs["lora_name"], _strength(inputs, "strength_model"), clip))
        elif class_type == "LoadImage" and _feeds_reference(graph, node_id, nodes):
            references.add(str(inputs.get("image", "")))
    return WarmState(frozenset(models), frozenset(loras), frozenset(references))


def charges(
    previous: WarmState | None,
    current: WarmState,
    *,
    load_s: float,
    lora_switch_s: float,
    reference_s: float,
) -> Charges:
    """What `current` pays after `previous` (None: nothing loaded, a fresh server)."""
    if previous is None:
        previous = WarmState(frozenset(), frozenset(), frozenset())
        load = load_s
    else:
        load = load_s if current.models != previous.models else 0.0
    lora = lora_switch_s if current.loras != previous.loras else 0.0
    new_references = len(current.references - previous.references)
    return Charges(load, lora, reference_s * new_references)

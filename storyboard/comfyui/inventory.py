"""What a server has: model files, LoRAs and nodes, from its /object_info (a mixed farm).

A sentence goes only to a lane whose server can take its graph. `missing(graph, info)`
answers with the names ComfyUI would refuse there (a class it lacks, or a COMBO value
outside its choices, as `value_not_in_list`), using ComfyUI's own rules in `objectinfo`;
reference images are not counted, since they are uploaded to whichever lane renders.
`offers(info)` lists a server's files per loader kind, for an error naming what each
lane has. Pure functions over a snapshot; `LaneSession.object_info()` reads it once.
"""

from __future__ import annotations

from dataclasses import dataclass

from storyboard.comfyui.objectinfo import (
    Graph,
    ObjectInfo,
    choices,
    missing_node_type,
    validate_graph,
)

# The loader inputs that name files of ComfyUI's model folders, by what the files are.
MODEL_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "diffusion model": (("UNETLoader", "unet_name"),),
    "checkpoint": (("CheckpointLoaderSimple", "ckpt_name"),),
    "LoRA": (("LoraLoaderModelOnly", "lora_name"), ("LoraLoader", "lora_name")),
    "text encoder": (("CLIPLoader", "clip_name"),),
    "VAE": (("VAELoader", "vae_name"),),
}


@dataclass(frozen=True)
class Missing:
    """One thing a graph needs that a server does not have."""

    node_id: str
    class_type: str
    input_name: str | None  # None: the node class itself is missing
    value: str

    def __str__(self) -> str:
        if self.input_name is None:
            return f"node {self.class_type!r} (not installed)"
        return f"{self.input_name} {self.value!r} ({self.class_type})"


def has(info: ObjectInfo, class_type: str, input_name: str, name: str) -> bool:
    """Whether the server offers `name` for that input, e.g. a LoRA for LoraLoaderModelOnly."""
    return name in choices(info, class_type, input_name)


def missing(graph: Graph, info: ObjectInfo) -> list[Missing]:
    """What of the graph this server lacks; [] when it has every class and name it uses."""
    unknown = missing_node_type(graph, info)
    if unknown is not None:  # ComfyUI stops at the first; a lane lacking one is out anyway
        return [Missing(unknown.node_id, unknown.class_type, None, unknown.class_type)]
    return [
        Missing(p.node_id, p.class_type, p.input_name, str(p.received_value))
        for p in validate_graph(graph, info)
        if p.type == "value_not_in_list"
    ]


def offers(info: ObjectInfo) -> dict[str, list[str]]:
    """The server's files per kind of loader it has (kinds it lacks are left out)."""
    found: dict[str, list[str]] = {}
    for kind, inputs in MODEL_INPUTS.items():
        names = sorted({n for class_type, name in inputs for n in choices(info, class_type, name)})
        if any(class_type in info for class_type, _ in inputs):
            found[kind] = names
    return found

"""Putting render parameters into a copy of a workflow graph (pure functions).

Values are assigned as Python objects, never spliced into JSON text, so a prompt with
quotes, braces, `{{PROMPT}}`, newlines or emoji reaches ComfyUI exactly as given.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storyboard.errors import WorkflowFormatError
from storyboard.seeds import SEED_MAX as SEED_MAX
from storyboard.seeds import check_seed, random_seed
from storyboard.workflow.graph import Graph, as_link, consumers, fresh_ids, rewire
from storyboard.workflow.hashing import graph_hash
from storyboard.workflow.load import Workflow
from storyboard.workflow.per_job import render_size
from storyboard.workflow.slots import (
    CROP_CLASSES,
    CROP_REGION,
    CROP_V2_CLASS,
    LORA_BYPASS,
    ReferenceChain,
    Slots,
)


@dataclass(frozen=True)
class LoraChoice:
    name: str
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("LoRA name must not be empty")
        if not math.isfinite(self.strength):
            raise ValueError(f"LoRA strength must be a finite number, got {self.strength}")


@dataclass(frozen=True, kw_only=True)
class RenderParams:
    """What one picture needs. `width`/`height` are the wanted frame; the graph gets
    `render_size(width, height)` (multiples of 16)."""

    prompt: str
    width: int
    height: int
    negative_prompt: str | None = None
    seed: int | None = None
    lora: LoraChoice | None = None
    references: Sequence[str] = field(default_factory=tuple)
    # None: the workflow's own values stay.
    steps: int | None = None
    reference_megapixels: float | None = None
    # The crop node class the server has (`crop_class_for`); None: each crop node keeps its own.
    crop_class: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if self.seed is not None:
            check_seed(self.seed)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"size {self.width}x{self.height} must be positive")
        refs = tuple(self.references)
        if any(not isinstance(ref, str) or not ref for ref in refs):
            raise ValueError("reference image names must be non-empty strings")
        object.__setattr__(self, "references", refs)
        if self.crop_class is not None and self.crop_class not in CROP_CLASSES:
            raise ValueError(f"crop class must be one of {CROP_CLASSES}, got {self.crop_class!r}")
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        megapixels = self.reference_megapixels
        if megapixels is not None and not (math.isfinite(megapixels) and megapixels > 0):
            raise ValueError(f"reference megapixels must be a positive number, got {megapixels!r}")


@dataclass(frozen=True)
class Injected:
    graph: Graph
    seed: int
    graph_hash: str
    workflow_name: str
    width: int
    height: int
    output_nodes: tuple[str, ...]
    # The size of the images the graph returns: the frame when it crops on the server, else
    # the render size (`width` x `height`); None: the latter.
    output_size: tuple[int, int] | None = None


def inject(workflow: Workflow, params: RenderParams) -> Injected:
    """A new graph with `params` applied; `workflow` is left untouched."""
    graph = copy.deepcopy(workflow.graph)
    slots = workflow.slots
    seed = params.seed if params.seed is not None else random_seed()
    width, height = render_size(params.width, params.height)

    for node_id, name in slots.prompt:
        graph[node_id]["inputs"][name] = params.prompt
    # No negative slot (FLUX.2): nothing to do. No negative given: the workflow's own stays.
    if params.negative_prompt is not None:
        for node_id, name in slots.negative:
            graph[node_id]["inputs"][name] = params.negative_prompt
    for node_id, name in slots.seed:
        graph[node_id]["inputs"][name] = seed
    for node_id in slots.size:
        graph[node_id]["inputs"]["width"] = width
        graph[node_id]["inputs"]["height"] = height

    if params.steps is not None:
        for node_id, name in slots.steps:
            graph[node_id]["inputs"][name] = params.steps
    # Set on the template chain before it is cloned, so every reference gets the same scale.
    if params.reference_megapixels is not None and slots.reference is not None:
        for node_id, name in slots.reference.megapixels:
            graph[node_id]["inputs"][name] = params.reference_megapixels

    # Centred, as finishing would crop: the render covers the frame by at most 15 px.
    box = {
        "x": (width - params.width) // 2,
        "y": (height - params.height) // 2,
        "width": params.width,
        "height": params.height,
    }
    for node_id in slots.crop:
        _set_crop(graph[node_id], box, params.crop_class)

    _apply_lora(graph, slots, params.lora, workflow.name)
    _apply_references(graph, slots, tuple(params.references), workflow.name)
    return Injected(
        graph=graph,
        seed=seed,
        graph_hash=graph_hash(graph),
        workflow_name=workflow.name,
        width=width,
        height=height,
        output_nodes=slots.output,
        output_size=(params.width, params.height) if slots.crop else (width, height),
    )


def crop_class_for(object_info: Mapping[str, object]) -> str | None:
    """The crop node class to use on a server: ImageCropV2 where it has it (ImageCrop is
    deprecated there), else ImageCrop; None when it has neither (validation names that)."""
    return next((name for name in CROP_CLASSES if name in object_info), None)


def _set_crop(node: dict[str, Any], box: dict[str, int], crop_class: str | None) -> None:
    own = node["class_type"]
    if own not in CROP_CLASSES:  # a node marked 'storyboard:crop' of another class
        node["inputs"].update(box)
        return
    target = crop_class or own
    image = node["inputs"].get("image")
    node["class_type"] = target
    node["inputs"] = (
        {"image": image, CROP_REGION: dict(box)}
        if target == CROP_V2_CLASS
        else {"image": image, **box}
    )


def _apply_lora(graph: Graph, slots: Slots, lora: LoraChoice | None, name: str) -> None:
    node_id = slots.lora
    if lora is None:
        if node_id is not None:
            _bypass_lora(graph, node_id)
        return
    if node_id is None:
        reason = slots.lora_problem or (
            "it has no LoraLoader / LoraLoaderModelOnly node (or one marked 'storyboard:lora')"
        )
        raise WorkflowFormatError(
            f"LoRA {lora.name!r} cannot be applied with workflow {name!r}: {reason}"
        )
    inputs = graph[node_id]["inputs"]
    inputs["lora_name"] = lora.name
    inputs["strength_model"] = lora.strength
    if "strength_clip" in inputs:
        inputs["strength_clip"] = lora.strength


def _bypass_lora(graph: Graph, node_id: str) -> None:
    """Remove the LoRA node, feeding its consumers what it was fed (no file is loaded)."""
    bypass = LORA_BYPASS[graph[node_id]["class_type"]]
    inputs = graph[node_id]["inputs"]
    rewire(graph, node_id, {out: inputs[name] for out, name in bypass.items()}, skip={node_id})
    del graph[node_id]


def _apply_references(graph: Graph, slots: Slots, references: tuple[str, ...], name: str) -> None:
    chain = slots.reference
    if chain is None:
        if references:
            reason = slots.reference_problem or (
                "it has no reference chain (a ReferenceLatent fed by a LoadImage, "
                "or nodes marked 'storyboard:reference')"
            )
            raise WorkflowFormatError(
                f"{len(references)} reference image(s) cannot be used with workflow {name!r}: "
                f"{reason}; use a workflow with a reference chain (e.g. flux-2.json) or remove "
                "the character's reference images"
            )
        return
    before = graph[chain.end]["inputs"]["conditioning"]
    if not references:
        rewire(graph, chain.end, {0: before}, skip=set(chain.nodes))
        for node_id in chain.nodes:
            del graph[node_id]
        return

    downstream = [(c, n) for c, n, _ in consumers(graph, chain.end) if c not in chain.nodes]
    image_node, image_input = chain.image
    template = {node_id: copy.deepcopy(graph[node_id]) for node_id in chain.nodes}
    graph[image_node]["inputs"][image_input] = references[0]
    last_end = chain.end
    for number, reference in enumerate(references[1:], start=2):
        last_end = _clone_chain(graph, chain, template, number, reference, last_end)
    for consumer, input_name in downstream:
        graph[consumer]["inputs"][input_name] = [last_end, 0]


def _clone_chain(
    graph: Graph,
    chain: ReferenceChain,
    template: Graph,
    number: int,
    reference: str,
    previous_end: str,
) -> str:
    """Add one copy of the chain with fresh ids after `previous_end`; return the new end."""
    old_ids = sorted(
        chain.nodes, key=lambda i: (not i.isdecimal(), int(i) if i.isdecimal() else 0, i)
    )
    id_map = dict(zip(old_ids, fresh_ids(graph, len(old_ids)), strict=True))
    for old, new in id_map.items():
        node = copy.deepcopy(template[old])
        for input_name, value in node["inputs"].items():
            link = as_link(value)
            if link is not None and link[0] in id_map:
                node["inputs"][input_name] = [id_map[link[0]], link[1]]
        meta = node.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            meta["title"] = f"{meta['title']} #{number}"
        graph[new] = node
    new_end = id_map[chain.end]
    graph[new_end]["inputs"]["conditioning"] = [previous_end, 0]
    image_node, image_input = chain.image
    graph[id_map[image_node]]["inputs"][image_input] = reference
    return new_end

"""Where each render parameter goes in a graph: markers first, class types second.

A node's `_meta.title` may carry one or more markers `storyboard:<slot>` (anywhere in the
title, e.g. "Prompt [storyboard:prompt]"). For each slot, marked nodes win; when no node
carries that slot's marker, well-known class types are used instead. Node ids are never
used, so a graph whose nodes were renumbered maps the same way. See workflows/README.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from storyboard.errors import WorkflowFormatError
from storyboard.workflow.graph import Graph, ancestors, as_link, consumers

MARKER = re.compile(r"storyboard:([A-Za-z_-]+)")
SLOT_NAMES = (
    "prompt",
    "negative",
    "seed",
    "size",
    "lora",
    "reference",
    "reference-image",
    "crop",
    "output",
)
TEXT_INPUTS = ("text", "prompt", "text_g", "text_l", "clip_l", "t5xxl")
SEED_INPUTS = ("seed", "noise_seed")
SIZE_CLASSES = frozenset({"Flux2Scheduler", "ModelSamplingFlux"})
SIZE_CLASS_PATTERN = re.compile(r"Empty\w*Latent\w*")
# Output index -> the input that carries the same thing past the LoRA when it is bypassed.
LORA_BYPASS: dict[str, dict[int, str]] = {
    "LoraLoader": {0: "model", 1: "clip"},
    "LoraLoaderModelOnly": {0: "model"},
}
# Sampling steps: a scheduler's or sampler's literal integer `steps` input (Flux2Scheduler,
# BasicScheduler, KSampler, KSamplerAdvanced, ...).
STEPS_CLASS_PATTERN = re.compile(r"\w*(Scheduler|Sampler)\w*")
STEPS_INPUT = "steps"
REFERENCE_CLASS = "ReferenceLatent"
# The node of a reference chain that scales the image before it is encoded.
REFERENCE_SCALE_CLASS = "ImageScaleToTotalPixels"
REFERENCE_SCALE_INPUT = "megapixels"
REFERENCE_IMAGE_CLASS = "LoadImage"
OUTPUT_CLASS = "SaveImage"
# ComfyUI's crop nodes: the output arrives at exactly the frame, only its text chunks to add.
# ImageCropV2 ("Crop Image") takes the box as one `crop_region` object; ImageCrop, deprecated
# since ComfyUI 0.25 but still run, as four integer inputs. Injection writes whichever the
# server has (see inject.crop_class_for).
CROP_CLASS = "ImageCrop"
CROP_V2_CLASS = "ImageCropV2"
CROP_CLASSES = (CROP_V2_CLASS, CROP_CLASS)
CROP_INPUTS = ("width", "height", "x", "y")
CROP_REGION = "crop_region"

InputRef = tuple[str, str]  # (node id, input name)


@dataclass(frozen=True)
class ReferenceChain:
    """The template chain for one reference image, ending in a ReferenceLatent."""

    end: str  # the ReferenceLatent node; its `conditioning` comes from before the chain
    image: InputRef  # where the uploaded image name goes (LoadImage.image)
    nodes: frozenset[str]  # nodes used only by this chain, `end` included
    # Where the reference's scale goes (ImageScaleToTotalPixels.megapixels), if it has one.
    megapixels: tuple[InputRef, ...] = ()


@dataclass(frozen=True)
class Slots:
    prompt: tuple[InputRef, ...]
    negative: tuple[InputRef, ...]
    seed: tuple[InputRef, ...]
    size: tuple[str, ...]
    lora: str | None
    reference: ReferenceChain | None
    output: tuple[str, ...]
    # Nodes that crop the render to the frame (width, height, x, y set per picture).
    crop: tuple[str, ...] = ()
    # Sampling step inputs, set only when a step count is configured.
    steps: tuple[InputRef, ...] = ()
    # Why a slot the graph seems to have could not be used (several unmarked candidates).
    lora_problem: str | None = None
    reference_problem: str | None = None


def markers_of(node: dict[str, object]) -> set[str]:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return {m.lower() for m in MARKER.findall(title)} if isinstance(title, str) else set()


def find_slots(graph: Graph) -> Slots:
    """Map every slot to its nodes; raise WorkflowFormatError naming what is missing."""
    marked: dict[str, list[str]] = {name: [] for name in SLOT_NAMES}
    for node_id, node in graph.items():
        for marker in markers_of(node):
            if marker not in marked:
                close = difflib.get_close_matches(marker, SLOT_NAMES, n=1)
                hint = f" (did you mean 'storyboard:{close[0]}'?)" if close else ""
                raise WorkflowFormatError(
                    f"node {node_id} has an unknown marker 'storyboard:{marker}'{hint}; "
                    f"known markers: {', '.join('storyboard:' + s for s in SLOT_NAMES)}"
                )
            marked[marker].append(node_id)

    prompt_nodes, negative_nodes = _text_nodes(graph, marked)
    prompt = _inputs(graph, prompt_nodes, TEXT_INPUTS, "prompt", want=str)
    negative = _inputs(graph, negative_nodes, TEXT_INPUTS, "negative", want=str)
    seed = _inputs(graph, marked["seed"] or _seed_nodes(graph), SEED_INPUTS, "seed", want=int)
    size = _size_nodes(graph, marked["size"])
    output = tuple(marked["output"]) or tuple(
        node_id for node_id, node in graph.items() if node["class_type"] == OUTPUT_CLASS
    )
    crop = _crop_nodes(graph, marked["crop"])
    lora, lora_problem = _lora(graph, marked["lora"])
    reference, reference_problem = _reference(graph, marked["reference"], marked["reference-image"])

    missing = [
        f"{what} (mark a node 'storyboard:{slot}' or use {example})"
        for what, slot, found, example in (
            ("prompt input", "prompt", prompt, "a CLIPTextEncode node"),
            ("seed input", "seed", seed, "KSampler or RandomNoise"),
            ("image size input", "size", size, "an Empty...LatentImage node"),
            ("output image", "output", output, "a SaveImage node"),
        )
        if not found
    ]
    if missing:
        raise WorkflowFormatError("the workflow is missing: " + "; ".join(missing))
    return Slots(
        prompt=prompt,
        negative=negative,
        seed=seed,
        size=size,
        lora=lora,
        reference=reference,
        output=output,
        crop=crop,
        steps=_steps_inputs(graph),
        lora_problem=lora_problem,
        reference_problem=reference_problem,
    )


def _text_nodes(graph: Graph, marked: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Prompt and negative nodes: marked ones, else text encoders classified by their wiring."""
    encoders = [i for i, n in graph.items() if str(n["class_type"]).startswith("CLIPTextEncode")]
    negatives = [i for i in encoders if _feeds_negative(graph, i)]
    prompt = marked["prompt"] or [i for i in encoders if i not in negatives]
    negative = marked["negative"] or [i for i in negatives if i not in prompt]
    return prompt, negative


def _feeds_negative(graph: Graph, start: str) -> bool:
    """True when the conditioning from `start` reaches a sampler's `negative` input."""
    seen = {start}
    stack = [start]
    while stack:
        for consumer, name, _ in consumers(graph, stack.pop()):
            if name == "negative":
                return True
            if name == "conditioning" and consumer not in seen:
                seen.add(consumer)
                stack.append(consumer)
    return False


def _seed_nodes(graph: Graph) -> list[str]:
    return [
        node_id
        for node_id, node in graph.items()
        if any(_is_int(node["inputs"].get(name)) for name in SEED_INPUTS)
    ]


def _size_nodes(graph: Graph, marked: list[str]) -> tuple[str, ...]:
    # Unlike other slots, markers add to the known classes instead of replacing them: a
    # latent and a scheduler that disagree on the size are never what anyone wants.
    candidates = marked + [
        node_id
        for node_id, node in graph.items()
        if node_id not in marked
        and (
            node["class_type"] in SIZE_CLASSES
            or SIZE_CLASS_PATTERN.fullmatch(str(node["class_type"]))
        )
    ]
    for node_id in marked:
        inputs = graph[node_id]["inputs"]
        if not (_is_int(inputs.get("width")) and _is_int(inputs.get("height"))):
            raise WorkflowFormatError(
                f"node {node_id} ({graph[node_id]['class_type']}) is marked 'storyboard:size' "
                "but has no integer 'width' and 'height' inputs"
            )
    return tuple(
        node_id
        for node_id in candidates
        if _is_int(graph[node_id]["inputs"].get("width"))
        and _is_int(graph[node_id]["inputs"].get("height"))
    )


def _steps_inputs(graph: Graph) -> tuple[InputRef, ...]:
    return tuple(
        (node_id, STEPS_INPUT)
        for node_id, node in graph.items()
        if STEPS_CLASS_PATTERN.fullmatch(str(node["class_type"]))
        and _is_int(node["inputs"].get(STEPS_INPUT))
    )


def _crop_nodes(graph: Graph, marked: list[str]) -> tuple[str, ...]:
    nodes = marked or [i for i, node in graph.items() if node["class_type"] in CROP_CLASSES]
    for node_id in nodes:
        inputs = graph[node_id]["inputs"]
        region = inputs.get(CROP_REGION)
        box = region if graph[node_id]["class_type"] == CROP_V2_CLASS else inputs
        if not (isinstance(box, dict) and all(_is_int(box.get(name)) for name in CROP_INPUTS)):
            raise WorkflowFormatError(
                f"node {node_id} ({graph[node_id]['class_type']}) is used as the crop slot but "
                f"has no integer {', '.join(repr(n) for n in CROP_INPUTS)} inputs (or "
                f"'{CROP_REGION}' object); use ComfyUI's {CROP_V2_CLASS} or {CROP_CLASS} node"
            )
    return tuple(nodes)


def _inputs(
    graph: Graph, nodes: list[str], names: tuple[str, ...], slot: str, *, want: type
) -> tuple[InputRef, ...]:
    found: list[InputRef] = []
    for node_id in nodes:
        inputs = graph[node_id]["inputs"]
        here = [
            (node_id, name)
            for name in names
            if name in inputs
            and (_is_int(inputs[name]) if want is int else isinstance(inputs[name], str))
        ]
        if not here:
            raise WorkflowFormatError(
                f"node {node_id} ({graph[node_id]['class_type']}) is used as the {slot} slot but "
                f"has no literal {want.__name__} input named {' or '.join(names)}"
            )
        found.extend(here)
    return tuple(found)


def _lora(graph: Graph, marked: list[str]) -> tuple[str | None, str | None]:
    candidates = marked or [i for i, n in graph.items() if n["class_type"] in LORA_BYPASS]
    if len(candidates) > 1:
        return None, (
            f"the workflow has {len(candidates)} LoRA nodes ({', '.join(candidates)}); "
            "mark the style LoRA node 'storyboard:lora'"
        )
    if not candidates:
        return None, None
    node_id = candidates[0]
    class_type = graph[node_id]["class_type"]
    if class_type not in LORA_BYPASS:
        raise WorkflowFormatError(
            f"node {node_id} ({class_type}) is marked 'storyboard:lora' but only "
            f"{' and '.join(LORA_BYPASS)} nodes can be set or bypassed"
        )
    for name in LORA_BYPASS[class_type].values():
        if as_link(graph[node_id]["inputs"].get(name)) is None:
            raise WorkflowFormatError(f"LoRA node {node_id} has no '{name}' link to bypass to")
    return node_id, None


def _reference(
    graph: Graph, marked: list[str], marked_images: list[str]
) -> tuple[ReferenceChain | None, str | None]:
    candidates = marked or [
        i
        for i, n in graph.items()
        if n["class_type"] == REFERENCE_CLASS and as_link(n["inputs"].get("latent"))
    ]
    if len(candidates) > 1:
        return None, (
            f"the workflow has {len(candidates)} reference nodes ({', '.join(candidates)}); "
            "mark the one template node 'storyboard:reference'"
        )
    if not candidates:
        return None, None
    end = candidates[0]
    inputs = graph[end]["inputs"]
    latent = as_link(inputs.get("latent"))
    if as_link(inputs.get("conditioning")) is None or latent is None:
        raise WorkflowFormatError(
            f"reference node {end} needs a 'conditioning' link and a 'latent' link"
        )
    chain = _exclusive_upstream(graph, end, latent[0])
    images = [i for i in marked_images if i in chain] or [
        i for i in chain if graph[i]["class_type"] == REFERENCE_IMAGE_CLASS
    ]
    if len(images) != 1 or not isinstance(graph[images[0]]["inputs"].get("image"), str):
        raise WorkflowFormatError(
            f"the reference chain ending at node {end} needs exactly one {REFERENCE_IMAGE_CLASS} "
            f"node (or one marked 'storyboard:reference-image') with an 'image' input; "
            f"found {len(images)}"
        )
    megapixels = tuple(
        (node_id, REFERENCE_SCALE_INPUT)
        for node_id in sorted(chain)
        if graph[node_id]["class_type"] == REFERENCE_SCALE_CLASS
        and _is_number(graph[node_id]["inputs"].get(REFERENCE_SCALE_INPUT))
    )
    chain_found = ReferenceChain(
        end=end, image=(images[0], "image"), nodes=frozenset(chain), megapixels=megapixels
    )
    return chain_found, None


def _exclusive_upstream(graph: Graph, end: str, source: str) -> set[str]:
    """`end` plus the nodes above its latent that nothing outside the chain uses."""
    chain = {end, source} | ancestors(graph, source)
    changed = True
    while changed:
        changed = False
        for node_id in sorted(chain - {end}):
            if any(consumer not in chain for consumer, _, _ in consumers(graph, node_id)):
                chain.discard(node_id)
                changed = True
    return chain


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""Injection into both shipped workflows: every combination, renumbered ids, hostile prompts."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storyboard.errors import WorkflowFormatError
from storyboard.workflow import (
    SEED_MAX,
    Injected,
    LoraChoice,
    RenderParams,
    Workflow,
    crop_class_for,
    find_slots,
    graph_hash,
    inject,
    load_workflow,
    parse_workflow,
    render_size,
    validate_graph_against,
)
from storyboard.workflow.graph import as_link
from tests.support.workflow import (
    FLUX,
    REFERENCE_NAMES,
    SD,
    dangling_links,
    nodes_of,
    object_info,
    renumber,
    structure,
)

OBJECT_INFO = object_info()
SIZES = [(1920, 1080), (1000, 563), (17, 33)]
FLUX_LORA = LoraChoice("storyboard_watercolor_v1.safetensors", 0.65)


@pytest.fixture(scope="module")
def flux() -> Workflow:
    return load_workflow(FLUX)


@pytest.fixture(scope="module")
def sd() -> Workflow:
    return load_workflow(SD)


def params(**overrides: object) -> RenderParams:
    values: dict[str, object] = {"prompt": "a lighthouse at dusk", "width": 1920, "height": 1080}
    values.update(overrides)
    return RenderParams(**values)  # type: ignore[arg-type]


def follow(graph: dict, value: object) -> str:
    link = as_link(value)
    assert link is not None, f"{value!r} is not a link"
    return link[0]


def reference_chain(graph: dict) -> list[str]:
    """ReferenceLatent ids from the guider back towards FluxGuidance."""
    (guider,) = nodes_of(graph, "BasicGuider")
    chain = []
    node = follow(graph, graph[guider]["inputs"]["conditioning"])
    while graph[node]["class_type"] == "ReferenceLatent":
        chain.append(node)
        node = follow(graph, graph[node]["inputs"]["conditioning"])
    assert graph[node]["class_type"] == "FluxGuidance"
    return chain


@pytest.mark.parametrize(
    ("refs", "lora", "seed", "size"),
    list(itertools.product([0, 1, 3], [True, False], [12345, None], SIZES)),
)
def test_flux_every_combination(
    flux: Workflow, refs: int, lora: bool, seed: int | None, size: tuple[int, int]
) -> None:
    pristine = copy.deepcopy(flux.graph)
    references = REFERENCE_NAMES[:refs]
    result = inject(
        flux,
        params(
            seed=seed,
            width=size[0],
            height=size[1],
            lora=FLUX_LORA if lora else None,
            references=references,
        ),
    )
    graph = result.graph

    assert flux.graph == pristine
    validate_graph_against(graph, OBJECT_INFO)
    assert dangling_links(graph) == []
    assert result.graph_hash == graph_hash(graph)
    assert result.workflow_name == "flux-2"
    assert result.output_nodes == tuple(nodes_of(graph, "SaveImage"))
    (encoder,) = nodes_of(graph, "CLIPTextEncode")
    assert graph[encoder]["inputs"]["text"] == "a lighthouse at dusk"

    (noise,) = nodes_of(graph, "RandomNoise")
    assert graph[noise]["inputs"]["noise_seed"] == result.seed
    assert result.seed == seed if seed is not None else 0 <= result.seed <= SEED_MAX

    expected = render_size(*size)
    assert (result.width, result.height) == expected
    for class_type in ("Flux2Scheduler", "EmptyFlux2LatentImage"):
        (node,) = nodes_of(graph, class_type)
        assert (graph[node]["inputs"]["width"], graph[node]["inputs"]["height"]) == expected

    (guider,) = nodes_of(graph, "BasicGuider")
    model_source = graph[follow(graph, graph[guider]["inputs"]["model"])]
    if lora:
        assert model_source["class_type"] == "LoraLoaderModelOnly"
        assert model_source["inputs"]["lora_name"] == FLUX_LORA.name
        assert model_source["inputs"]["strength_model"] == FLUX_LORA.strength
    else:
        assert model_source["class_type"] == "UNETLoader"
        assert nodes_of(graph, "LoraLoaderModelOnly") == []

    chain = reference_chain(graph)
    assert len(chain) == refs
    assert len(nodes_of(graph, "ReferenceLatent")) == refs
    # Guider <- last reference ... first reference <- guidance: images in the order given.
    images = []
    for node in reversed(chain):
        encoded = follow(graph, graph[node]["inputs"]["latent"])
        assert graph[encoded]["class_type"] == "VAEEncode"
        assert graph[follow(graph, graph[encoded]["inputs"]["vae"])]["class_type"] == "VAELoader"
        scaled = follow(graph, graph[encoded]["inputs"]["pixels"])
        assert graph[scaled]["class_type"] == "ImageScaleToTotalPixels"
        loaded = follow(graph, graph[scaled]["inputs"]["image"])
        images.append(graph[loaded]["inputs"]["image"])
    assert images == references
    for class_type in ("LoadImage", "ImageScaleToTotalPixels", "VAEEncode"):
        assert len(nodes_of(graph, class_type)) == refs


@pytest.mark.parametrize(
    ("lora", "seed", "size", "negative"),
    list(itertools.product([True, False], [7, None], SIZES, ["ugly, text", None])),
)
def test_sd_every_combination(
    sd: Workflow, lora: bool, seed: int | None, size: tuple[int, int], negative: str | None
) -> None:
    choice = LoraChoice("tiny_sd15_lora.safetensors", 0.8) if lora else None
    result = inject(
        sd,
        params(seed=seed, width=size[0], height=size[1], lora=choice, negative_prompt=negative),
    )
    graph = result.graph
    validate_graph_against(graph, OBJECT_INFO)
    assert dangling_links(graph) == []

    (sampler,) = nodes_of(graph, "KSampler")
    inputs = graph[sampler]["inputs"]
    assert inputs["seed"] == result.seed
    if seed is not None:
        assert result.seed == seed
    assert graph[follow(graph, inputs["positive"])]["inputs"]["text"] == "a lighthouse at dusk"
    shipped_negative = "blurry, low quality, watermark, text"
    wanted_negative = negative if negative is not None else shipped_negative
    assert graph[follow(graph, inputs["negative"])]["inputs"]["text"] == wanted_negative
    (latent,) = nodes_of(graph, "EmptyLatentImage")
    expected = render_size(*size)
    assert (graph[latent]["inputs"]["width"], graph[latent]["inputs"]["height"]) == expected

    (checkpoint,) = nodes_of(graph, "CheckpointLoaderSimple")
    encoders = nodes_of(graph, "CLIPTextEncode")
    if lora:
        (lora_node,) = nodes_of(graph, "LoraLoader")
        assert follow(graph, inputs["model"]) == lora_node
        assert graph[lora_node]["inputs"]["strength_model"] == 0.8
        assert graph[lora_node]["inputs"]["strength_clip"] == 0.8
        assert {follow(graph, graph[e]["inputs"]["clip"]) for e in encoders} == {lora_node}
    else:
        # Bypassed: model and clip come straight from the checkpoint, outputs 0 and 1.
        assert nodes_of(graph, "LoraLoader") == []
        assert inputs["model"] == [checkpoint, 0]
        assert all(graph[e]["inputs"]["clip"] == [checkpoint, 1] for e in encoders)


def test_references_with_a_graph_without_a_reference_chain_are_refused(sd: Workflow) -> None:
    with pytest.raises(WorkflowFormatError, match=r"reference image\(s\).*sd-basic"):
        inject(sd, params(references=["storyboard/ref-a.png"]))


def test_a_lora_with_a_graph_without_a_lora_node_is_refused(flux: Workflow) -> None:
    graph = copy.deepcopy(flux.graph)
    (lora_id,) = nodes_of(graph, "LoraLoaderModelOnly")
    graph["11"]["inputs"]["model"] = ["1", 0]
    del graph[lora_id]
    workflow = parse_workflow(graph, name="no-lora")
    assert inject(workflow, params()).graph  # no LoRA wanted: fine
    with pytest.raises(WorkflowFormatError, match=r"LoRA 'storyboard_noir_v1\.safetensors'"):
        inject(workflow, params(lora=LoraChoice("storyboard_noir_v1.safetensors")))


@pytest.mark.parametrize("refs", [0, 1, 3])
@pytest.mark.parametrize("lora", [True, False])
@pytest.mark.parametrize("rng_seed", [1, 2, 3])
def test_renumbered_ids_inject_the_same_graph(
    flux: Workflow, refs: int, lora: bool, rng_seed: int
) -> None:
    renumbered = parse_workflow(renumber(flux.graph, random.Random(rng_seed)), name="flux-2")
    wanted = params(seed=99, lora=FLUX_LORA if lora else None, references=REFERENCE_NAMES[:refs])
    original = inject(flux, wanted)
    moved = inject(renumbered, wanted)
    assert structure(moved.graph) == structure(original.graph)
    assert structure(moved.graph) != structure(inject(flux, params(seed=100)).graph)
    validate_graph_against(moved.graph, OBJECT_INFO)


@pytest.mark.parametrize("rng_seed", [4, 5])
def test_renumbered_sd_graph_injects_the_same_graph(sd: Workflow, rng_seed: int) -> None:
    renumbered = parse_workflow(renumber(sd.graph, random.Random(rng_seed)), name="sd-basic")
    wanted = params(seed=5, negative_prompt="grainy")
    assert structure(inject(renumbered, wanted).graph) == structure(inject(sd, wanted).graph)


def test_cloned_reference_nodes_get_fresh_numeric_ids(flux: Workflow) -> None:
    graph = inject(flux, params(references=REFERENCE_NAMES)).graph
    assert len(graph) == len(flux.graph) - 1 + 2 * 4  # LoRA bypassed, two chains of 4 added
    assert all(node_id.isdecimal() for node_id in graph)


HOSTILE = [
    "say \"hi\" and 'bye'",
    "{{PROMPT}} {prompt} %s ${HOME} {0}",
    'line one\nline two\r\n\ttabbed "}]}',
    "emoji 🎬🌅👩‍🚀 and RTL שלום and ZWJ \u200d",
    "NUL \x00 inside",
    "\\u0022 escaped-looking text \\n",
    "",
    "x" * 100_000,
    "长" * 40_000,
]


def roundtrip(result: Injected) -> dict:
    """What ComfyUI receives: the graph serialised as the client sends it, parsed back."""
    return json.loads(json.dumps({"prompt": result.graph}))["prompt"]


@pytest.mark.parametrize("prompt", HOSTILE)
def test_hostile_prompts_arrive_unchanged(flux: Workflow, sd: Workflow, prompt: str) -> None:
    for workflow in (flux, sd):
        result = inject(workflow, params(prompt=prompt, negative_prompt=prompt, seed=1))
        sent = roundtrip(result)
        texts = [sent[node_id]["inputs"]["text"] for node_id in nodes_of(sent, "CLIPTextEncode")]
        assert texts and all(text == prompt for text in texts)
        assert sent == result.graph


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(max_size=3000), negative=st.none() | st.text(max_size=300))
def test_any_text_arrives_unchanged(prompt: str, negative: str | None) -> None:
    sd = load_workflow(SD)
    result = inject(sd, params(prompt=prompt, negative_prompt=negative, seed=3))
    sent = roundtrip(result)
    (sampler,) = nodes_of(sent, "KSampler")
    positive = follow(sent, sent[sampler]["inputs"]["positive"])
    negative_node = follow(sent, sent[sampler]["inputs"]["negative"])
    assert sent[positive]["inputs"]["text"] == prompt
    if negative is not None:
        assert sent[negative_node]["inputs"]["text"] == negative
    assert graph_hash(sent) == result.graph_hash


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=SEED_MAX))
def test_any_seed_in_comfyui_range_is_kept(seed: int) -> None:
    result = inject(load_workflow(FLUX), params(seed=seed))
    (noise,) = nodes_of(result.graph, "RandomNoise")
    assert result.seed == seed == result.graph[noise]["inputs"]["noise_seed"]


def test_random_seeds_differ_between_calls(flux: Workflow) -> None:
    seeds = {inject(flux, params()).seed for _ in range(8)}
    assert len(seeds) > 1
    assert all(0 <= seed <= SEED_MAX for seed in seeds)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": -1}, "outside 0..9223372036854775807"),
        ({"seed": 2**63}, "outside 0..9223372036854775807"),
        ({"width": 0}, "must be positive"),
        ({"references": ["ok.png", ""]}, "non-empty strings"),
        ({"prompt": None}, "prompt must be a string"),
    ],
)
def test_invalid_render_params_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params(**overrides)


def test_invalid_lora_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        LoraChoice("a.safetensors", float("nan"))
    with pytest.raises(ValueError, match="empty"):
        LoraChoice("", 1.0)


def test_model_sampling_flux_gets_the_size_too(flux: Workflow) -> None:
    graph = copy.deepcopy(flux.graph)
    graph["40"] = {
        "class_type": "ModelSamplingFlux",
        "inputs": {
            "model": ["4", 0],
            "max_shift": 1.15,
            "base_shift": 0.5,
            "width": 1024,
            "height": 1024,
        },
    }
    graph["11"]["inputs"]["model"] = ["40", 0]
    result = inject(parse_workflow(graph, name="flux-shift"), params(width=1344, height=756))
    assert (result.graph["40"]["inputs"]["width"], result.graph["40"]["inputs"]["height"]) == (
        1344,
        768,
    )
    # The bypassed LoRA's consumer is now ModelSamplingFlux, fed by the UNet directly.
    assert result.graph["40"]["inputs"]["model"] == ["1", 0]
    validate_graph_against(result.graph, OBJECT_INFO)


@pytest.mark.parametrize("size", SIZES)
def test_flux_crops_to_the_frame_on_the_server(flux: Workflow, size: tuple[int, int]) -> None:
    result = inject(flux, params(width=size[0], height=size[1]))
    (crop,) = nodes_of(result.graph, "ImageCrop")
    render_w, render_h = render_size(*size)
    assert result.graph[crop]["inputs"] == {
        "image": result.graph[crop]["inputs"]["image"],
        "width": size[0],
        "height": size[1],
        "x": (render_w - size[0]) // 2,
        "y": (render_h - size[1]) // 2,
    }
    (save,) = nodes_of(result.graph, "SaveImage")
    assert follow(result.graph, result.graph[save]["inputs"]["images"]) == crop
    assert result.output_size == size
    validate_graph_against(result.graph, OBJECT_INFO)


def test_a_graph_without_a_crop_node_returns_the_render_size(sd: Workflow) -> None:
    result = inject(sd, params(width=1000, height=563))
    assert result.output_size == render_size(1000, 563) == (result.width, result.height)


def test_a_crop_marker_on_a_node_without_crop_inputs_is_refused(flux: Workflow) -> None:
    graph = copy.deepcopy(flux.graph)
    graph["17"]["_meta"]["title"] = "Decode [storyboard:crop]"
    with pytest.raises(WorkflowFormatError, match=r"node 17 \(VAEDecode\) is used as the crop"):
        parse_workflow(graph, name="bad-crop")


def test_configured_steps_reach_the_scheduler_and_the_sampler(flux: Workflow, sd: Workflow) -> None:
    (scheduler,) = nodes_of(flux.graph, "Flux2Scheduler")
    assert inject(flux, params(seed=1)).graph[scheduler]["inputs"]["steps"] == 20  # its own
    flux_result = inject(flux, params(seed=1, steps=4))
    assert flux_result.graph[scheduler]["inputs"]["steps"] == 4
    validate_graph_against(flux_result.graph, OBJECT_INFO)
    (sampler,) = nodes_of(sd.graph, "KSampler")
    assert inject(sd, params(seed=1, steps=6)).graph[sampler]["inputs"]["steps"] == 6


def test_configured_megapixels_reach_every_reference_chain(flux: Workflow) -> None:
    result = inject(flux, params(seed=1, references=REFERENCE_NAMES, reference_megapixels=0.05))
    scales = nodes_of(result.graph, "ImageScaleToTotalPixels")
    assert len(scales) == len(REFERENCE_NAMES)
    assert {result.graph[n]["inputs"]["megapixels"] for n in scales} == {0.05}
    validate_graph_against(result.graph, OBJECT_INFO)
    own = inject(flux, params(seed=1, references=REFERENCE_NAMES[:1]))
    (scale,) = nodes_of(own.graph, "ImageScaleToTotalPixels")
    assert own.graph[scale]["inputs"]["megapixels"] == 1.0  # unset: the workflow's own


def test_steps_and_megapixels_are_part_of_the_render_cache_key(flux: Workflow) -> None:
    base = {"seed": 7, "references": REFERENCE_NAMES[:1]}
    hashes = {
        inject(flux, params(**base, **extra)).graph_hash
        for extra in ({}, {"steps": 4}, {"steps": 8}, {"reference_megapixels": 0.5})
    }
    assert len(hashes) == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"steps": 0}, "steps"), ({"reference_megapixels": 0.0}, "megapixels")],
)
def test_invalid_steps_or_megapixels_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params(**overrides)


def test_the_crop_is_written_for_the_server_s_crop_class(flux: Workflow) -> None:
    size = (1920, 1080)
    box = {"x": 0, "y": 4, "width": 1920, "height": 1080}
    (crop,) = nodes_of(flux.graph, "ImageCrop")
    image = flux.graph[crop]["inputs"]["image"]
    v2 = inject(flux, params(width=size[0], height=size[1], crop_class="ImageCropV2"))
    assert v2.graph[crop]["class_type"] == "ImageCropV2"
    assert v2.graph[crop]["inputs"] == {"image": image, "crop_region": box}
    assert v2.output_size == size
    validate_graph_against(v2.graph, OBJECT_INFO)
    # A workflow saved with ImageCropV2 goes back to ImageCrop for a server without it.
    shipped_v2 = Workflow(name="v2", graph=v2.graph, slots=find_slots(v2.graph))
    old = inject(shipped_v2, params(width=size[0], height=size[1], crop_class="ImageCrop"))
    assert old.graph[crop]["class_type"] == "ImageCrop"
    assert old.graph[crop]["inputs"] == {"image": image, **box}
    assert inject(shipped_v2, params(width=size[0], height=size[1])).graph[crop] == v2.graph[crop]


def test_the_crop_class_follows_the_server_s_object_info() -> None:
    assert crop_class_for(OBJECT_INFO) == "ImageCropV2"
    older = {k: v for k, v in OBJECT_INFO.items() if k != "ImageCropV2"}
    assert crop_class_for(older) == "ImageCrop"
    assert crop_class_for({}) is None

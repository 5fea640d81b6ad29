"""Validation against the captured /object_info (extended with FLUX.2 model names), and hashing."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable

import pytest

from storyboard.errors import WorkflowValidationError, is_retryable
from storyboard.workflow import (
    RenderParams,
    canonical_json,
    graph_hash,
    graph_problems,
    inject,
    load_workflow,
    validate_graph_against,
)
from tests.support.workflow import FIXTURES, FLUX, SD, object_info, shuffled

OBJECT_INFO = object_info()
Graph = dict


def flux() -> Graph:
    return inject(load_workflow(FLUX), RenderParams(prompt="p", width=1920, height=1080)).graph


def test_shipped_and_captured_graphs_pass() -> None:
    for path in (FLUX, SD, FIXTURES / "sd_tiny_api.json"):
        validate_graph_against(load_workflow(path).graph, OBJECT_INFO)
    validate_graph_against(flux(), OBJECT_INFO)


def test_flux_graph_fails_on_the_raw_capture_which_has_no_flux_models() -> None:
    raw = json.loads((FIXTURES / "object_info.subset.json").read_text())
    problems = graph_problems(load_workflow(FLUX).graph, raw)
    assert any("diffusion model 'flux2_dev_fp8mixed.safetensors'" in p for p in problems)
    assert any("the server has none of these installed" in p for p in problems)


def set_input(node: str, name: str, value: object) -> Callable[[Graph], None]:
    def change(graph: Graph) -> None:
        graph[node]["inputs"][name] = value

    return change


def delete_input(node: str, name: str) -> Callable[[Graph], None]:
    def change(graph: Graph) -> None:
        del graph[node]["inputs"][name]

    return change


def set_class(node: str, class_type: str) -> Callable[[Graph], None]:
    def change(graph: Graph) -> None:
        graph[node]["class_type"] = class_type

    return change


CASES = [
    (
        set_input("4", "lora_name", "storyboard_noir_v2.safetensors"),
        "node 4 (LoraLoaderModelOnly): LoRA 'storyboard_noir_v2.safetensors' is not on the "
        "server; available: storyboard_noir_v1.safetensors, ",
    ),
    (
        set_input("1", "unet_name", "flux2_dev_fp8.safetensors"),
        "diffusion model 'flux2_dev_fp8.safetensors' is not on the server; "
        "available: flux2_dev_fp8mixed.safetensors",
    ),
    (
        set_input("2", "clip_name", "mistral.safetensors"),
        "text encoder 'mistral.safetensors' is not on the server",
    ),
    (set_input("3", "vae_name", "flux-vae.safetensors"), "VAE 'flux-vae.safetensors' is not on"),
    (
        set_input("2", "type", "flux3"),
        "'type' value 'flux3' is not on the server; available: flux2",
    ),
    (set_input("13", "sampler_name", "eulr"), "available: euler"),
    (set_input("7", "image", "storyboard/missing.png"), "image 'storyboard/missing.png' is not"),
    (set_input("14", "steps", 0), "node 14 (Flux2Scheduler): 'steps' is 0, below the minimum"),
    (set_input("15", "width", 20000), "'width' is 20000, above the maximum"),
    (set_input("6", "guidance", -1.0), "'guidance' is -1.0, below the minimum"),
    (delete_input("6", "guidance"), "node 6 (FluxGuidance): required input 'guidance' is missing"),
    (
        set_input("16", "noise", ["99", 0]),
        "input 'noise' links to ['99', 0], which is not an output",
    ),
    (set_input("16", "noise", ["12", 3]), "input 'noise' links to ['12', 3]"),
    (set_input("11", "model", ["3", 0]), "input 'model' is linked to the wrong kind of output"),
    (
        set_class("13", "KSamplerSelectt"),
        "node 13: node type 'KSamplerSelectt' is not installed on the server "
        "(similar: KSamplerSelect",
    ),
    (set_class("18", "SaveImageX"), "no output node the server knows"),
]


@pytest.mark.parametrize(("change", "expected"), CASES)
def test_each_problem_is_named(change: Callable[[Graph], None], expected: str) -> None:
    graph = copy.deepcopy(load_workflow(FLUX).graph)
    change(graph)
    with pytest.raises(WorkflowValidationError) as caught:
        validate_graph_against(graph, OBJECT_INFO)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert expected in str(caught.value)
    assert not is_retryable(caught.value)


def test_problems_are_collected_not_first_only() -> None:
    graph = copy.deepcopy(load_workflow(FLUX).graph)
    for change, _ in CASES[:10]:  # ten different inputs
        change(graph)
    with pytest.raises(WorkflowValidationError) as caught:
        validate_graph_against(graph, OBJECT_INFO)
    assert len(caught.value.problems) == 10


def test_closest_choices_come_first_and_long_lists_are_cut() -> None:
    info = copy.deepcopy(OBJECT_INFO)
    names = [f"style_{i:02d}.safetensors" for i in range(30)] + ["noir_v1.safetensors"]
    info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] = names
    graph = copy.deepcopy(load_workflow(FLUX).graph)
    graph["4"]["inputs"]["lora_name"] = "noir_v2.safetensors"
    (problem,) = graph_problems(graph, info)
    assert "available: noir_v1.safetensors, " in problem
    assert problem.endswith("... (31 in total)")


# Hashing


def test_hash_is_stable_across_key_order() -> None:
    graph = flux()
    rng = random.Random(7)
    for _ in range(5):
        assert graph_hash(shuffled(graph, rng)) == graph_hash(graph)


def test_hash_ignores_titles_but_not_values() -> None:
    graph = flux()
    base = graph_hash(graph)
    retitled = copy.deepcopy(graph)
    retitled["5"]["_meta"]["title"] = "renamed"
    assert graph_hash(retitled) == base
    changed = copy.deepcopy(graph)
    changed["6"]["inputs"]["guidance"] = 3.5
    assert graph_hash(changed) != base


def test_canonical_json_is_compact_sorted_utf8() -> None:
    graph = {"b": {"inputs": {"z": 1, "a": "é🎬"}, "class_type": "X", "_meta": {"title": "t"}}}
    assert canonical_json(graph) == '{"b":{"class_type":"X","inputs":{"a":"é🎬","z":1}}}'
    assert len(graph_hash(graph)) == 64


def test_same_params_give_the_same_hash_and_a_new_seed_a_new_one() -> None:
    workflow = load_workflow(FLUX)
    params = RenderParams(prompt="p", width=1920, height=1080, seed=1)
    assert inject(workflow, params).graph_hash == inject(workflow, params).graph_hash
    other = RenderParams(prompt="p", width=1920, height=1080, seed=2)
    assert inject(workflow, other).graph_hash != inject(workflow, params).graph_hash

"""objectinfo against the captured /object_info and the captured 400 bodies."""

from __future__ import annotations

import ast
import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from storyboard.comfyui import objectinfo
from storyboard.comfyui.objectinfo import (
    combo_options,
    input_spec,
    is_link,
    missing_node_type,
    node_errors_body,
    output_nodes,
    validate_graph,
)
from tests.support.captures import (
    NODE_ERROR_CASES,
    captured_error,
    error_graph,
    object_info,
    sd_tiny,
)


def test_captured_graph_is_valid() -> None:
    assert validate_graph(sd_tiny(), object_info()) == []
    assert missing_node_type(sd_tiny(), object_info()) is None


@pytest.mark.parametrize("case", NODE_ERROR_CASES)
def test_node_errors_match_capture(case: str) -> None:
    graph = error_graph(case)
    body = node_errors_body(validate_graph(graph, object_info()))
    assert body == captured_error(case)["node_errors"]


def test_unknown_class_matches_capture() -> None:
    problem = missing_node_type(error_graph("unknown_class_type"), object_info())
    assert problem is not None
    assert problem.to_error() == captured_error("unknown_class_type")["error"]


def test_combo_options_reads_both_encodings() -> None:
    info = object_info()
    classic = input_spec(info, "KSampler", "scheduler")
    modern = input_spec(info, "KSamplerSelect", "sampler_name")
    assert classic is not None and modern is not None
    assert "normal" in (combo_options(classic) or [])
    assert "euler" in (combo_options(modern) or [])
    assert combo_options(input_spec(info, "KSampler", "steps")) is None
    assert input_spec(info, "KSampler", "no_such_input") is None
    assert input_spec(info, "NoSuchClass", "steps") is None


def test_optional_input_found() -> None:
    spec = input_spec(object_info(), "ReferenceLatent", "latent")
    assert spec is not None and spec[0] == "LATENT"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(["4", 0], True), (["4", True], False), ([4, 0], False), (["4", 0, 1], False), ("4", False)],
)
def test_is_link(value: Any, expected: bool) -> None:
    assert is_link(value) is expected


def test_long_combo_lists_are_abbreviated_but_choices_kept() -> None:
    graph = copy.deepcopy(sd_tiny())
    graph["3"]["inputs"]["sampler_name"] = "warp_drive"
    [problem] = validate_graph(graph, object_info())
    assert problem.type == "value_not_in_list"
    assert problem.details == "sampler_name: 'warp_drive' not in (list of length 44)"
    assert problem.extra_info["input_config"] is None
    assert problem.choices is not None and "euler" in problem.choices


def test_link_to_missing_node_is_reported() -> None:
    graph = copy.deepcopy(sd_tiny())
    graph["8"]["inputs"]["samples"] = ["99", 0]
    [problem] = validate_graph(graph, object_info())
    assert (problem.node_id, problem.type, problem.input_name) == (
        "8",
        "bad_linked_input",
        "samples",
    )


def test_missing_image_file_is_custom_validation() -> None:
    graph = copy.deepcopy(sd_tiny())
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": "refs/nope.png"}}
    graph["21"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}}
    [problem] = validate_graph(graph, object_info())
    assert problem.type == "custom_validation_failed"
    assert problem.details == "image - Invalid image file: refs/nope.png"
    assert problem.dependent_outputs == ("21",)


def test_nodes_no_output_depends_on_are_not_validated() -> None:
    graph = copy.deepcopy(sd_tiny())
    graph["30"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 1}}
    assert validate_graph(graph, object_info()) == []
    assert output_nodes(graph, object_info()) == ["9"]


def test_string_numbers_are_converted_like_comfyui() -> None:
    graph = copy.deepcopy(sd_tiny())
    graph["5"]["inputs"]["width"] = "8"
    [problem] = validate_graph(graph, object_info())
    assert problem.type == "value_smaller_than_min"
    assert problem.received_value == 8


def test_the_validator_lives_beside_the_client_and_imports_nothing_of_ours() -> None:
    # Workflow and simulator code import it; it must not pull any of them (or store, image) in.
    tree = ast.parse(Path(objectinfo.__file__).read_text(encoding="utf-8"))
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
        )
    ]
    assert objectinfo.__name__ == "storyboard.comfyui.objectinfo"
    assert not [name for name in imported if name.startswith("storyboard")]
    assert importlib.util.find_spec("storyboard.objectinfo") is None

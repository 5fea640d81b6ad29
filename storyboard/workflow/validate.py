"""Checking a graph against the server's /object_info before it is queued.

The checks themselves are ComfyUI's (storyboard.comfyui.objectinfo); this module collects every
problem and words it for a person: what is wrong, and the closest valid choices.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from storyboard.comfyui.objectinfo import NodeProblem, output_nodes, validate_graph
from storyboard.errors import WorkflowValidationError

# What a COMBO input holds, in words, for the inputs people most often get wrong.
_INPUT_WORDS = {
    "ckpt_name": "checkpoint",
    "unet_name": "diffusion model",
    "clip_name": "text encoder",
    "vae_name": "VAE",
    "lora_name": "LoRA",
    "image": "image",
}
_SHOWN_CHOICES = 5


def validate_graph_against(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> None:
    """Raise WorkflowValidationError listing every problem; return quietly when none.

    Not retryable: the same graph against the same server never passes.
    """
    problems = graph_problems(graph, object_info)
    if problems:
        raise WorkflowValidationError(problems)


def graph_problems(graph: Mapping[str, Any], object_info: Mapping[str, Any]) -> list[str]:
    """Every problem of `graph` on this server, one readable sentence each."""
    messages: list[str] = []
    for node_id, node in graph.items():
        class_type = str(node.get("class_type"))
        if class_type not in object_info:
            close = difflib.get_close_matches(class_type, list(object_info), n=3)
            hint = f" (similar: {', '.join(close)})" if close else ""
            messages.append(
                f"node {node_id}: node type '{class_type}' is not installed on the server"
                f"{hint}; install the custom node or replace it"
            )
    if not output_nodes(graph, object_info):
        messages.append("the graph has no output node the server knows (e.g. SaveImage)")
    messages.extend(describe(problem) for problem in validate_graph(graph, object_info))
    return messages


def describe(problem: NodeProblem) -> str:
    where = f"node {problem.node_id} ({problem.class_type})"
    name = problem.input_name or "?"
    value = problem.received_value
    kind = problem.type
    if kind in ("value_not_in_list", "custom_validation_failed") and problem.choices is not None:
        what = _INPUT_WORDS.get(name, f"'{name}' value")
        available = _choices(str(value), problem.choices)
        return f"{where}: {what} {value!r} is not on the server; {available}"
    if kind == "value_smaller_than_min":
        return f"{where}: '{name}' is {value}, below the minimum ({problem.message})"
    if kind == "value_bigger_than_max":
        return f"{where}: '{name}' is {value}, above the maximum ({problem.message})"
    if kind == "required_input_missing":
        return f"{where}: required input '{name}' is missing"
    if kind == "bad_linked_input":
        return f"{where}: input '{name}' links to {value!r}, which is not an output of any node"
    if kind == "return_type_mismatch":
        return f"{where}: input '{name}' is linked to the wrong kind of output ({problem.details})"
    return f"{where}: {problem.message}: {problem.details}"


def _choices(value: str, choices: list[str]) -> str:
    if not choices:
        return "the server has none of these installed"
    closest = difflib.get_close_matches(value, choices, n=_SHOWN_CHOICES, cutoff=0.0)
    rest = len(choices) - len(closest)
    more = f", ... ({len(choices)} in total)" if rest else ""
    return f"available: {', '.join(closest)}{more}"

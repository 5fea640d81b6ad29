"""Reading a workflow file: API-format JSON only, checked before anything uses it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from storyboard.errors import WorkflowFormatError
from storyboard.workflow.graph import Graph, links_of
from storyboard.workflow.slots import Slots, find_slots

EXPORT_HINT = (
    "export the API format instead: in ComfyUI use the menu Workflow -> Export (API) "
    "(older versions: enable dev mode options in the settings, then 'Save (API Format)')"
)


@dataclass(frozen=True)
class Workflow:
    """A parsed graph and where its parameters go. Never mutated: `inject` copies it."""

    name: str
    graph: Graph
    slots: Slots


def load_workflow(path: Path | str) -> Workflow:
    """Read an API-format workflow file; the name is the file's stem ("flux-2")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise WorkflowFormatError(f"workflow file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowFormatError(f"workflow file {path} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"workflow file {path} is not JSON ({exc.msg} at line {exc.lineno}); {EXPORT_HINT}"
        ) from exc
    try:
        return parse_workflow(data, name=path.stem)
    except WorkflowFormatError as exc:
        raise WorkflowFormatError(f"workflow file {path}: {exc}") from exc


def parse_workflow(data: object, *, name: str) -> Workflow:
    """Check the shape of an already-parsed graph and find its slots (the input is copied)."""
    if not isinstance(data, dict):
        raise WorkflowFormatError(
            f"a workflow must be a JSON object of nodes, got {type(data).__name__}; {EXPORT_HINT}"
        )
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        raise WorkflowFormatError(
            "this is a UI-format workflow (it has 'nodes' and 'links' arrays), "
            f"which the /prompt API does not accept; {EXPORT_HINT}"
        )
    if not data:
        raise WorkflowFormatError("the workflow has no nodes")
    for node_id, node in data.items():
        if not (
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs"), dict)
        ):
            raise WorkflowFormatError(
                f"node {node_id!r} is not an API-format node with 'class_type' and 'inputs'; "
                f"{EXPORT_HINT}"
            )
    graph: Graph = copy.deepcopy(data)
    for node_id, input_name, (target, _) in links_of(graph):
        if target not in graph:
            raise WorkflowFormatError(
                f"node {node_id} input '{input_name}' links to node {target!r}, "
                "which is not in the workflow"
            )
    return Workflow(name=name, graph=graph, slots=find_slots(graph))

"""`POST /prompt` validation with ComfyUI's 400 bodies (see tests/fixtures/errors.json)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from storyboard.comfyui.objectinfo import (
    missing_node_type,
    node_errors_body,
    output_nodes,
    validate_graph,
)


@dataclass
class Accepted:
    graph: dict[str, Any]
    prompt_id: str
    outputs: list[str]
    extra_data: dict[str, Any]
    front: bool
    node_errors: dict[str, Any] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, kind: str, message: str, details: str = "", *,
                 extra_info: dict[str, Any] | None = None,
                 node_errors: dict[str, Any] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.body = {
            "error": {"type": kind, "message": message, "details": details,
                      "extra_info": extra_info or {}},
            "node_errors": node_errors or {},
        }  # fmt: skip


def _prompt_id(body: dict[str, Any]) -> str:
    value = body.get("prompt_id")
    if value is None:
        return str(uuid.uuid4())
    try:
        canonical = str(uuid.UUID(str(value)))
    except ValueError:
        canonical = ""
    if not isinstance(value, str) or canonical != value:
        raise Rejected(
            "invalid_prompt_id",
            "prompt_id must be a valid UUID",
            "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
            "omit it to let the server generate one",
        )
    return value


def check_submission(body: Any, object_info: dict[str, Any]) -> Accepted:
    """The accepted submission, or Rejected carrying the exact 400 body."""
    if not isinstance(body, dict) or "prompt" not in body:
        raise Rejected("no_prompt", "No prompt provided", "No prompt provided")
    prompt_id = _prompt_id(body)
    graph = body["prompt"]
    if not isinstance(graph, dict):
        raise Rejected("invalid_prompt", "Cannot execute because the prompt is not an object")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise Rejected(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise Rejected(
                "invalid_prompt", "Node inputs must be an object", f"Node ID '#{node_id}'"
            )
    unknown = missing_node_type(graph, object_info)
    if unknown is not None:
        raise Rejected(unknown.type, unknown.message, unknown.details,
                       extra_info=unknown.extra_info)  # fmt: skip
    outputs = output_nodes(graph, object_info)
    if not outputs:
        raise Rejected("prompt_no_outputs", "Prompt has no outputs")
    problems = validate_graph(graph, object_info)
    failed = {output for p in problems for output in p.dependent_outputs}
    good = [output for output in outputs if output not in failed]
    node_errors = node_errors_body(problems)
    if not good:
        own = [p for p in problems if p.node_id in failed]
        details = "\n".join(f"{p.class_type}:\n- {p.message}: {p.details}" for p in own)
        raise Rejected("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                       details, node_errors=node_errors)  # fmt: skip
    extra_data = body.get("extra_data")
    extra = dict(extra_data) if isinstance(extra_data, dict) else {}
    client_id = body.get("client_id")
    if isinstance(client_id, str) and client_id:
        extra["client_id"] = client_id
    return Accepted(graph, prompt_id, good, extra, bool(body.get("front")), node_errors)

"""Pure helpers over a ComfyUI `/object_info` snapshot.

`validate_graph` checks an API-format graph the way ComfyUI's own prompt
validation does (only nodes an output node depends on; COMBO names, min and
max, never `step`; link targets and their return types) and reports each
problem with the real ComfyUI error type, so the simulator can answer with the
real 400 body and the workflow validator can explain it in friendlier words.

Unknown classes are not `validate_graph`'s business: ComfyUI rejects a graph
with an unknown class before it validates any input, and `missing_node_type`
reports exactly that case.

It sits beside the client because these are the server's rules, not ours.
It imports nothing of storyboard, so its users depend on it and not on each
other: the simulator (the real 400 body), `workflow.validate` (the same
problems in a person's words), `workflow.graph` (`is_link`) and `comfyui.inventory`
(which lane has a graph's models, via `choices`). The direction
is one way: workflow and simulator code import this module; nothing in
`storyboard.comfyui` imports workflow, store or image code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

ObjectInfo = Mapping[str, Any]
Graph = Mapping[str, Any]

# ComfyUI leaves the options out of an error body above this many choices
# (model folders can hold thousands of files).
_MAX_LISTED_CHOICES = 20

# Inputs a node validates itself (VALIDATE_INPUTS) instead of by COMBO
# membership: a missing file is "custom_validation_failed", not "value_not_in_list".
_FILE_INPUTS: dict[tuple[str, str], str] = {("LoadImage", "image"): "Invalid image file"}

COMBO = "COMBO"


@dataclass(frozen=True)
class NodeProblem:
    """One validation error of one node, in ComfyUI's vocabulary.

    `type`, `message`, `details` and `extra_info` are exactly what ComfyUI puts
    in a `node_errors[node_id]["errors"]` entry; `choices` is the full option
    list of a COMBO input (never abbreviated) for friendlier messages.
    """

    node_id: str
    class_type: str
    type: str
    message: str
    details: str
    input_name: str | None = None
    received_value: Any = None
    choices: list[str] | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)
    dependent_outputs: tuple[str, ...] = ()

    def to_error(self) -> dict[str, Any]:
        """The ComfyUI error entry for this problem."""
        return {
            "type": self.type,
            "message": self.message,
            "details": self.details,
            "extra_info": dict(self.extra_info),
        }


def input_spec(object_info: ObjectInfo, class_type: str, input_name: str) -> list[Any] | None:
    """The `[type, options]` spec of a required or optional input, or None."""
    inputs = _class_inputs(object_info, class_type)
    for section in ("required", "optional"):
        spec = inputs.get(section, {}).get(input_name)
        if isinstance(spec, list) and spec:
            return spec
    return None


def combo_options(spec: Any) -> list[str] | None:
    """The choices of a COMBO spec in either encoding, or None if not a COMBO.

    ComfyUI sends `[["a", "b"], {...}]` for classic nodes and
    `["COMBO", {"options": ["a", "b"]}]` for newer ones.
    """
    if not isinstance(spec, list | tuple) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return [str(option) for option in kind]
    if kind == COMBO:
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return [str(option) for option in extra.get("options", [])]
    return None


def choices(object_info: ObjectInfo, class_type: str, input_name: str) -> list[str]:
    """The names a COMBO input offers on this server (its model files, LoRAs, ...); [] if none."""
    return combo_options(input_spec(object_info, class_type, input_name)) or []


def is_link(value: Any) -> TypeGuard[list[Any]]:
    """True for a link to another node's output: `["node_id", slot_index]`."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def is_output_node(object_info: ObjectInfo, class_type: str) -> bool:
    info = object_info.get(class_type)
    return isinstance(info, Mapping) and info.get("output_node") is True


def output_nodes(graph: Graph, object_info: ObjectInfo) -> list[str]:
    """Ids of the graph's output nodes (SaveImage, PreviewImage, ...), in graph order."""
    return [
        node_id
        for node_id, node in graph.items()
        if isinstance(node, Mapping) and is_output_node(object_info, str(node.get("class_type")))
    ]


def missing_node_type(graph: Graph, object_info: ObjectInfo) -> NodeProblem | None:
    """The first node whose class the server does not know, as ComfyUI reports it."""
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if isinstance(class_type, str) and class_type not in object_info:
            return NodeProblem(
                node_id=str(node_id),
                class_type=class_type,
                type="missing_node_type",
                message=f"Node '{class_type}' not found. The custom node may not be installed.",
                details=f"Node ID '#{node_id}'",
                extra_info={
                    "node_id": str(node_id),
                    "class_type": class_type,
                    "node_title": _title(node, class_type),
                },
            )
    return None


def validate_graph(graph: Graph, object_info: ObjectInfo) -> list[NodeProblem]:
    """Every input problem of the nodes that some output node depends on.

    Each problem carries the output nodes that depend on its node. Nodes with
    an unknown class are skipped (see `missing_node_type`).
    """
    found: dict[str, list[NodeProblem]] = {}
    dependents: dict[str, list[str]] = {}
    for output_id in output_nodes(graph, object_info):
        for node_id in _upstream(graph, output_id):
            if node_id not in found:
                found[node_id] = list(_node_problems(graph, object_info, node_id))
            dependents.setdefault(node_id, []).append(output_id)
    return [
        NodeProblem(**{**problem.__dict__, "dependent_outputs": tuple(dependents[node_id])})
        for node_id, problems in found.items()
        for problem in problems
    ]


def node_errors_body(problems: list[NodeProblem]) -> dict[str, Any]:
    """ComfyUI's `node_errors` mapping: node id -> errors, class_type, dependent_outputs."""
    body: dict[str, Any] = {}
    for problem in problems:
        entry = body.setdefault(
            problem.node_id,
            {
                "errors": [],
                "dependent_outputs": list(problem.dependent_outputs),
                "class_type": problem.class_type,
            },
        )
        entry["errors"].append(problem.to_error())
    return body


def _class_inputs(object_info: ObjectInfo, class_type: str) -> Mapping[str, Any]:
    info = object_info.get(class_type)
    if not isinstance(info, Mapping):
        return {}
    inputs = info.get("input")
    return inputs if isinstance(inputs, Mapping) else {}


def _title(node: Mapping[str, Any], class_type: str) -> str:
    meta = node.get("_meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("title"), str):
        return str(meta["title"])
    return class_type


def _upstream(graph: Graph, output_id: str) -> list[str]:
    """The output node and every node it reaches through links, each once."""
    seen: list[str] = []
    stack = [output_id]
    while stack:
        node_id = stack.pop()
        if node_id in seen or not isinstance(graph.get(node_id), Mapping):
            continue
        seen.append(node_id)
        inputs = graph[node_id].get("inputs")
        if isinstance(inputs, Mapping):
            stack.extend(value[0] for value in inputs.values() if is_link(value))
    return seen


def _output_types(object_info: ObjectInfo, class_type: str) -> list[Any]:
    info = object_info.get(class_type)
    outputs = info.get("output") if isinstance(info, Mapping) else None
    return list(outputs) if isinstance(outputs, list) else []


def _types_match(received: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        expected = COMBO
    if not isinstance(received, str) or not isinstance(expected, str):
        return True
    if "*" in (received, expected) or received == expected:
        return True
    if expected == COMBO:
        return received in (COMBO, "STRING")
    return bool(set(received.split(",")) & set(expected.split(",")))


def _node_problems(graph: Graph, object_info: ObjectInfo, node_id: str) -> Iterator[NodeProblem]:
    node = graph[node_id]
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or class_type not in object_info:
        return
    inputs = node.get("inputs")
    values: Mapping[str, Any] = inputs if isinstance(inputs, Mapping) else {}
    class_inputs = _class_inputs(object_info, class_type)
    for section in ("required", "optional"):
        specs = class_inputs.get(section)
        if not isinstance(specs, Mapping):
            continue
        for name, spec in specs.items():
            if name not in values:
                if section == "required":
                    yield _problem(
                        node_id,
                        class_type,
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        {"input_name": name},
                    )
                continue
            problem = _input_problem(
                graph, object_info, node_id, class_type, name, spec, values[name]
            )
            if problem is not None:
                yield problem


def _problem(
    node_id: str,
    class_type: str,
    kind: str,
    message: str,
    details: str,
    extra_info: dict[str, Any],
    choices: list[str] | None = None,
) -> NodeProblem:
    return NodeProblem(
        node_id=node_id,
        class_type=class_type,
        type=kind,
        message=message,
        details=details,
        input_name=extra_info.get("input_name"),
        received_value=extra_info.get("received_value"),
        choices=choices,
        extra_info=extra_info,
    )


def _input_problem(
    graph: Graph,
    object_info: ObjectInfo,
    node_id: str,
    class_type: str,
    name: str,
    spec: list[Any],
    value: Any,
) -> NodeProblem | None:
    expected = spec[0]
    extra: Mapping[str, Any] = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    spec = _config(spec)
    base = {"input_name": name, "input_config": spec}
    if isinstance(value, list):
        return _link_problem(graph, object_info, node_id, class_type, name, spec, value)
    try:
        value = _convert(expected, value)
    except (TypeError, ValueError, OverflowError) as exc:
        return _problem(
            node_id,
            class_type,
            "invalid_input_type",
            f"Failed to convert an input value to a {expected} value",
            f"{name}, {value}, {exc}",
            {**base, "received_value": value, "exception_message": str(exc)},
        )
    choices = combo_options(spec)
    file_check = _FILE_INPUTS.get((class_type, name))
    if file_check is not None:
        if choices is not None and value not in choices:
            return _problem(
                node_id,
                class_type,
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{name} - {file_check}: {value}",
                {**base, "received_value": value},
                choices,
            )
        return None
    if "min" in extra and _less(value, extra["min"]):
        return _problem(
            node_id,
            class_type,
            "value_smaller_than_min",
            f"Value {value} smaller than min of {extra['min']}",
            name,
            {**base, "received_value": value},
        )
    if "max" in extra and _less(extra["max"], value):
        return _problem(
            node_id,
            class_type,
            "value_bigger_than_max",
            f"Value {value} bigger than max of {extra['max']}",
            name,
            {**base, "received_value": value},
        )
    if choices is not None and value not in choices:
        many = len(choices) > _MAX_LISTED_CHOICES
        listed = f"(list of length {len(choices)})" if many else str(choices)
        return _problem(
            node_id,
            class_type,
            "value_not_in_list",
            "Value not in list",
            f"{name}: '{value}' not in {listed}",
            {"input_name": name, "input_config": None if many else spec, "received_value": value},
            choices,
        )
    return None


def _link_problem(
    graph: Graph,
    object_info: ObjectInfo,
    node_id: str,
    class_type: str,
    name: str,
    spec: list[Any],
    value: list[Any],
) -> NodeProblem | None:
    spec = _config(spec)
    source = graph.get(value[0]) if is_link(value) else None
    source_class = source.get("class_type") if isinstance(source, Mapping) else None
    returns = _output_types(object_info, str(source_class))
    if source_class is None or not is_link(value) or not 0 <= value[1] < len(returns):
        # ComfyUI crashes on these (KeyError/IndexError); name it plainly instead.
        return _problem(
            node_id,
            class_type,
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index] "
            "pointing at an existing node output",
            name,
            {"input_name": name, "input_config": spec, "received_value": value},
        )
    received = returns[value[1]]
    if not _types_match(received, spec[0]):
        return _problem(
            node_id,
            class_type,
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            f"{name}, received_type({received}) mismatch input_type({spec[0]})",
            {
                "input_name": name,
                "input_config": spec,
                "received_type": received,
                "linked_node": value,
            },
        )
    return None


def _config(spec: list[Any]) -> list[Any]:
    # /object_info drops an empty options dict; error bodies always carry one.
    return spec if len(spec) > 1 else [*spec, {}]


def _convert(expected: Any, value: Any) -> Any:
    if expected == "INT":
        return int(value)
    if expected == "FLOAT":
        return float(value)
    if expected == "STRING":
        return str(value)
    if expected == "BOOLEAN":
        return bool(value)
    return value


def _less(left: Any, right: Any) -> bool:
    try:
        return bool(left < right)
    except TypeError:
        return False

"""Small operations on an API-format graph: links, consumers, rewiring, fresh ids.

An API-format graph maps node ids (strings) to `{"class_type", "inputs", "_meta"?}`;
an input whose value is `[node_id, output_index]` is a link to another node's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from storyboard.comfyui.objectinfo import is_link

Graph = dict[str, dict[str, Any]]
Link = tuple[str, int]


def as_link(value: object) -> Link | None:
    """The (node id, output index) a value points to, or None for a literal."""
    return (value[0], value[1]) if is_link(value) else None


def links_of(graph: Graph) -> Iterator[tuple[str, str, Link]]:
    """Every (consumer node id, input name, link) in the graph."""
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            link = as_link(value)
            if link is not None:
                yield node_id, name, link


def consumers(graph: Graph, source: str) -> list[tuple[str, str, int]]:
    """(consumer id, input name, output index) for every input fed by `source`."""
    return [
        (node_id, name, link[1]) for node_id, name, link in links_of(graph) if link[0] == source
    ]


def ancestors(graph: Graph, start: str) -> set[str]:
    """Every node `start` depends on, not including `start` itself."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for value in graph[stack.pop()]["inputs"].values():
            link = as_link(value)
            if link is not None and link[0] not in seen and link[0] in graph:
                seen.add(link[0])
                stack.append(link[0])
    return seen


def rewire(graph: Graph, source: str, replacement: dict[int, object], *, skip: set[str]) -> None:
    """Point every input fed by an output of `source` at `replacement[output]`.

    Nodes in `skip` keep their inputs (they are being removed or are the new wiring).
    """
    for node_id, name, (target, index) in list(links_of(graph)):
        if target != source or node_id in skip:
            continue
        if index not in replacement:
            raise KeyError(f"node {node_id} uses output {index} of {source}, which has no bypass")
        value = replacement[index]
        graph[node_id]["inputs"][name] = list(value) if isinstance(value, list) else value


def fresh_ids(graph: Graph, count: int) -> list[str]:
    """`count` unused numeric ids after the largest numeric id, as ComfyUI numbers nodes."""
    numeric = [int(node_id) for node_id in graph if node_id.isdecimal()]
    next_id = max(numeric, default=0) + 1
    ids: list[str] = []
    while len(ids) < count:
        if str(next_id) not in graph:
            ids.append(str(next_id))
        next_id += 1
    return ids

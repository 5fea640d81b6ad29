"""Canonical hash of a graph: identifies a render for provenance and caching.

The hash covers each node's id, `class_type` and `inputs`, serialised as JSON with sorted
keys, no whitespace and UTF-8 text (`ensure_ascii=False`), so it does not depend on key
order or formatting. `_meta` is left out: ComfyUI never reads it when executing, so
renaming a node's title does not change the picture and must not change the hash.
Node ids are part of the hash (they are part of what is submitted).
"""

from __future__ import annotations

import hashlib
import json

from storyboard.workflow.graph import Graph


def canonical_json(graph: Graph) -> str:
    stripped = {
        node_id: {"class_type": node["class_type"], "inputs": node["inputs"]}
        for node_id, node in graph.items()
    }
    return json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def graph_hash(graph: Graph) -> str:
    """Hex sha256 of `canonical_json(graph)`."""
    # surrogatepass: a lone surrogate in a prompt must still hash, not crash.
    return hashlib.sha256(canonical_json(graph).encode("utf-8", "surrogatepass")).hexdigest()

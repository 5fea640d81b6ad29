"""What a finished picture records in its PNG text chunks: the keys and their meaning.

    prompt               the exact API graph that was queued, as JSON in an uncompressed tEXt
                         chunk: the key ComfyUI's SaveImage writes, so dragging the picture into
                         ComfyUI opens the graph that made it
    storyboard:<name>    our provenance, compressed (zTXt / iTXt): project, sentence, revision,
                         text prompt, seed, workflow, workflow_hash, lora, references

The render cache finds a picture by `storyboard:workflow_hash`; pictures written before that
key existed carry the hash under `workflow_hash` (and our text prompt under `prompt`), and are
read as well. The chunks themselves are written and read by storyboard.image (the one module
that touches Pillow); this module builds and interprets their text, with no Pillow and no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

COMFYUI_PROMPT = "prompt"
PREFIX = "storyboard:"
HASH_KEY = f"{PREFIX}workflow_hash"
LEGACY_HASH_KEY = "workflow_hash"


def provenance(
    *,
    project_id: str,
    sentence_id: str,
    revision: int,
    prompt: str,
    seed: int,
    workflow_name: str,
    workflow_hash: str,
    lora: tuple[str, float] | None,
    reference_hashes: Sequence[str],
) -> dict[str, str]:
    """Our text chunks for a picture (every key `storyboard:*`)."""
    fields = {
        "project": project_id,
        "sentence": sentence_id,
        "revision": str(revision),
        "prompt": prompt,
        "seed": str(seed),
        "workflow": workflow_name,
        "workflow_hash": workflow_hash,
        "lora": "" if lora is None else f"{lora[0]}@{lora[1]}",
        "references": ",".join(reference_hashes),
    }
    return {PREFIX + key: value for key, value in fields.items()}


def comfyui_text(graph: Mapping[str, Any]) -> dict[str, str]:
    """The uncompressed chunk ComfyUI writes and reads: `prompt` = the API graph as JSON."""
    # json.dumps' defaults, as ComfyUI's SaveImage: ASCII only, so a tEXt chunk holds it.
    return {COMFYUI_PROMPT: json.dumps(graph)}


def recorded_hash(text: Mapping[str, str]) -> str | None:
    """The graph hash a picture records, under the current key or the old one."""
    return text.get(HASH_KEY) or text.get(LEGACY_HASH_KEY)


def executed_graph(text: Mapping[str, str]) -> dict[str, Any] | None:
    """The API graph under `prompt`, or None (an old picture kept our text prompt there)."""
    try:
        graph = json.loads(text.get(COMFYUI_PROMPT, ""))
    except ValueError:
        return None
    return graph if isinstance(graph, dict) else None

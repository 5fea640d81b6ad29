"""What changes in a graph per frame size and per image job (pure functions).

`render_size` is the size injection asks the sampler for; `graph_for_job` is the copy of an
injected graph that one job (one attempt) queues.
"""

from __future__ import annotations

import copy
from typing import Any

SIZE_STEP = 16  # FLUX.2 latents are made of 16x16 pixel patches


def render_size(frame_w: int, frame_h: int) -> tuple[int, int]:
    """The size to generate at for a frame: each side rounded UP to a multiple of 16.

    Rounding up (never down) means the render always covers the frame, so finishing only
    crops at most 15 pixels and never has to enlarge; the aspect stays within one
    16-pixel step of the frame's (1920x1080 -> 1920x1088). Idempotent.
    """
    if frame_w < 1 or frame_h < 1:
        raise ValueError(f"frame size {frame_w}x{frame_h} must be positive")
    return (-(-frame_w // SIZE_STEP) * SIZE_STEP, -(-frame_h // SIZE_STEP) * SIZE_STEP)


def graph_for_job(graph: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The graph to queue for one image job: output nodes write under a per-job prefix.

    ComfyUI serves an identical graph from its cache, outputs included: it names the file it
    wrote before, even when that file has since been deleted from its output folder (then
    /view answers 404). A prefix of its own per job (every attempt is a job) makes only the
    SaveImage nodes run again -- the sampler's result may still come from the cache, which
    is the same picture for the same seed -- so a deleted server file never costs an
    attempt. The recorded hash remains the hash of what was drawn.
    """
    queued = copy.deepcopy(graph)
    for node in queued.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if node.get("class_type") == "SaveImage" and isinstance(inputs, dict):
            prefix = inputs.get("filename_prefix")
            if isinstance(prefix, str):
                inputs["filename_prefix"] = f"{prefix}-{job_id}"
    return queued

"""Workflow files: loading, finding parameter slots, injection, hashing, validation, and
the render size and per-job graph edits.

Pure library code over API-format ComfyUI graphs; see workflows/README.md for the file
format and the `storyboard:<slot>` title markers.
"""

from storyboard.workflow.graph import Graph
from storyboard.workflow.hashing import canonical_json, graph_hash
from storyboard.workflow.inject import (
    SEED_MAX,
    Injected,
    LoraChoice,
    RenderParams,
    crop_class_for,
    inject,
)
from storyboard.workflow.load import Workflow, load_workflow, parse_workflow
from storyboard.workflow.per_job import graph_for_job, render_size
from storyboard.workflow.slots import Slots, find_slots
from storyboard.workflow.validate import graph_problems, validate_graph_against

__all__ = [
    "SEED_MAX",
    "Graph",
    "Injected",
    "LoraChoice",
    "RenderParams",
    "Slots",
    "Workflow",
    "canonical_json",
    "crop_class_for",
    "find_slots",
    "graph_for_job",
    "graph_hash",
    "graph_problems",
    "inject",
    "load_workflow",
    "parse_workflow",
    "render_size",
    "validate_graph_against",
]

"""The plan of a batch, before it queues anything: which lanes can render each sentence, and
which sentences keep a model warm together.

Eligibility (a mixed farm, two lanes or more): the workflow with a sentence's LoRA, checked
against each lane's /object_info (read once per batch by its session) with
`comfyui.inventory.missing`, the names ComfyUI would refuse there. A sentence no lane can
render fails before any queueing, with a line naming what it needs and what each lane has.
References do not count: they are uploaded to whichever lane renders.

Affinity key: (LoRA name, strength, reference paths), chosen as `pipeline.resolve` would,
read in a few store calls per project rather than one per sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from storyboard.comfyui.inventory import missing, offers
from storyboard.comfyui.objectinfo import ObjectInfo
from storyboard.errors import StoryboardError, WorkflowError
from storyboard.pipeline import choose_lora
from storyboard.store import Character, Project, Sentence
from storyboard.workflow import LoraChoice, RenderParams, Workflow, inject


class Storyboard(Protocol):
    """What the plan reads of the store (storyboard.store.Store): a few calls per project."""

    def get_project(self, project_id: str) -> Project: ...
    def characters(self, project_id: str) -> list[Character]: ...
    def sentences(self, project_id: str) -> list[Sentence]: ...


# Each lane of the batch by name, in the configured order, with how to read its server's
# /object_info (its session reads it once per batch).
Inventories = Mapping[str, Callable[[], ObjectInfo]]


@dataclass(frozen=True)
class Planned:
    key: Hashable
    lanes: frozenset[str]
    refused: str | None = None  # no lane can render it: why, naming each lane


def _key(lora: LoraChoice | None, references: Sequence[str]) -> Hashable:
    return (
        None if lora is None else lora.name,
        None if lora is None else lora.strength,
        tuple(references),
    )


def plan(
    lanes: Inventories,
    store: Storyboard,
    workflow: Workflow,
    frame: tuple[int, int],
    targets: Sequence[tuple[str, str, Sequence[str] | None]],
) -> list[Planned]:
    """One Planned per (project, sentence, reference paths) of `targets`, in order."""
    loras: dict[tuple[str, str], LoraChoice | None] = {}
    references: dict[tuple[str, str], tuple[str, ...]] = {}
    for project_id in dict.fromkeys(p for p, _, _ in targets):
        project = store.get_project(project_id)
        characters = {c.id: c for c in store.characters(project_id)}
        for sentence in store.sentences(project_id):
            cast = [characters[i] for i in sentence.character_ids if i in characters]
            loras[(project_id, sentence.id)] = choose_lora(sentence, cast, project)
            images = (str(path) for c in cast for path in c.reference_images)
            references[(project_id, sentence.id)] = tuple(dict.fromkeys(images))
    checked: dict[LoraChoice | None, Planned] = {}
    planned = []
    for project_id, sentence_id, paths in targets:
        lora = loras.get((project_id, sentence_id))
        if lora not in checked:
            checked[lora] = _eligible(lanes, workflow, frame, lora)
        found = checked[lora]
        refs = (
            tuple(dict.fromkeys(paths))
            if paths is not None
            else references.get((project_id, sentence_id), ())
        )
        planned.append(Planned(_key(lora, refs), found.lanes, found.refused))
    return planned


def _eligible(
    lanes: Inventories, workflow: Workflow, frame: tuple[int, int], lora: LoraChoice | None
) -> Planned:
    if len(lanes) == 1:  # nothing to choose: prepare validates against the one lane
        return Planned(None, frozenset(lanes))
    width, height = frame
    try:
        graph = inject(
            workflow, RenderParams(prompt="-", width=width, height=height, seed=0, lora=lora)
        )
    except (WorkflowError, ValueError):
        # Prepare names what is wrong with the workflow itself, on whichever lane.
        return Planned(None, frozenset(lanes))
    fits: set[str] = set()
    lacks: list[str] = []
    for name, object_info in lanes.items():
        try:
            info = object_info()
        except StoryboardError as exc:
            lacks.append(f"lane {name!r}: no /object_info ({exc})")
            continue
        absent = missing(graph.graph, info)
        if not absent:
            fits.add(name)
            continue
        has = "; ".join(
            f"{kind}: {', '.join(names) or 'none'}" for kind, names in offers(info).items()
        )
        lacks.append(f"lane {name!r} lacks {', '.join(str(m) for m in absent)} (has {has})")
    refused = None
    if not fits:
        needs = "the workflow's models" if lora is None else f"LoRA {lora.name!r}"
        refused = (
            f"no lane can render it: it needs {needs}; "
            + "; ".join(lacks)
            + ". Install it on a server, or choose a LoRA a server has."
        )
    return Planned(None, frozenset(fits), refused)

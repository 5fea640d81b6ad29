"""Before a multi-lane batch queues anything: which lanes can render each sentence, and
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

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from storyboard.comfyui.inventory import missing, offers
from storyboard.errors import StoryboardError, WorkflowError
from storyboard.pipeline import choose_lora
from storyboard.workflow import LoraChoice, RenderParams, inject
from tasks.context import BatchContext


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
    lanes: Sequence[BatchContext], targets: Sequence[tuple[str, str, Sequence[str] | None]]
) -> list[Planned]:
    """One Planned per (project, sentence, reference paths) of `targets`, in order."""
    first = lanes[0]
    loras: dict[tuple[str, str], LoraChoice | None] = {}
    references: dict[tuple[str, str], tuple[str, ...]] = {}
    for project_id in dict.fromkeys(p for p, _, _ in targets):
        project = first.store.get_project(project_id)
        characters = {c.id: c for c in first.store.characters(project_id)}
        for sentence in first.store.sentences(project_id):
            cast = [characters[i] for i in sentence.character_ids if i in characters]
            loras[(project_id, sentence.id)] = choose_lora(sentence, cast, project)
            images = (str(path) for c in cast for path in c.reference_images)
            references[(project_id, sentence.id)] = tuple(dict.fromkeys(images))
    checked: dict[LoraChoice | None, Planned] = {}
    planned = []
    for project_id, sentence_id, paths in targets:
        lora = loras.get((project_id, sentence_id))
        if lora not in checked:
            checked[lora] = _eligible(lanes, lora)
        found = checked[lora]
        refs = (
            tuple(dict.fromkeys(paths))
            if paths is not None
            else references.get((project_id, sentence_id), ())
        )
        planned.append(Planned(_key(lora, refs), found.lanes, found.refused))
    return planned


def _eligible(lanes: Sequence[BatchContext], lora: LoraChoice | None) -> Planned:
    first = lanes[0]
    if len(lanes) == 1:  # nothing to choose: prepare validates against it, as it always did
        return Planned(None, frozenset([first.lane.name]))
    width, height = first.config.frame
    try:
        graph = inject(
            first.workflow, RenderParams(prompt="-", width=width, height=height, seed=0, lora=lora)
        )
    except (WorkflowError, ValueError):
        # Prepare names what is wrong with the workflow itself, on whichever lane.
        return Planned(None, frozenset(ctx.lane.name for ctx in lanes))
    fits: set[str] = set()
    lacks: list[str] = []
    for ctx in lanes:
        try:
            info = ctx.session.object_info()
        except StoryboardError as exc:
            lacks.append(f"lane {ctx.lane.name!r}: no /object_info ({exc})")
            continue
        absent = missing(graph.graph, info)
        if not absent:
            fits.add(ctx.lane.name)
            continue
        has = "; ".join(
            f"{kind}: {', '.join(names) or 'none'}" for kind, names in offers(info).items()
        )
        lacks.append(
            f"lane {ctx.lane.name!r} lacks {', '.join(str(m) for m in absent)} (has {has})"
        )
    refused = None
    if not fits:
        needs = "the workflow's models" if lora is None else f"LoRA {lora.name!r}"
        refused = (
            f"no lane can render it: it needs {needs}; "
            + "; ".join(lacks)
            + ". Install it on a server, or choose a LoRA a server has."
        )
    return Planned(None, frozenset(fits), refused)

"""Pydantic models of the store's rows, and of the rows an import may carry.

Paths held by the store (character reference images, image files) are
relative to the project's directory, `data/projects/{project}/`, so a data
directory can be moved or copied without rewriting the table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from storyboard.ids import validate_id

SentenceStatus = Literal["pending", "generating", "completed", "failed"]
# `released`: given back unfinished (its run ended, its lane went away); no attempt spent.
JobStatus = Literal["running", "completed", "failed", "released"]
SENTENCE_STATUSES: tuple[SentenceStatus, ...] = ("pending", "generating", "completed", "failed")
# `sentences.position` is a 32-bit INTEGER column.
POSITION_LIMIT = 2**31

# Fields of a sentence the picture depends on: changing one bumps the image revision.
IMAGE_INPUTS = (
    "image_prompt",
    "negative_prompt",
    "character_ids",
    "lora_name",
    "lora_strength",
    "seed",
)


def _as_utc(value: datetime) -> datetime:
    # DuckDB TIMESTAMP columns hold naive UTC; hand out aware datetimes only.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _list_from_text(value: Any) -> Any:
    # CSV cells and some JSON exports carry lists as text: '["a", "b"]' or 'a;b'.
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except RecursionError:
                # Not a ValueError, so pydantic would let it escape as a traceback.
                raise ValueError("the list is nested too deeply; give a flat list") from None
        return [part.strip() for part in text.split(";") if part.strip()]
    return value


def _empty_to_none(value: Any) -> Any:
    # An empty CSV cell means "not set", not an empty string.
    return None if isinstance(value, str) and value.strip() == "" else value


def _relative_path(value: str) -> str:
    if "\x00" in value:
        # No file system accepts it; refused here rather than when a render opens the file.
        raise ValueError("a reference image path may not contain a NUL character; remove it")
    path = PurePosixPath(value.replace("\\", "/"))
    if not value or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise ValueError(
            f"reference image {value!r} must be a relative path inside the project directory"
        )
    return path.as_posix()


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must describe the picture; it is empty or only whitespace")
    return value


def _id(what: str) -> AfterValidator:
    return AfterValidator(lambda value: validate_id(value, what))


ProjectId = Annotated[str, _id("project id")]
SentenceId = Annotated[str, _id("sentence id")]
CharacterId = Annotated[str, _id("character id")]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
OptionalText = Annotated[str | None, BeforeValidator(_empty_to_none)]
LoraStrength = Annotated[float, Field(ge=-10.0, le=10.0)]
OptionalStrength = Annotated[LoraStrength | None, BeforeValidator(_empty_to_none)]
OptionalSeed = Annotated[
    Annotated[int, Field(ge=0, lt=2**63)] | None, BeforeValidator(_empty_to_none)
]
CharacterIds = Annotated[list[CharacterId], BeforeValidator(_list_from_text)]
ReferenceImages = Annotated[
    list[Annotated[str, AfterValidator(_relative_path)]], BeforeValidator(_list_from_text)
]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Project(_Row):
    id: ProjectId
    name: str = Field(min_length=1)
    lora_name: OptionalText = None
    lora_strength: LoraStrength = 1.0


class Character(_Row):
    id: CharacterId
    project_id: ProjectId
    name: str = Field(min_length=1)
    reference_images: ReferenceImages = Field(default_factory=list)
    lora_name: OptionalText = None
    lora_strength: OptionalStrength = None


class SentenceInput(_Row):
    """The authored part of a sentence: what an import or an edit may set."""

    id: SentenceId
    project_id: ProjectId
    position: int = Field(ge=0, lt=POSITION_LIMIT)
    text: str
    image_prompt: Annotated[str, AfterValidator(_not_blank)]
    negative_prompt: OptionalText = None
    character_ids: CharacterIds = Field(default_factory=list)
    lora_name: OptionalText = None
    lora_strength: OptionalStrength = None
    seed: OptionalSeed = None


class Sentence(SentenceInput):
    image_file: str | None = None
    image_dirty: bool = True
    status: SentenceStatus = "pending"
    last_error: str | None = None
    image_revision: int = 1
    created_at: UtcDatetime
    updated_at: UtcDatetime
    # The draft picture and the revision it was drawn from (storyboard render --draft).
    draft_file: str | None = None
    draft_revision: int | None = None

    @property
    def draft_stale(self) -> bool:
        """Whether a draft pass draws this sentence: no draft yet, or one of an older prompt
        or seed."""
        return self.draft_file is None or self.draft_revision != self.image_revision


class ImageJob(_Row):
    id: str
    project_id: ProjectId
    sentence_id: SentenceId
    status: JobStatus
    attempt: int
    prompt_id: str | None = None
    run_id: str
    started_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    duration_s: float | None = None  # the whole attempt, claim to close
    queue_s: float | None = None  # waiting in the server's queue
    render_s: float | None = None  # the prompt's own execution on the server
    seed: int | None = None
    workflow_hash: str | None = None
    result_file: str | None = None
    error: str | None = None
    revision: int
    draft: bool = False  # a draft (storyboard render --draft), not the sentence's picture
    lane: str | None = None  # the GPU lane it ran on (None: not recorded, before lanes were)


class RunLease(_Row):
    """A run's heartbeat: who it is, when it last said it was alive, and when it ended
    (released its claims); storyboard.run_lock."""

    run_id: str
    host: str
    pid: int
    renewed_at: UtcDatetime
    ended_at: UtcDatetime | None = None


class RenderInputs(_Row):
    """Everything a sentence's picture depends on, read in one transaction, so the revision
    always matches the prompt, characters and LoRAs it came with."""

    sentence: Sentence
    project: Project
    characters: list[Character]  # the sentence's, in its order


class ImportResult(_Row):
    kind: str
    inserted: int
    updated: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated

"""What a batch renders and what it reports: one `Target` per sentence in, one `Outcome` row
per sentence out.

The builders are pure: the caller hands them the attempts it counted for the sentence (the
context forgets them as they are read, so each sentence is reported once), and a batch and an
on-demand render build the same rows from the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from storyboard.pipeline import Stored, error_text
from storyboard.store import ImageJob, RenderInputs

NOT_ATTEMPTED: Literal["not attempted"] = "not attempted"

Status = Literal[
    "completed", "cached", "stale", "failed", "skipped", "not attempted", "valid", "invalid"
]

SKIPPED_ERROR = "another run is rendering it or has just made it"


@dataclass(frozen=True)
class Target:
    """One sentence, as the lane feed, the queue and the group claims pass it around."""

    project_id: str
    sentence_id: str
    reference_paths: Sequence[str] | None = None
    # Read with the batch's list (Store.dirty_render_inputs): no store call per prepare.
    inputs: RenderInputs | None = None
    # This run's first attempt, once claimed (a lane claims a group and leaves the rest of
    # it in the queue, for whichever lane takes them next).
    job: ImageJob | None = None


@dataclass(frozen=True)
class Outcome:
    """One row of the batch table."""

    project_id: str
    sentence_id: str
    status: Status
    seconds: float | None = None  # render time: the prompt's own execution on ComfyUI
    queue_s: float | None = None  # its wait in ComfyUI's queue, when it waited
    attempts: int = 0
    seed: int | None = None
    image_file: str | None = None
    error: str | None = None


def failed(target: Target, exc: BaseException, attempts: int, status: Status = "failed") -> Outcome:
    """The sentence's own failure (`invalid` in a dry run)."""
    return Outcome(
        target.project_id, target.sentence_id, status, attempts=attempts, error=error_text(exc)
    )


def skipped(target: Target, attempts: int) -> Outcome:
    """Another run holds it or has just made it: nothing to do here."""
    return Outcome(
        target.project_id, target.sentence_id, "skipped", attempts=attempts, error=SKIPPED_ERROR
    )


def not_attempted(target: Target, comfyui_url: str, down: BaseException) -> Outcome:
    """Never sent: the lane that would have rendered it is gone. It stays dirty."""
    return Outcome(
        target.project_id,
        target.sentence_id,
        NOT_ATTEMPTED,
        error=f"not submitted: ComfyUI at {comfyui_url} is unreachable ({down})",
    )


def stopped(target: Target) -> Outcome:
    """Under way when its run stopped (a signal, a cancel): its job released, no attempt
    spent. It stays dirty."""
    return Outcome(
        target.project_id,
        target.sentence_id,
        NOT_ATTEMPTED,
        error="stopped with the run: released, still dirty",
    )


def stored(target: Target, result: Stored, attempts: int) -> Outcome:
    """A picture recorded: made, reused from the render cache, or stale (edited meanwhile)."""
    return Outcome(
        target.project_id,
        target.sentence_id,
        ("cached" if result.cached else "completed") if result.current else "stale",
        seconds=round(result.render_s, 3),
        queue_s=None if result.queue_s is None else round(result.queue_s, 3),
        attempts=attempts,
        seed=result.seed,
        image_file=result.image_file,
    )

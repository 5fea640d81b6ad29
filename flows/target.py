"""What a batch renders: one sentence, as the lane feed, the queue and the group claims pass it
around (flows.lane_feed, flows.lane_farm, flows.lane_groups)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storyboard.store import ImageJob, RenderInputs


@dataclass(frozen=True)
class Target:
    project_id: str
    sentence_id: str
    reference_paths: Sequence[str] | None = None
    # Read with the batch's list (Store.dirty_render_inputs): no store call per prepare.
    inputs: RenderInputs | None = None
    # This run's first attempt, once claimed (a lane claims a group and leaves the rest of
    # it in the queue, for whichever lane takes them next).
    job: ImageJob | None = None

"""Where an on-demand render goes: the lane with the least work ahead of it.

An on-demand render never waits for the lane a batch holds; it goes to the front of the
queue of whichever server has the least work ahead (running plus pending prompts), so it
waits for at most the one render executing there. Ties go to the fewest pending (a running
prompt is nearer its end), then to the configured order. Asking the servers is
storyboard.lane_choice's part; this is the choice among their answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storyboard.lane import Lane


@dataclass(frozen=True)
class LaneLoad:
    """What one lane's server has queued when asked."""

    lane: Lane
    running: int
    pending: int

    @property
    def ahead(self) -> int:
        return self.running + self.pending


def least_loaded(loads: Sequence[LaneLoad]) -> LaneLoad:
    """The lane with the least work ahead; ties: fewest pending, then configured order."""
    if not loads:
        raise ValueError("least_loaded needs at least one lane")
    return min(loads, key=lambda load: (load.ahead, load.pending))

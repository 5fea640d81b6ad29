"""Records of the simulated server: queue entries, runs and the tallies tests read."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueueItem:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    interrupt: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def client_id(self) -> str | None:
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) and value else None

    def entry(self) -> list[Any]:
        """The queue/history row ComfyUI shows: [number, id, graph, extra_data, outputs]."""
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


@dataclass(frozen=True)
class RunRecord:
    """When one prompt occupied the (single, simulated) GPU, on the monotonic clock.

    status: success | error | interrupted | lost (the server restarted under it).
    """

    prompt_id: str
    start: float
    end: float
    status: str


def busy_seconds(runs: list[RunRecord]) -> float:
    return sum(run.end - run.start for run in runs)


def max_concurrency(runs: list[RunRecord]) -> int:
    """The most runs ever in progress at one instant (a real ComfyUI: 1)."""
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    best = current = 0
    for _, delta in events:  # ends sort before starts at the same instant
        current += delta
        best = max(best, current)
    return best


def now_ms() -> int:
    return int(time.time() * 1000)

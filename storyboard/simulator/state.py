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
    load_s, lora_s, reference_s: the part of end - start charged for warming up
    (SimulatorConfig.load_s and friends); switch_s is the LoRA and reference part.
    """

    prompt_id: str
    start: float
    end: float
    status: str
    load_s: float = 0.0
    lora_s: float = 0.0
    reference_s: float = 0.0

    @property
    def switch_s(self) -> float:
        return self.lora_s + self.reference_s


def busy_seconds(runs: list[RunRecord]) -> float:
    return sum(run.end - run.start for run in runs)


def switch_seconds(runs: list[RunRecord]) -> float:
    return sum(run.switch_s for run in runs)


def max_concurrency(runs: list[RunRecord]) -> int:
    """The most runs ever in progress at one instant (a real ComfyUI: 1)."""
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    best = current = 0
    for _, delta in events:  # ends sort before starts at the same instant
        current += delta
        best = max(best, current)
    return best


class InFlight:
    """Prompts queued or running now, and the most there ever were (all, and per client id)."""

    def __init__(self) -> None:
        self._clients: dict[str, str | None] = {}  # prompt id -> client id
        self._peak: dict[str | None, int] = {}

    def add(self, prompt_id: str, client_id: str | None) -> None:
        self._clients[prompt_id] = client_id
        self._note()

    def discard(self, prompt_ids: list[str]) -> None:
        for prompt_id in prompt_ids:
            self._clients.pop(prompt_id, None)
        self._note()

    def clear(self) -> None:
        self._clients.clear()

    def peak(self, client_id: str | None = None) -> int:
        return self._peak.get(client_id, 0)

    def _note(self) -> None:
        counts: dict[str | None, int] = {None: len(self._clients)}
        for client_id in self._clients.values():
            if client_id is not None:
                counts[client_id] = counts.get(client_id, 0) + 1
        for key, count in counts.items():
            self._peak[key] = max(self._peak.get(key, 0), count)


def now_ms() -> int:
    return int(time.time() * 1000)

"""The simulated server as its routes (`app`) and a prompt's run (`execution`) see it.

`simulator.ComfyUISimulator` builds both and satisfies both protocols (mypy
checks it where it hands itself over), so it imports `app` and `execution` and
neither imports it back: simulator -> app, execution -> host, one way, with no
import deferred to break a circle.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from storyboard.simulator.config import SimulatorConfig
from storyboard.simulator.faults import Faults
from storyboard.simulator.files import FileStore
from storyboard.simulator.hub import Hub
from storyboard.simulator.submission import Accepted
from storyboard.simulator.warm import WarmState


class RunHost(Protocol):
    """What one prompt's run reads and leaves behind: files, sockets, faults, caches."""

    config: SimulatorConfig
    files: FileStore
    hub: Hub
    faults: Faults
    cache_keys: set[str]
    ui_cache: dict[str, dict[str, Any]]
    warm: WarmState | None

    def object_info(self) -> dict[str, Any]: ...


class ServerHost(RunHost, Protocol):
    """What the HTTP and WebSocket routes ask of the server: its queue, history and jobs."""

    seen_headers: deque[dict[str, str]]

    async def enqueue(self, accepted: Accepted) -> dict[str, Any]: ...

    async def delete_pending(self, prompt_ids: list[str] | None) -> None: ...

    async def cancel(self, prompt_id: str) -> bool: ...

    def interrupt(self, prompt_id: str | None = None) -> bool: ...

    def queue_remaining(self) -> int: ...

    def queue(self) -> dict[str, Any]: ...

    def history(self, prompt_id: str) -> dict[str, Any]: ...

    def all_history(self, max_items: int | None) -> dict[str, Any]: ...

    def job(self, prompt_id: str) -> dict[str, Any] | None: ...

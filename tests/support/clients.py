"""Shared pieces of the client tests: the captured graph, a simulator, a client on it."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from storyboard.comfyui import ComfyUIClient
from tests.support.paths import FIXTURES

_GRAPH: dict[str, Any] = json.loads((FIXTURES / "sd_tiny_api.json").read_text())


def graph(seed: int = 42, *, prefix: str = "sd_tiny", lora: str | None = None) -> dict[str, Any]:
    """The captured SD graph with its seed and output prefix changed."""
    g = copy.deepcopy(_GRAPH)
    g["3"]["inputs"]["seed"] = seed
    g["9"]["inputs"]["filename_prefix"] = prefix
    if lora is not None:
        g["10"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["4", 0], "lora_name": lora, "strength_model": 0.8},
        }
        g["3"]["inputs"]["model"] = ["10", 0]
    return g


def fast_backoff(attempt: int) -> float:
    return 0.01


class RequestLog:
    """Every request the client sent, in order, via httpx's own event hook."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.lines.append(f"{request.method} {request.url.path}")

    def count(self, line: str) -> int:
        return self.lines.count(line)


async def client_for(
    url: str, log: RequestLog | None = None, **options: Any
) -> AsyncIterator[ComfyUIClient]:
    hooks = {"request": [log]} if log is not None else {}
    async with httpx.AsyncClient(event_hooks=hooks) as http:
        settings: dict[str, Any] = {
            "backoff": fast_backoff,
            "request_timeout_s": 5.0,
            "poll_interval_s": 0.05,
            "reconnect_wait_s": 10.0,
        }
        settings.update(options)
        async with ComfyUIClient(url, http=http, **settings) as client:
            yield client

"""Talking to the simulator with plain httpx + websockets, as any ComfyUI client would."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from storyboard.simulator import ComfyUISimulator

WAIT_S = 10.0


@asynccontextmanager
async def socket(sim: ComfyUISimulator, client_id: str) -> AsyncIterator[ClientConnection]:
    """A WebSocket for `client_id`, its status greeting already read."""
    async with connect(f"{sim.ws_url}?clientId={client_id}", max_size=None) as ws:
        greeting = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert greeting["type"] == "status" and greeting["data"]["sid"] == client_id
        yield ws


async def submit(
    http: httpx.AsyncClient, graph: dict[str, Any], client_id: str | None, **extra: Any
) -> str:
    prompt_id = str(uuid.uuid4())
    body: dict[str, Any] = {"prompt": graph, "prompt_id": prompt_id, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    response = await http.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    return prompt_id


async def messages_until_done(ws: ClientConnection, prompt_id: str) -> list[dict[str, Any]]:
    """Every JSON message up to and including `executing` with node null for `prompt_id`."""
    seen: list[dict[str, Any]] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), WAIT_S)
        message = json.loads(raw)
        seen.append(message)
        data = message["data"]
        if (
            message["type"] == "executing"
            and data.get("node") is None
            and data.get("prompt_id") == prompt_id
        ):
            return seen


async def wait_for(predicate: Any, what: str) -> None:
    """Poll a condition of the simulator's state (bounded; no timing is asserted)."""
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]

"""Request headers for a ComfyUI behind an authenticating proxy: sent everywhere, shown nowhere.

The proxy is an ASGI gate in front of the real simulator app, on a real loopback socket: a
request or WebSocket handshake without the right `Authorization` is refused, as a proxy would.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storyboard.comfyui import ComfyUIClient
from storyboard.errors import ComfyUIError
from storyboard.lane import LaneSession, lanes_from_settings
from storyboard.settings import load_settings
from storyboard.simulator import SimulatorConfig
from storyboard.simulator.server import Listener
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import fast_backoff, graph

SECRET = "tok-3c1f9a7e-never-print-me"
WAIT_S = 10.0

Scope = dict[str, Any]


class TokenGate:
    """Lets through only requests and handshakes carrying `Authorization: Bearer <token>`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.seen: list[tuple[str, str, bool]] = []  # (scope type, path, let through)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        allowed = dict(scope["headers"]).get(b"authorization") == self.expected
        self.seen.append((scope["type"], scope["path"], allowed))
        if allowed:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
        else:  # closing before accepting: the handshake gets HTTP 403
            await send({"type": "websocket.close", "code": 1008})


@asynccontextmanager
async def gated(token: str) -> AsyncIterator[tuple[str, TokenGate, ComfyUISimulator]]:
    sim = ComfyUISimulator(SimulatorConfig(steps=2, step_s=0.005))
    gate = TokenGate(sim.app, token)
    listener = Listener(gate, "127.0.0.1", 0)
    await sim.start()
    await listener.start()
    sim.url = f"http://127.0.0.1:{listener.port}"
    try:
        yield sim.url, gate, sim
    finally:
        await listener.close()
        await sim.aclose()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _client(url: str, token: str, **options: Any) -> ComfyUIClient:
    return ComfyUIClient(
        url,
        headers={"Authorization": f"Bearer {token}"},
        backoff=fast_backoff,
        request_timeout_s=5,
        poll_interval_s=0.05,
        **options,
    )


async def test_headers_go_with_every_request_and_the_websocket_handshake(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # websockets logs handshake headers at DEBUG
    async with gated(SECRET) as (url, gate, _), _client(url, SECRET) as comfy:
        await comfy.wait_until_up(WAIT_S)
        assert "LoraLoaderModelOnly" in await comfy.object_info()
        await comfy.upload_image(_png())
        result = await comfy.run(graph(seed=7), timeout_s=WAIT_S)
        assert (await comfy.download(result.images[0], max_bytes=1 << 20)).startswith(b"\x89PNG")
    paths = {(kind, path) for kind, path, _ in gate.seen}
    assert ("websocket", "/ws") in paths
    for path in ("/system_stats", "/object_info", "/upload/image", "/prompt", "/view"):
        assert ("http", path) in paths
    assert all(allowed for _, _, allowed in gate.seen), gate.seen
    assert "> Authorization: ***" in caplog.text  # the handshake was logged, masked
    assert SECRET not in caplog.text


async def test_a_refused_token_fails_with_messages_that_do_not_show_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + SECRET
    async with gated(SECRET) as (url, gate, _), _client(url, wrong) as comfy:
        with pytest.raises(ComfyUIError) as http_refused:  # a 401 page is retried until then
            await comfy.wait_until_up(0.3)
        with pytest.raises(ComfyUIError) as ws_refused:
            await comfy.run(graph(seed=8), timeout_s=WAIT_S)
    assert "401" in str(http_refused.value) and "403" in str(ws_refused.value)
    assert gate.seen and not any(allowed for _, _, allowed in gate.seen)
    for text in (str(http_refused.value), str(ws_refused.value), caplog.text):
        assert SECRET not in text, text


async def test_an_unreachable_server_error_does_not_show_the_headers() -> None:
    async with gated(SECRET) as (url, _, _):
        pass  # closed again: nothing listens on its port now
    async with _client(url, SECRET, reconnect_wait_s=0) as comfy:
        with pytest.raises(ComfyUIError) as caught:
            await comfy.run(graph(seed=9), timeout_s=1)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


async def test_each_lane_sends_its_own_headers_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    async with gated("alpha-" + SECRET) as (url_a, gate_a, _), gated("beta") as (url_b, gate_b, _):
        settings = load_settings(
            comfyui_urls=f"a={url_a},b={url_b}",
            comfyui_headers=(
                '{"*": {"Authorization": "Bearer beta"},'
                f' "a": {{"authorization": "Bearer alpha-{SECRET}"}}}}'
            ),
        )
        lanes = lanes_from_settings(settings)
        assert SECRET not in repr(settings) and SECRET not in repr(lanes)

        def render(lane_index: int) -> str:
            with LaneSession(lanes[lane_index], request_timeout_s=5) as session:
                future = session.start_run(graph(seed=10 + lane_index), timeout_s=WAIT_S)
                return future.result(WAIT_S).prompt_id

        done = await asyncio.gather(asyncio.to_thread(render, 0), asyncio.to_thread(render, 1))
    assert all(done)
    for gate in (gate_a, gate_b):
        assert ("websocket", "/ws", True) in gate.seen
        assert all(allowed for _, _, allowed in gate.seen), gate.seen

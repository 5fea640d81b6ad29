"""Headers the simulator saw, and the authenticating proxy it can stand behind."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from storyboard.simulator import SimulatorConfig, serve_simulator
from tests.support.captures import sd_tiny

TOKEN = {"Authorization": "Bearer s3cret"}


async def test_headers_of_requests_and_handshakes_are_kept_newest_last_and_bounded() -> None:
    async with serve_simulator(SimulatorConfig(steps=1, step_s=0.0, header_log=3)) as sim:
        async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
            await http.get("/system_stats", headers={"X-Lane": "gpu-0"})
            async with connect(f"{sim.ws_url}?clientId=c", additional_headers=TOKEN) as ws:
                await ws.recv()
            assert sim.seen_headers[0]["x-lane"] == "gpu-0"
            assert sim.seen_headers[-1]["authorization"] == "Bearer s3cret"
            assert sim.seen_headers[-1]["upgrade"].lower() == "websocket"
            for _ in range(3):
                await http.get("/queue")
        assert len(sim.seen_headers) == 3
        assert all("x-lane" not in seen for seen in sim.seen_headers)
    async with (
        serve_simulator(SimulatorConfig(header_log=0)) as quiet,
        httpx.AsyncClient(base_url=quiet.url, timeout=5) as http,
    ):
        assert (await http.get("/system_stats")).is_success
        assert list(quiet.seen_headers) == []


async def test_a_required_header_missing_or_wrong_gets_401_before_comfyui() -> None:
    config = SimulatorConfig(
        steps=1, step_s=0.0, require_headers={"authorization": "Bearer s3cret"}
    )
    async with serve_simulator(config) as sim:
        async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
            body = {"prompt": sd_tiny()}
            assert (await http.post("/prompt", json=body)).status_code == 401
            wrong = {"Authorization": "Bearer guess"}
            denied = await http.get("/system_stats", headers=wrong)
            assert denied.status_code == 401 and "Bearer" in denied.headers["www-authenticate"]
            assert sim.submissions == {}  # the proxy stopped it; ComfyUI never saw it
            assert sim.seen_headers[-1]["authorization"] == "Bearer guess"
            accepted = await http.post("/prompt", json=body, headers=TOKEN)
            assert accepted.status_code == 200
            # Header names are case-insensitive, as in HTTP.
            assert (await http.get("/queue", headers={"AUTHORIZATION": "Bearer s3cret"})).is_success
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{sim.ws_url}?clientId=c"):
                pass
        assert refused.value.response.status_code == 401
        async with connect(f"{sim.ws_url}?clientId=c", additional_headers=TOKEN) as ws:
            assert "status" in await ws.recv()

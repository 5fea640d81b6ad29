"""Health checks and broken servers: refused connections, 5xx, HTML, answers off protocol.

HTTP answers a ComfyUI never gives (HTML, 5xx) come from httpx's own injected
transport (`httpx.MockTransport`), with the simulator's real WebSocket beside it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from storyboard.comfyui import ComfyUIClient
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIProtocolError,
    ComfyUIServerError,
    is_retryable,
)
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import RequestLog, client_for, fast_backoff, graph


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=1, step_s=0.0), port=0) as server:
        yield server


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_wait_until_up_names_the_url_and_the_setting() -> None:
    url = _closed_port_url()
    async with ComfyUIClient(url, backoff=fast_backoff, request_timeout_s=1) as comfy:
        with pytest.raises(ComfyUIConnectionError) as caught:
            await comfy.wait_until_up(0.2)
    message = str(caught.value)
    assert url in message
    assert "STORYBOARD_COMFYUI_URL" in message
    assert isinstance(caught.value.__cause__, ComfyUIConnectionError)
    assert is_retryable(caught.value)


async def test_wait_until_up_rides_out_a_short_outage(sim: ComfyUISimulator) -> None:
    sim.faults.refuse_connections(0.3)
    async for comfy in client_for(sim.url):
        stats = await comfy.wait_until_up(10)
    assert "system" in stats


async def test_run_against_a_refused_socket_is_a_connection_error() -> None:
    async with ComfyUIClient(_closed_port_url(), request_timeout_s=1) as comfy:
        with pytest.raises(ComfyUIConnectionError, match="WebSocket"):
            await comfy.run(graph(), timeout_s=5)


async def test_object_info_is_read_once_and_models_are_listed(sim: ComfyUISimulator) -> None:
    log = RequestLog()
    async for comfy in client_for(sim.url, log):
        info = await comfy.object_info()
        assert await comfy.object_info() is info
        assert "KSampler" in info
        assert "storyboard_noir_v1.safetensors" in await comfy.models("loras")
        with pytest.raises(ComfyUIProtocolError, match="no model folder 'nope'"):
            await comfy.models("nope")
    assert log.count("GET /object_info") == 1


def _answering(status: int, body: bytes, content_type: str) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.MockTransport(handle)


async def _run_with_http(sim: ComfyUISimulator, transport: httpx.MockTransport) -> None:
    async with (
        httpx.AsyncClient(transport=transport) as http,
        ComfyUIClient(sim.url, http=http, backoff=fast_backoff) as comfy,
    ):
        await comfy.run(graph(), timeout_s=5)


@pytest.mark.parametrize(
    ("transport", "error", "pattern"),
    [
        (
            _answering(502, b"<html><h1>502 Bad Gateway</h1></html>", "text/html"),
            ComfyUIServerError,
            r"POST /prompt answered 502: '<html><h1>502 Bad Gateway</h1></html>'",
        ),
        (
            _answering(200, b"<!doctype html><title>Login</title>", "text/html"),
            ComfyUIProtocolError,
            r"not JSON \(text/html\).*is the URL a ComfyUI server",
        ),
        (
            _answering(400, b"<html>Bad Request</html>", "text/html"),
            ComfyUIProtocolError,
            r"POST /prompt answered 400 with a body that is not JSON",
        ),
        (
            _answering(200, b'{"number": 3}', "application/json"),
            ComfyUIProtocolError,
            r"POST /prompt answered 200 without a prompt_id",
        ),
    ],
    ids=["502-html", "200-html", "400-html", "200-no-prompt-id"],
)
async def test_off_protocol_answers_to_submit_are_clear_errors(
    sim: ComfyUISimulator,
    transport: httpx.MockTransport,
    error: type[Exception],
    pattern: str,
) -> None:
    with pytest.raises(error, match=pattern) as caught:
        await _run_with_http(sim, transport)
    assert is_retryable(caught.value)


async def test_network_failure_is_a_connection_error_raised_from_httpx(
    sim: ComfyUISimulator,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ComfyUIConnectionError, match=r"POST .*/prompt failed") as caught:
        await _run_with_http(sim, httpx.MockTransport(refuse))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_a_lost_answer_to_submit_does_not_submit_twice(sim: ComfyUISimulator) -> None:
    # The POST reaches the server, but its answer is lost: the client finds the prompt
    # in the queue by the id it chose and follows it instead of failing or resubmitting.
    inner = httpx.AsyncHTTPTransport()

    async def lose_prompt_answer(request: httpx.Request) -> httpx.Response:
        response = await inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/prompt":
            await response.aread()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(lose_prompt_answer)) as http,
        ComfyUIClient(sim.url, http=http, backoff=fast_backoff) as comfy,
    ):
        result = await comfy.run(graph(seed=77), timeout_s=5)
    await inner.aclose()
    assert len(result.images) == 1
    assert sim.submissions[result.prompt_id] == 1

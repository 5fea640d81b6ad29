"""The simulator's listener: a stopped one, like a killed ComfyUI, leaves no connection open."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from storyboard.simulator.server import Listener


def end_of(client: socket.socket) -> str:
    """How the connection ends for a client that reads all it was sent (an answer the server
    still gave, maybe): "eof" or "reset" once the server's socket is gone, "still open" when
    nothing ends it within 5 s."""
    client.settimeout(5)
    try:
        while client.recv(1 << 20):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "still open"
    return "eof"


async def test_a_stopped_listener_closes_a_connection_whose_client_stopped_reading() -> None:
    # A client that stops reading leaves the server's bytes unsent; uvicorn's shutdown then
    # closes that transport, which waits for them for ever: the socket outlived the server
    # (a ResourceWarning in a later test) until the listener aborted every connection.
    async def flood(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            await ws.send_bytes(b"x" * (1 << 20))

    listener = Listener(Starlette(routes=[WebSocketRoute("/ws", flood)]), "127.0.0.1", 0)
    await listener.start()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        client.connect(("127.0.0.1", listener.port))
        key = base64.b64encode(os.urandom(16)).decode()
        client.sendall(
            "GET /ws HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        server = listener._server
        assert server is not None
        deadline = time.monotonic() + 10
        while not any(
            c.transport.get_write_buffer_size() > 0 for c in server.server_state.connections
        ):
            assert time.monotonic() < deadline, "the server never filled its send buffer"
            await asyncio.sleep(0.01)

        await listener.close()

        assert end_of(client) in ("eof", "reset"), "the server's socket outlived its listener"
    finally:
        client.close()


async def test_a_stopped_listener_closes_a_connection_uvicorn_no_longer_counts() -> None:
    # Once, a connection outside uvicorn's own count outlived a stop, open with its reading
    # paused; the listener remembers every connection it was handed, counted or not.
    async def hang(request: Request) -> Response:
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    listener = Listener(Starlette(routes=[Route("/hang", hang)]), "127.0.0.1", 0)
    await listener.start()
    client = socket.socket()
    try:
        client.connect(("127.0.0.1", listener.port))
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: sim\r\n\r\n")
        server = listener._server
        assert server is not None
        deadline = time.monotonic() + 10
        while not server.server_state.connections:
            assert time.monotonic() < deadline, "the server never took the connection"
            await asyncio.sleep(0.01)
        server.server_state.connections.clear()  # uvicorn loses count of it

        await listener.close()

        assert end_of(client) in ("eof", "reset"), "the server's socket outlived its listener"
    finally:
        client.close()

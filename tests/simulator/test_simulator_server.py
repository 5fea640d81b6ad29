"""The simulator's listener: a stopped one, like a killed ComfyUI, leaves no connection open."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import time
import warnings

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
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


async def test_a_connection_accepted_as_the_listener_stops_listening_is_closed_with_it() -> None:
    # asyncio accepts a connection in one loop turn and makes its transport in the next; a
    # server closed in between fails that transport's making and leaves its socket open
    # (CPython 3.11), which once failed a later test with a ResourceWarning.
    listener = Listener(Starlette(routes=[]), "127.0.0.1", 0)
    await listener.start()
    client = socket.socket()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.connect(("127.0.0.1", listener.port))
            await asyncio.sleep(0)  # the loop sees the listening socket readable...
            await asyncio.sleep(0)  # ...and accepts: the transport is made on the next turn
            listener.refuse(3600)
            await listener.close()
            gc.collect()

        assert end_of(client) in ("eof", "reset"), "the accepted socket outlived its listener"
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    finally:
        client.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_a_refusal_that_comes_while_an_outage_restarts_the_server_is_kept() -> None:
    listener = Listener(Starlette(routes=[]), "127.0.0.1", 0)
    await listener.start()
    try:
        listener.refuse(0.01)
        deadline = time.monotonic() + 10
        # uvicorn fills `servers` as it starts listening
        while listener._server is None or getattr(listener._server, "servers", None):
            assert time.monotonic() < deadline, "the outage never restarted the server"
            await asyncio.sleep(0)
        listener.refuse(3600)  # the restarting server has nothing listening to close yet

        while not await asyncio.to_thread(refused, listener.port):
            assert time.monotonic() < deadline, "the second refusal was lost"
            await asyncio.sleep(0.01)
    finally:
        await listener.close()

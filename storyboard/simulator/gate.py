"""The door in front of the routes: what headers arrive, and an authenticating proxy.

Every HTTP request and WebSocket handshake has its headers noted (names in lower
case, the newest last, at most `SimulatorConfig.header_log`), so a test can check
that a client's auth header arrived. With `SimulatorConfig.require_headers` set,
one without all of those headers (value exact) gets 401 as a proxy would answer
it, the handshake too, and never reaches ComfyUI.
"""

from __future__ import annotations

from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from storyboard.simulator.config import SimulatorConfig

_DENIED = b"401 Authorization Required: the proxy in front of this ComfyUI wants other headers"


class HeaderGate:
    def __init__(self, app: ASGIApp, config: SimulatorConfig, seen: deque[dict[str, str]]) -> None:
        self.app = app
        self.seen = seen
        required = config.require_headers or {}
        self.required = {name.lower(): value for name, value in required.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.seen.maxlen:
            self.seen.append(headers)
        if all(headers.get(name) == value for name, value in self.required.items()):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _deny(send, "http.response")
        elif "websocket.http.response" in scope.get("extensions", {}):
            # The handshake gets the same HTTP 401 (not a bare 403 close) so a client
            # can tell "wrong credentials" from "no such endpoint".
            await receive()  # websocket.connect
            await _deny(send, "websocket.http.response")
        else:
            await receive()
            await send({"type": "websocket.close", "code": 1008})


async def _deny(send: Send, prefix: str) -> None:
    await send({
        "type": f"{prefix}.start", "status": 401,
        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer"),
                    (b"content-length", str(len(_DENIED)).encode())],
    })  # fmt: skip
    await send({"type": f"{prefix}.body", "body": _DENIED})

"""The open WebSockets, by client id, and who gets which message.

Like ComfyUI, a client id has one registered socket: a new connection with the
same `clientId` takes over and the older one, left open, receives nothing more.
Feature flags the client declared belong to its registered socket.

Not modelled: ComfyUI's handler appears (from its source, not captured) to drop
the client id's registration when any of its sockets closes, so a late close of
a replaced socket would silence the newer one; here that close changes nothing.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

# A socket can close between the lookup and the send; starlette says so in any of these.
_GONE = (RuntimeError, OSError, WebSocketDisconnect)

# ComfyUI 0.25's answer to a client's `feature_flags` message (captured), also GET /features.
SERVER_FEATURES: dict[str, Any] = {
    "supports_preview_metadata": True,
    "max_upload_size": 104857600,
    "extension": {"manager": {"supports_v4": True}},
    "node_replacements": True,
    "assets": False,
}


class Hub:
    def __init__(self) -> None:
        self._newest: dict[str, WebSocket] = {}
        self._flags: dict[str, dict[str, Any]] = {}
        # Every open socket, replaced ones too: faults and restarts close them all.
        self._open: dict[str, list[WebSocket]] = {}

    def add(self, client_id: str, socket: WebSocket) -> None:
        self._newest[client_id] = socket
        self._flags[client_id] = {}
        self._open.setdefault(client_id, []).append(socket)

    def remove(self, client_id: str, socket: WebSocket) -> None:
        sockets = self._open.get(client_id, [])
        if socket in sockets:
            sockets.remove(socket)
        if not sockets:
            self._open.pop(client_id, None)
        if self._newest.get(client_id) is socket:
            del self._newest[client_id]
            self._flags.pop(client_id, None)

    def declare(self, client_id: str, socket: WebSocket, flags: dict[str, Any]) -> None:
        """Record the feature flags a client sent on `socket` (ignored for a replaced one)."""
        if self._newest.get(client_id) is socket:
            self._flags[client_id] = dict(flags)

    def wants_metadata(self, client_id: str) -> bool:
        return self._flags.get(client_id, {}).get("supports_preview_metadata") is True

    def count(self, client_id: str | None = None) -> int:
        """Open sockets (registered or replaced), of one client id or all."""
        if client_id is None:
            return sum(len(s) for s in self._open.values())
        return len(self._open.get(client_id, []))

    async def send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        """To the registered socket of `client_id`; to nobody when it is None."""
        if client_id is not None:
            await self._deliver(client_id, json.dumps({"type": kind, "data": data}))

    async def send_bytes(self, client_id: str | None, data: bytes) -> None:
        socket = self._newest.get(client_id or "")
        if socket is None:
            return
        try:
            await socket.send_bytes(data)
        except _GONE:
            self.remove(client_id or "", socket)

    async def broadcast(self, kind: str, data: dict[str, Any]) -> None:
        text = json.dumps({"type": kind, "data": data})
        for client_id in list(self._newest):
            await self._deliver(client_id, text)

    def clients(self) -> list[str]:
        return list(self._newest)

    async def close_client(self, client_id: str | None, code: int = 1011) -> None:
        for socket in list(self._open.get(client_id or "", [])):
            await self._close(socket, code)

    async def close_all(self, code: int = 1012) -> None:
        for sockets in list(self._open.values()):
            for socket in list(sockets):
                await self._close(socket, code)

    async def _deliver(self, client_id: str, text: str) -> None:
        socket = self._newest.get(client_id)
        if socket is None:
            return
        try:
            await socket.send_text(text)
        except _GONE:
            # Gone between the lookup and the send: its handler unregisters it too.
            self.remove(client_id, socket)

    @staticmethod
    async def _close(socket: WebSocket, code: int) -> None:
        if socket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError):
                await socket.close(code=code)

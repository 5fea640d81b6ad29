"""The open WebSockets, by client id, and who gets which message."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketState


class Hub:
    def __init__(self) -> None:
        self._sockets: dict[str, list[WebSocket]] = {}

    def add(self, client_id: str, socket: WebSocket) -> None:
        self._sockets.setdefault(client_id, []).append(socket)

    def remove(self, client_id: str, socket: WebSocket) -> None:
        sockets = self._sockets.get(client_id, [])
        if socket in sockets:
            sockets.remove(socket)
        if not sockets:
            self._sockets.pop(client_id, None)

    def count(self, client_id: str | None = None) -> int:
        if client_id is None:
            return sum(len(s) for s in self._sockets.values())
        return len(self._sockets.get(client_id, []))

    async def send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        """To every socket of `client_id` now connected; to nobody when it is None."""
        if client_id is not None:
            await self._deliver(client_id, json.dumps({"type": kind, "data": data}))

    async def send_bytes(self, client_id: str | None, data: bytes) -> None:
        for socket in list(self._sockets.get(client_id or "", [])):
            try:
                await socket.send_bytes(data)
            except (RuntimeError, OSError):
                self.remove(client_id or "", socket)

    async def broadcast(self, kind: str, data: dict[str, Any]) -> None:
        text = json.dumps({"type": kind, "data": data})
        for client_id in list(self._sockets):
            await self._deliver(client_id, text)

    async def close_client(self, client_id: str | None, code: int = 1011) -> None:
        for socket in list(self._sockets.get(client_id or "", [])):
            await self._close(socket, code)

    async def close_all(self, code: int = 1012) -> None:
        for sockets in list(self._sockets.values()):
            for socket in list(sockets):
                await self._close(socket, code)

    async def _deliver(self, client_id: str, text: str) -> None:
        for socket in list(self._sockets.get(client_id, [])):
            try:
                await socket.send_text(text)
            except (RuntimeError, OSError):
                # Gone between the lookup and the send: its handler unregisters it.
                self.remove(client_id, socket)

    @staticmethod
    async def _close(socket: WebSocket, code: int) -> None:
        if socket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError):
                await socket.close(code=code)

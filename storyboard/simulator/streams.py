"""Hostile response bodies for the trickle and endless faults (see `faults`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.responses import StreamingResponse

# Big enough that a client without a byte cap grows fast, small enough to stay
# gentle on a shared CPU while it streams.
_ENDLESS_CHUNK = b" " * 65536
_ENDLESS_PAUSE_S = 0.002


def trickle_response(path: Path, media_type: str, byte_every_s: float) -> StreamingResponse:
    """`path` announced in full (Content-Length) but sent one byte every `byte_every_s`."""
    data = path.read_bytes()

    async def body() -> AsyncIterator[bytes]:
        for index in range(len(data)):
            yield data[index : index + 1]
            await asyncio.sleep(byte_every_s)

    return StreamingResponse(
        body(), media_type=media_type, headers={"Content-Length": str(len(data))}
    )


def endless_json_response() -> StreamingResponse:
    """A 200 application/json body that never ends; nothing of it is kept here."""

    async def body() -> AsyncIterator[bytes]:
        yield b"["
        while True:
            yield _ENDLESS_CHUNK
            await asyncio.sleep(_ENDLESS_PAUSE_S)

    return StreamingResponse(body(), media_type="application/json")

"""Typed progress events, and the parsing of ComfyUI's WebSocket frames into them.

Public events (handed to a run's `on_event` callback) are Queued, Started, Cached,
NodeExecuting, Progress, Finished and Preview. Parsing also yields four internal
signals the client acts on: QueueStatus, ExecutionFailed, ExecutionInterrupted and
RunEnded. Message types this module does not know (progress_state, executed,
feature_flags, third-party extensions) parse to None: a newer server may add types
at any time, and none of them is needed to follow a run.

A successful run finishes at `execution_success`: the real server sends the
`executing` frame with `node: null` after writing history and its queue status,
sometimes half a second later. That frame is RunEnded, a finish only for a run
whose `execution_success` was missed; after an error or interrupt the failure
frame came first.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from storyboard.errors import ComfyUIProtocolError


@dataclass(frozen=True, slots=True)
class Queued:
    prompt_id: str
    position: int | None  # prompts ahead of this one (0 = it runs next or now)


@dataclass(frozen=True, slots=True)
class Started:
    prompt_id: str


@dataclass(frozen=True, slots=True)
class Cached:
    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeExecuting:
    prompt_id: str
    node: str


@dataclass(frozen=True, slots=True)
class Progress:
    prompt_id: str
    node: str | None
    value: int
    max: int


@dataclass(frozen=True, slots=True)
class Finished:
    prompt_id: str


@dataclass(frozen=True, slots=True, repr=False)
class Preview:
    prompt_id: str | None  # binary type 1 frames do not say which prompt they belong to
    image_format: str  # "jpeg", "png", ... (from the frame header or its metadata)
    data: bytes

    def __repr__(self) -> str:
        return f"Preview(prompt_id={self.prompt_id!r}, {self.image_format}, {len(self.data)} bytes)"


Event = Queued | Started | Cached | NodeExecuting | Progress | Finished | Preview


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue_remaining: int


@dataclass(frozen=True, slots=True)
class ExecutionFailed:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str | None
    exception_message: str


@dataclass(frozen=True, slots=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None


@dataclass(frozen=True, slots=True)
class RunEnded:
    """`executing` with `node: null`: the server is done with the prompt, whatever the outcome."""

    prompt_id: str


Message = Event | QueueStatus | ExecutionFailed | ExecutionInterrupted | RunEnded

_IMAGE_FORMATS = {1: "jpeg", 2: "png"}
_PREVIEW_IMAGE = 1
_PREVIEW_IMAGE_WITH_METADATA = 4


def parse_text_frame(text: str | bytes) -> Message | None:
    """Parse one JSON frame; None for message types a run does not need."""
    try:
        frame = json.loads(text)
    except ValueError as exc:
        raise ComfyUIProtocolError(f"WebSocket text frame is not JSON: {text[:80]!r}") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("data"), dict):
        raise ComfyUIProtocolError(f"WebSocket frame without a data object: {str(frame)[:80]}")
    return message_from(str(frame.get("type")), frame["data"])


def message_from(kind: str, data: dict[str, Any]) -> Message | None:
    """Build a message from a frame's type and data (also used for /history messages)."""
    if kind == "status":
        remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
        return QueueStatus(remaining) if isinstance(remaining, int) else None
    prompt_id = data.get("prompt_id")
    if not isinstance(prompt_id, str):
        return None
    if kind == "execution_start":
        return Started(prompt_id)
    if kind == "execution_cached":
        return Cached(prompt_id, tuple(str(node) for node in data.get("nodes") or ()))
    if kind == "executing":
        node = data.get("node")
        return RunEnded(prompt_id) if node is None else NodeExecuting(prompt_id, str(node))
    if kind == "execution_success":
        return Finished(prompt_id)
    if kind == "progress":
        node = data.get("node")
        return Progress(
            prompt_id, None if node is None else str(node), int(data["value"]), int(data["max"])
        )
    if kind == "execution_error":
        return ExecutionFailed(
            prompt_id,
            _optional_str(data.get("node_id")),
            _optional_str(data.get("node_type")),
            _optional_str(data.get("exception_type")),
            str(data.get("exception_message", "")).strip(),
        )
    if kind == "execution_interrupted":
        return ExecutionInterrupted(
            prompt_id, _optional_str(data.get("node_id")), _optional_str(data.get("node_type"))
        )
    return None


def parse_binary_frame(frame: bytes) -> Preview | None:
    """Decode a binary preview frame (event type 1 or 4); None for other binary events."""
    if len(frame) < 8:
        raise ComfyUIProtocolError(f"binary WebSocket frame too short ({len(frame)} bytes)")
    (event,) = struct.unpack(">I", frame[:4])
    if event == _PREVIEW_IMAGE:
        (image_format,) = struct.unpack(">I", frame[4:8])
        return Preview(None, _IMAGE_FORMATS.get(image_format, f"unknown-{image_format}"), frame[8:])
    if event == _PREVIEW_IMAGE_WITH_METADATA:
        (length,) = struct.unpack(">I", frame[4:8])
        if 8 + length > len(frame):
            raise ComfyUIProtocolError("preview metadata length runs past the end of the frame")
        try:
            metadata = json.loads(frame[8 : 8 + length])
        except ValueError as exc:
            raise ComfyUIProtocolError("preview metadata is not JSON") from exc
        if not isinstance(metadata, dict):
            raise ComfyUIProtocolError("preview metadata is not a JSON object")
        mime = str(metadata.get("image_type", "image/unknown"))
        return Preview(
            _optional_str(metadata.get("prompt_id")),
            mime.removeprefix("image/"),
            frame[8 + length :],
        )
    return None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)

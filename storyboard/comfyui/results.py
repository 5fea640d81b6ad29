"""Results of a run, read from a `/history/{prompt_id}` entry.

History is the authoritative record: it is what we read after the WebSocket
said "finished", and what we poll when the WebSocket dropped, so both paths
build the result (or the error) the same way. The client adds the two measured
durations (`queue_s`, `render_s`) with `timed`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from storyboard.errors import (
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ComfyUIProtocolError,
)


@dataclass(frozen=True, slots=True)
class OutputImage:
    filename: str
    subfolder: str
    type: str
    node_id: str = ""  # the graph node that saved it ("": not known)


@dataclass(frozen=True, slots=True)
class RunResult:
    prompt_id: str
    images: list[OutputImage]
    cached: bool  # every output node was served from ComfyUI's cache (no new file)
    started_at: datetime | None  # server clock (history timestamps)
    finished_at: datetime | None
    # Measured on the client's event-loop clock: submission -> execution start (waiting
    # behind other prompts, and a restart's downtime) and execution start -> finish.
    queue_s: float = 0.0
    render_s: float = 0.0

    def image_of(self, nodes: Collection[str]) -> OutputImage | None:
        """The first image saved by one of `nodes` (a graph's SaveImage nodes), or by any node
        when `nodes` is empty; None when there is none. Another node can save an output too
        (a custom node's debug save), and history lists nodes in no promised order."""
        return next((i for i in self.images if not nodes or i.node_id in nodes), None)


def timed(
    result: RunResult, *, submitted_at: float, started_at: float | None, finished_at: float
) -> RunResult:
    """`result` with queue and render seconds; without a seen start, history's times split it."""
    total = max(finished_at - submitted_at, 0.0)
    if started_at is not None:
        render = max(finished_at - started_at, 0.0)
    elif result.started_at is not None and result.finished_at is not None:
        render = min(max((result.finished_at - result.started_at).total_seconds(), 0.0), total)
    else:
        render = total  # nothing tells the two apart: never under-report render time
    return replace(result, queue_s=max(total - render, 0.0), render_s=render)


def result_from_history(prompt_id: str, entry: Any) -> RunResult:
    """The run's result, or the execution/interrupt error the entry records."""
    if not isinstance(entry, dict):
        raise ComfyUIProtocolError(f"history entry of prompt {prompt_id} is not an object")
    status = _object(entry.get("status"))
    messages = _messages(status.get("messages"))
    if status.get("status_str") == "error":
        raise _failure(prompt_id, messages)
    outputs = _object(entry.get("outputs"))
    images = [
        OutputImage(
            str(item["filename"]), str(item.get("subfolder") or ""), str(item["type"]), str(node)
        )
        for node, output in outputs.items()
        if isinstance(output, dict)
        for item in output.get("images") or ()
        if isinstance(item, dict) and "filename" in item and item.get("type") == "output"
    ]
    cached_nodes = {str(node) for node in messages.get("execution_cached", {}).get("nodes") or ()}
    return RunResult(
        prompt_id=prompt_id,
        images=images,
        cached=bool(outputs) and set(outputs) <= cached_nodes,
        started_at=_timestamp(messages.get("execution_start")),
        finished_at=_timestamp(messages.get("execution_success")),
    )


def _failure(prompt_id: str, messages: dict[str, dict[str, Any]]) -> Exception:
    error = messages.get("execution_error")
    if error is not None:
        return execution_error(
            prompt_id,
            node_id=_str_or_none(error.get("node_id")),
            node_type=_str_or_none(error.get("node_type")),
            exception_type=_str_or_none(error.get("exception_type")),
            exception_message=str(error.get("exception_message", "")).strip(),
        )
    interrupted = messages.get("execution_interrupted")
    if interrupted is not None:
        return interrupted_error(
            prompt_id,
            _str_or_none(interrupted.get("node_id")),
            _str_or_none(interrupted.get("node_type")),
        )
    return execution_error(
        prompt_id,
        node_id=None,
        node_type=None,
        exception_type=None,
        exception_message="history reports an error without details",
    )


def execution_error(
    prompt_id: str,
    *,
    node_id: str | None,
    node_type: str | None,
    exception_type: str | None,
    exception_message: str,
) -> ComfyUIExecutionError:
    kind = f"{exception_type}: " if exception_type else ""
    return ComfyUIExecutionError(
        f"ComfyUI failed prompt {prompt_id} in node {node_id} ({node_type}): "
        f"{kind}{exception_message}",
        node_id=node_id,
        node_type=node_type,
        exception_message=exception_message,
        exception_type=exception_type,
    )


def interrupted_error(
    prompt_id: str, node_id: str | None, node_type: str | None
) -> ComfyUIInterruptedError:
    return ComfyUIInterruptedError(
        f"prompt {prompt_id} was interrupted on the server in node {node_id} ({node_type})"
    )


def _messages(raw: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
            found[str(item[0])] = item[1]
    return found


def _timestamp(data: dict[str, Any] | None) -> datetime | None:
    value = (data or {}).get("timestamp")
    if not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)

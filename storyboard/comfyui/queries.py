"""What the server knows about one prompt (queue, history, jobs), and stopping it.

These are the questions the client asks when the WebSocket cannot tell it: after
a drop or a restart (is our prompt still queued, running, finished, or lost?),
before resubmitting (never submit twice what the server already has), and when a
run is given up (interrupt it when running, delete it when pending).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storyboard.comfyui.stream import queue_snapshot
from storyboard.comfyui.transport import MAX_JSON_BYTES, MAX_QUEUE_BYTES, Http
from storyboard.errors import ComfyUIError


def answer_cap(base: int, sent: int) -> int:
    """The size cap of an answer that carries graphs we sent (`sent` bytes of them): `base`
    for everything else, plus twice ours (a history entry and a queue entry each hold the
    graph beside what the server adds), so a large prompt we were allowed to send never
    makes the answers about it too large to read."""
    return base + 2 * sent


class Prompts:
    def __init__(self, http: Http, sent_bytes: Callable[[str | None], int] | None = None) -> None:
        """`sent_bytes(prompt_id)`: the size of the graph we posted as `prompt_id`, or of every
        graph of ours still followed with None (EventStream.sent_bytes); the answers' caps
        grow by it."""
        self._http = http
        self._sent_bytes = sent_bytes or (lambda _prompt_id: 0)

    async def _queue(self) -> Any:
        cap = answer_cap(MAX_QUEUE_BYTES, self._sent_bytes(None))
        return await self._http.get_json("/queue", max_bytes=cap)

    async def snapshot(self) -> tuple[list[str], list[str]]:
        """Prompt ids running and pending, in queue order."""
        return queue_snapshot(await self._queue())

    async def history_entry(self, prompt_id: str) -> Any:
        cap = answer_cap(MAX_JSON_BYTES, self._sent_bytes(prompt_id))
        body = await self._http.get_json(f"/history/{prompt_id}", max_bytes=cap)
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def job_state(self, prompt_id: str) -> str | None:
        """ "pending", "running" or None (not queued), from /api/jobs or else /queue."""
        cap = answer_cap(MAX_JSON_BYTES, self._sent_bytes(prompt_id))  # a job shows its graph
        job = await self._http.get_json(f"/api/jobs/{prompt_id}", allow_404=True, max_bytes=cap)
        if isinstance(job, dict) and job.get("status") in ("pending", "in_progress"):
            return "pending" if job["status"] == "pending" else "running"
        # 404 (an older server without /api/jobs, or an unknown id) or a finished job.
        running, pending = queue_snapshot(await self._queue())
        return "running" if prompt_id in running else "pending" if prompt_id in pending else None

    async def is_known(self, prompt_id: str) -> bool:
        try:
            running, pending = queue_snapshot(await self._queue())
            return (
                prompt_id in running
                or prompt_id in pending
                or bool(await self.history_entry(prompt_id))
            )
        except ComfyUIError:
            return False

    async def position(self, prompt_id: str) -> int | None:
        try:
            running, pending = queue_snapshot(await self._queue())
        except ComfyUIError:
            return None  # the position is informative only; the run goes on without it
        order = running + pending
        return order.index(prompt_id) if prompt_id in order else None

    async def cancel(self, prompt_id: str) -> str:
        """Stop a prompt: "interrupted" (was running), "removed" (was pending) or "not queued"."""
        outcome = "not queued"
        # Two rounds: a pending prompt can start between reading the queue and deleting it.
        for _ in range(2):
            running, pending = queue_snapshot(await self._queue())
            if prompt_id in running:
                await self._http.post_json("/interrupt", {"prompt_id": prompt_id})
                return "interrupted"
            if prompt_id not in pending:
                return outcome
            await self._http.post_json("/queue", {"delete": [prompt_id]})
            outcome = "removed"
        return outcome

    async def abandon(self, client_id: str) -> list[str]:
        """Take every prompt client `client_id` posted off the server: the pending ones
        deleted first (so none starts when the running one stops), then the running one
        interrupted. Two rounds: one may start between reading the queue and deleting it."""
        stopped: list[str] = []
        for _ in range(2):
            running, pending = queue_snapshot(await self._queue(), client_id)
            if pending:
                await self._http.post_json("/queue", {"delete": pending})
            for prompt_id in running:
                await self._http.post_json("/interrupt", {"prompt_id": prompt_id})
            stopped += [p for p in running + pending if p not in stopped]
            if not pending:
                break
        return stopped

    async def remove_pending(self, prompt_ids: list[str]) -> list[str]:
        """Delete those of `prompt_ids` that are pending, in one request; the ones deleted."""
        _, pending = queue_snapshot(await self._queue())
        doomed = [prompt_id for prompt_id in pending if prompt_id in set(prompt_ids)]
        if doomed:
            await self._http.post_json("/queue", {"delete": doomed})
        return doomed

"""The async ComfyUI client: submit, follow, stop, download, upload, health.

Time budget of a run (`timeout_s`): it counts from the moment the prompt starts
executing, so a prompt that waits behind others in ComfyUI's queue is not
charged for the wait. The wait itself is bounded separately by `queue_timeout_s`
(default: the same value as `timeout_s`), counted from submission. Whichever
budget runs out, the prompt is stopped on the server (interrupted when running,
deleted from the queue when pending) before ComfyUITimeoutError is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import TracebackType
from typing import Any, Self

import httpx
from websockets.asyncio.client import connect as ws_connect

from storyboard.comfyui.events import (
    ExecutionFailed,
    ExecutionInterrupted,
    Finished,
    Queued,
    QueueStatus,
)
from storyboard.comfyui.follower import Follower, OnEvent, emit
from storyboard.comfyui.rejection import validation_error
from storyboard.comfyui.results import (
    OutputImage,
    RunResult,
    execution_error,
    interrupted_error,
    result_from_history,
)
from storyboard.comfyui.stream import (
    Backoff,
    Connect,
    Dropped,
    EventStream,
    queue_snapshot,
)
from storyboard.comfyui.transport import Http, check_output_image, check_subfolder
from storyboard.comfyui.uploads import content_name, mime_type
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIServerError,
    ComfyUITimeoutError,
)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def default_backoff(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, ... capped at 5 s."""
    return float(min(0.25 * 2 ** (attempt - 1), 5.0))


class ComfyUIClient:
    def __init__(
        self,
        base_url: str,
        ws_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        connect: Connect = ws_connect,
        backoff: Backoff = default_backoff,
        request_timeout_s: float = 30.0,
        reconnect_attempts: int = 5,
        history_attempts: int = 8,
        poll_interval_s: float = 1.0,
        previews: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if ws_url is None:
            ws_url = "ws" + self.base_url.removeprefix("http") + "/ws"
        self.client_id = uuid.uuid4().hex
        self._owns_http = http is None
        self._http = Http(
            http if http is not None else httpx.AsyncClient(),
            self.base_url,
            request_timeout_s,
        )
        self._stream = EventStream(
            ws_url.rstrip("/"),
            self.client_id,
            connect=connect,
            backoff=backoff,
            reconnect_attempts=reconnect_attempts,
            open_timeout_s=request_timeout_s,
            max_message_bytes=max_message_bytes,
            previews=previews,
        )
        self._backoff = backoff
        self._reconnect_attempts = reconnect_attempts
        self._history_attempts = history_attempts
        self._poll_interval_s = poll_interval_s
        self._previews = previews
        self._object_info: dict[str, Any] | None = None
        self._uploaded: dict[tuple[str, str], str] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()
        if self._owns_http:
            await self._http.client.aclose()

    @property
    def websocket_connections(self) -> int:
        """Sockets opened so far; more than one means the client reconnected."""
        return self._stream.connections

    # -- health and server facts ------------------------------------------------------

    async def wait_until_up(self, max_wait_s: float) -> dict[str, Any]:
        """Poll `GET /system_stats` with backoff until it answers; return its body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            try:
                stats = await self._http.get_json(
                    "/system_stats", timeout_s=max(min(self._http.timeout_s, remaining), 0.5)
                )
                if isinstance(stats, dict):
                    return stats
                last: ComfyUIError = ComfyUIProtocolError("GET /system_stats is not an object")
            except (ComfyUIConnectionError, ComfyUIServerError, ComfyUIProtocolError) as exc:
                last = exc
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ComfyUIConnectionError(
                    f"ComfyUI at {self.base_url} did not answer GET /system_stats within "
                    f"{max_wait_s:g}s ({last}); start ComfyUI or point STORYBOARD_COMFYUI_URL "
                    "(or COMFYUI_URL) at it"
                ) from last
            await asyncio.sleep(min(self._backoff(attempt), remaining))

    async def object_info(self) -> dict[str, Any]:
        """`GET /object_info`, read once per client (it is large and changes only on restart)."""
        if self._object_info is None:
            info = await self._http.get_json("/object_info")
            if not isinstance(info, dict):
                raise ComfyUIProtocolError("GET /object_info did not answer an object")
            self._object_info = info
        return self._object_info

    async def models(self, folder: str) -> list[str]:
        """File names in a model folder (`checkpoints`, `loras`, `diffusion_models`, ...)."""
        check_subfolder(folder, "model folder")
        names = await self._http.get_json(f"/models/{folder}", allow_404=True)
        if names is None:
            raise ComfyUIProtocolError(f"ComfyUI at {self.base_url} has no model folder {folder!r}")
        if not isinstance(names, list):
            raise ComfyUIProtocolError(f"GET /models/{folder} did not answer a list")
        return [str(name) for name in names]

    # -- running prompts --------------------------------------------------------------

    async def run(
        self,
        graph: dict[str, Any],
        *,
        timeout_s: float,
        queue_timeout_s: float | None = None,
        on_event: OnEvent | None = None,
    ) -> RunResult:
        """Submit an API-format graph and wait for its result."""
        prompt_id = await self.submit(graph, on_event=on_event)
        return await self.wait(
            prompt_id, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s, on_event=on_event
        )

    async def submit(self, graph: dict[str, Any], *, on_event: OnEvent | None = None) -> str:
        """Queue a graph; its messages are collected until `wait(prompt_id)` reads them."""
        await self._stream.ensure_open()  # before POST: the server never replays messages
        prompt_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        self._stream.subscribe(prompt_id, submitted_at=loop.time(), missed=False)
        try:
            accepted = await self._post_prompt(graph, prompt_id)
        except BaseException:
            self._stream.unsubscribe(prompt_id)
            raise
        if accepted != prompt_id:
            self._stream.rename(prompt_id, accepted)
        await emit(on_event, Queued(accepted, await self._queue_position(accepted)))
        return accepted

    async def wait(
        self,
        prompt_id: str,
        *,
        timeout_s: float,
        queue_timeout_s: float | None = None,
        on_event: OnEvent | None = None,
    ) -> RunResult:
        """Follow a submitted prompt to its end (also one submitted by another client)."""
        loop = asyncio.get_running_loop()
        sub = self._stream.subscription(prompt_id)
        if sub is None:  # not ours: we saw none of its messages, so poll as well
            sub = self._stream.subscribe(prompt_id, submitted_at=loop.time(), missed=True)
        queue_budget = timeout_s if queue_timeout_s is None else queue_timeout_s
        follower = Follower(
            sub,
            on_event,
            history_entry=self._history_entry,
            job_state=self._job_state,
            stream_alive=lambda: self._stream.alive,
            poll_interval_s=self._poll_interval_s,
            max_failed_polls=self._reconnect_attempts,
        )
        try:
            while True:
                if sub.started_at is None:
                    deadline, phase = sub.submitted_at + queue_budget, "queued"
                else:
                    deadline, phase = sub.started_at + timeout_s, "running"
                remaining = deadline - loop.time()
                if remaining <= 0:
                    limit = queue_budget if phase == "queued" else timeout_s
                    raise await self._timed_out(prompt_id, phase, limit)
                if sub.missed_messages and follower.poll_due(loop.time()):
                    result = await follower.poll()
                    if result is not None:
                        return result
                    continue
                if sub.missed_messages:
                    remaining = min(remaining, follower.seconds_to_poll(loop.time()))
                try:
                    message = await asyncio.wait_for(sub.queue.get(), remaining)
                except TimeoutError:
                    continue
                if isinstance(message, Dropped | QueueStatus):
                    continue  # after a drop, missed_messages is set: polling takes over
                if isinstance(message, ExecutionFailed):
                    raise execution_error(
                        prompt_id,
                        node_id=message.node_id,
                        node_type=message.node_type,
                        exception_type=message.exception_type,
                        exception_message=message.exception_message,
                    )
                if isinstance(message, ExecutionInterrupted):
                    raise interrupted_error(prompt_id, message.node_id, message.node_type)
                await follower.emit(message)
                if isinstance(message, Finished):
                    return await self._history_after_finish(prompt_id)
        except asyncio.CancelledError:
            # Whoever cancelled the wait gave up on the picture: free the GPU for the next.
            with contextlib.suppress(ComfyUIError):
                await asyncio.wait_for(self.cancel(prompt_id), self._http.timeout_s)
            raise
        finally:
            self._stream.unsubscribe(prompt_id)

    async def cancel(self, prompt_id: str) -> str:
        """Stop a prompt: "interrupted" (was running), "removed" (was pending) or "not queued"."""
        outcome = "not queued"
        # Two rounds: a pending prompt can start between reading the queue and deleting it.
        for _ in range(2):
            running, pending = queue_snapshot(await self._http.get_json("/queue"))
            if prompt_id in running:
                await self._http.post_json("/interrupt", {"prompt_id": prompt_id})
                return "interrupted"
            if prompt_id not in pending:
                return outcome
            await self._http.post_json("/queue", {"delete": [prompt_id]})
            outcome = "removed"
        return outcome

    # -- files -----------------------------------------------------------------------

    async def download(self, image: OutputImage, *, max_bytes: int) -> bytes:
        """The bytes of one output file (`GET /view`), refusing more than `max_bytes`."""
        check_output_image(image.filename, image.subfolder, image.type)
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        return await self._http.get_bytes("/view", params=params, max_bytes=max_bytes)

    async def upload_image(
        self, data: bytes, *, filename_hint: str = "ref.png", subfolder: str = "storyboard"
    ) -> str:
        """Upload a reference image under its content hash; return the LoadImage name."""
        check_subfolder(subfolder, "upload subfolder")
        name = content_name(data, what=f"reference image {filename_hint!r}")
        key = (subfolder, name)
        if key not in self._uploaded:
            body = await self._http.post_form(
                "/upload/image",
                files={"image": (name, data, mime_type(name))},
                data={"type": "input", "subfolder": subfolder, "overwrite": "false"},
            )
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                raise ComfyUIProtocolError(f"POST /upload/image answered {str(body)[:120]!r}")
            stored_in = str(body.get("subfolder") or "")
            # Use the name the server chose: it renames when other bytes hold ours.
            self._uploaded[key] = f"{stored_in}/{body['name']}" if stored_in else body["name"]
        return self._uploaded[key]

    # -- internals --------------------------------------------------------------------

    async def _post_prompt(self, graph: dict[str, Any], prompt_id: str) -> str:
        payload: dict[str, Any] = {
            "prompt": graph,
            "client_id": self.client_id,
            "prompt_id": prompt_id,
        }
        if self._previews:
            payload["extra_data"] = {"preview_method": "latent2rgb"}
        try:
            status, body = await self._http.post_for_status("/prompt", payload)
        except ComfyUIConnectionError:
            # The request may have reached the server before the answer was lost:
            # resubmitting would render the picture twice, so look for it first.
            if await self._is_known(prompt_id):
                return prompt_id
            raise
        if status == 400:
            raise validation_error(body)
        accepted = body.get("prompt_id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(accepted, str):
            raise ComfyUIProtocolError(
                f"POST /prompt answered {status} without a prompt_id: {str(body)[:200]!r}"
            )
        return accepted

    async def _is_known(self, prompt_id: str) -> bool:
        try:
            running, pending = queue_snapshot(await self._http.get_json("/queue"))
            return (
                prompt_id in running
                or prompt_id in pending
                or bool(await self._history_entry(prompt_id))
            )
        except ComfyUIError:
            return False

    async def _queue_position(self, prompt_id: str) -> int | None:
        try:
            running, pending = queue_snapshot(await self._http.get_json("/queue"))
        except ComfyUIError:
            return None  # the position is informative only; the run goes on without it
        order = running + pending
        return order.index(prompt_id) if prompt_id in order else None

    async def _history_entry(self, prompt_id: str) -> Any:
        body = await self._http.get_json(f"/history/{prompt_id}")
        return body.get(prompt_id) if isinstance(body, dict) else None

    async def _history_after_finish(self, prompt_id: str) -> RunResult:
        # The "finished" message can arrive a moment before history is written.
        for attempt in range(1, self._history_attempts + 1):
            entry = await self._history_entry(prompt_id)
            if entry:
                return result_from_history(prompt_id, entry)
            if attempt < self._history_attempts:
                await asyncio.sleep(self._backoff(attempt))
        raise ComfyUIProtocolError(
            f"prompt {prompt_id} finished but GET /history/{prompt_id} stayed empty "
            f"after {self._history_attempts} reads"
        )

    async def _job_state(self, prompt_id: str) -> str | None:
        """ "pending", "running" or None (not queued), from /api/jobs or else /queue."""
        job = await self._http.get_json(f"/api/jobs/{prompt_id}", allow_404=True)
        if isinstance(job, dict) and job.get("status") in ("pending", "in_progress"):
            return "pending" if job["status"] == "pending" else "running"
        # 404 (an older server without /api/jobs, or an unknown id) or a finished job.
        running, pending = queue_snapshot(await self._http.get_json("/queue"))
        return "running" if prompt_id in running else "pending" if prompt_id in pending else None

    async def _timed_out(self, prompt_id: str, phase: str, limit: float) -> ComfyUITimeoutError:
        try:
            outcome = await self.cancel(prompt_id)
        except ComfyUIError as exc:
            outcome = f"could not stop it: {exc}"
        what = "did not finish within" if phase == "running" else "waited in the queue for"
        return ComfyUITimeoutError(f"prompt {prompt_id} {what} {limit:g}s; {outcome}")

"""The async ComfyUI client: submit, follow, stop, download, upload, health.

Time budget of a run (`timeout_s`): it counts from the prompt's own
`execution_start` (or `/api/jobs/{id}` turning `in_progress`), so a prompt that
waits behind others in ComfyUI's queue is not charged for the wait. The wait
itself is bounded separately by `queue_timeout_s` (default 1 h), counted from
submission. Whichever budget runs out, the prompt is stopped on the server
(interrupted when running, deleted from the queue when pending) before
ComfyUITimeoutError is raised. `RunResult.queue_s` and `.render_s` report both
durations, measured on the event-loop clock.

Restarts cost no attempt: while the WebSocket reconnects (bounded by
`reconnect_wait_s` in total) no budget is judged; once the server is back, a
prompt it no longer knows (not queued, not running, not in history) is
resubmitted with the same graph inside the same `run()`/`wait()`, at most
`waiting.MAX_RESUBMITS` times; a prompt the server still knows is never submitted again.
A server that stays away past `reconnect_wait_s` fails every waiting run and
every new submit with ComfyUIUnavailableError. A cancelled wait stops its prompt
on the server within STOP_ON_CANCEL_S. Every ComfyUIError about a submitted
prompt carries its id in `exc.prompt_id`. The following itself lives in
`waiting`, the questions about one prompt in `queries`.

Request `headers` (for a server behind an authenticating proxy) go with every HTTP
request and the WebSocket handshake; no log line or error message here shows them.

Every wait here (start-up, reconnect, history after a finish) asks
`is_retryable` about a failure and sleeps the injected `backoff` between tries:
by default `storyboard.backoff.NETWORK_BACKOFF`, the library's one policy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from websockets.asyncio.client import connect as ws_connect

from storyboard.backoff import NETWORK_BACKOFF, Backoff
from storyboard.comfyui.events import Queued
from storyboard.comfyui.follower import OnEvent, emit
from storyboard.comfyui.queries import Prompts
from storyboard.comfyui.rejection import rejected_values, validation_error
from storyboard.comfyui.results import OutputImage, RunResult
from storyboard.comfyui.stream import Connect, EventStream
from storyboard.comfyui.transport import (
    MAX_OBJECT_INFO_BYTES,
    Http,
    check_output_image,
    check_subfolder,
    http_client,
)
from storyboard.comfyui.uploads import content_name, mime_type
from storyboard.comfyui.waiting import Waiter
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailableError,
    is_retryable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_QUEUE_TIMEOUT_S = 3600.0
DEFAULT_RECONNECT_WAIT_S = 180.0
# While the socket is fine a run still polls, this many poll intervals apart: a prompt
# deleted from the queue by someone would otherwise wait out the whole queue budget.
IDLE_POLL_FACTOR = 10
# A cancelled wait (Ctrl-C, SIGTERM, a closing session) spends at most this long
# stopping its prompt on the server, so shutting down never hangs on a dead server.
STOP_ON_CANCEL_S = 5.0
# A killed server refuses a request a moment before its socket's end reaches the reader.
DROP_NOTICE_S = 1.0


class ComfyUIClient:
    def __init__(
        self,
        base_url: str,
        ws_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        connect: Connect = ws_connect,
        backoff: Backoff = NETWORK_BACKOFF,
        request_timeout_s: float = 30.0,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        reconnect_wait_s: float = DEFAULT_RECONNECT_WAIT_S,
        stall_s: float | None = None,
        history_attempts: int = 8,
        poll_interval_s: float = 1.0,
        previews: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if ws_url is None:
            ws_url = "ws" + self.base_url.removeprefix("http") + "/ws"
        self.client_id = uuid.uuid4().hex
        self._owns_http = http is None
        self._http = Http(
            http if http is not None else http_client(),
            self.base_url,
            request_timeout_s,
            headers=headers,
        )
        self._stream = EventStream(
            ws_url.rstrip("/"),
            self.client_id,
            connect=connect,
            backoff=backoff,
            reconnect_wait_s=reconnect_wait_s,
            open_timeout_s=request_timeout_s,
            max_message_bytes=max_message_bytes,
            previews=previews,
            headers=headers,
        )
        self._prompts = Prompts(self._http, self._stream.sent_bytes)
        self._backoff = backoff
        self._queue_timeout_s = queue_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._waiter = Waiter(
            base_url=self.base_url,
            stream=self._stream,
            prompts=self._prompts,
            post_prompt=self._post_prompt,
            unavailable=self._unavailable,
            backoff=backoff,
            history_attempts=history_attempts,
            poll_interval_s=poll_interval_s,
            idle_poll_s=poll_interval_s * IDLE_POLL_FACTOR,
            reconnect_wait_s=reconnect_wait_s,
            stall_s=stall_s,
        )
        self._previews = previews
        self._object_info: dict[str, Any] | None = None
        self._uploaded: dict[tuple[str, str], str] = {}
        # What each of those names holds, to upload it again to a server that lost it.
        self._upload_bytes: dict[str, tuple[bytes, str, str]] = {}  # name: data, name, subfolder

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
        """Poll `GET /system_stats` with backoff until it answers; return its body.

        A failure `is_retryable` refuses (an answer over the byte cap) is raised at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            try:
                stats = await self._http.get_json(
                    "/system_stats", timeout_s=max(min(self._http.timeout_s, remaining), 0.5)
                )
                if not isinstance(stats, dict):
                    raise ComfyUIProtocolError("GET /system_stats is not an object")
                return stats
            except ComfyUIError as exc:
                if not is_retryable(exc):
                    raise
                last = exc
            attempt += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ComfyUIConnectionError(
                    f"ComfyUI at {self.base_url} did not answer GET /system_stats within "
                    f"{max_wait_s:g}s ({last}); start ComfyUI or point STORYBOARD_COMFYUI_URL "
                    "(or its entry in STORYBOARD_COMFYUI_URLS) at it"
                ) from last
            await asyncio.sleep(min(self._backoff(attempt), remaining))

    async def object_info(self) -> dict[str, Any]:
        """`GET /object_info`, read once per client (it is large and changes only on restart)."""
        if self._object_info is None:
            info = await self._http.get_json("/object_info", max_bytes=MAX_OBJECT_INFO_BYTES)
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
        front: bool = False,
    ) -> RunResult:
        """Submit an API-format graph and wait for its result (resubmitted after a restart)."""
        prompt_id = await self.submit(graph, on_event=on_event, front=front)
        return await self.wait(
            prompt_id, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s, on_event=on_event
        )

    async def submit(
        self, graph: dict[str, Any], *, on_event: OnEvent | None = None, front: bool = False
    ) -> str:
        """Queue a graph; its messages are collected until `wait(prompt_id)` reads them.

        `front`: ComfyUI queues it ahead of every pending prompt (`"front": true`), for a
        render someone waits for; the running prompt is never disturbed. A resubmission
        after a restart keeps its place at the front.
        """
        await self._open_stream()  # before POST: the server never replays messages
        prompt_id = str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        sub = self._stream.subscribe(prompt_id, submitted_at=loop.time(), missed=False)
        sub.graph = graph
        sub.front = front
        sub.sent_bytes = len(json.dumps(graph))  # ComfyUI's answers escape as json.dumps does
        try:
            accepted = await self._when_up(lambda: self._post_prompt(graph, prompt_id, front))
        except asyncio.CancelledError:
            self._stream.unsubscribe(prompt_id)
            await self._stop_quietly(prompt_id)  # the POST may have reached the server
            raise
        except BaseException:
            self._stream.unsubscribe(prompt_id)
            raise
        if accepted != prompt_id:
            self._stream.rename(prompt_id, accepted)
        try:
            await emit(on_event, Queued(accepted, await self._prompts.position(accepted)))
        except BaseException:
            self._stream.unsubscribe(accepted)
            await self._stop_quietly(accepted)  # nobody will wait for it
            raise
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
        sub = self._stream.subscription(prompt_id)
        if sub is None:  # not ours: we saw none of its messages, so poll as well
            await self._open_stream()  # drops and restarts are then noticed as for our own
            loop = asyncio.get_running_loop()
            sub = self._stream.subscribe(prompt_id, submitted_at=loop.time(), missed=True)
        queue_budget = self._queue_timeout_s if queue_timeout_s is None else queue_timeout_s
        try:
            return await self._waiter.follow(sub, timeout_s, queue_budget, on_event)
        except asyncio.CancelledError:
            # Whoever cancelled the wait gave up on the picture: free the GPU for the next.
            await self._stop_quietly(sub.prompt_id)
            raise
        except ComfyUIError as exc:
            if exc.prompt_id is None:
                exc.prompt_id = sub.prompt_id
            raise
        finally:
            self._stream.unsubscribe(sub.prompt_id)

    async def cancel(self, prompt_id: str) -> str:
        """Stop a prompt: "interrupted" (was running), "removed" (was pending) or "not queued"."""
        return await self._prompts.cancel(prompt_id)

    async def queue(self) -> tuple[list[str], list[str]]:
        """The ids of the prompts the server runs now, and of those pending in order."""
        return await self._prompts.snapshot()

    async def abandon(self, client_id: str) -> list[str]:
        """Take off the server every prompt that client `client_id` (another process's,
        killed) queued: pending ones deleted, a running one interrupted; their ids."""
        return await self._prompts.abandon(client_id)

    async def remove_pending(self) -> list[str]:
        """Delete every pending prompt this client waits for from the queue, in one request.

        Before cancelling many runs at once: otherwise the next of ours starts executing the
        moment the running one is interrupted, before its own wait gets to delete it.
        """
        removed = await self._prompts.remove_pending(self._stream.followed())
        for prompt_id in removed:
            log.info("prompt %s given up: removed on %s", prompt_id, self.base_url)
        return removed

    # -- files -----------------------------------------------------------------------

    async def download(
        self, image: OutputImage, *, max_bytes: int, preview: str | None = None
    ) -> bytes:
        """The bytes of one output file (`GET /view`), refusing more than `max_bytes`.

        A server that goes away while the file is fetched is waited for as the socket waits
        (`_when_up`: a restart keeps its output folder), so a picture already rendered costs
        no attempt. `preview` ("jpeg;90", "webp;80"): the file re-encoded by the server in
        that format and quality instead, at full size (ComfyUI's `preview` parameter); asked
        once, never waited for: a thumbnail is not worth the reconnect wait.
        """
        check_output_image(image.filename, image.subfolder, image.type)
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        if preview is not None:
            params["preview"] = preview
            return await self._http.get_bytes("/view", params=params, max_bytes=max_bytes)
        return await self._when_up(
            lambda: self._http.get_bytes("/view", params=params, max_bytes=max_bytes)
        )

    async def upload_image(
        self, data: bytes, *, filename_hint: str = "ref.png", subfolder: str = "storyboard"
    ) -> str:
        """Upload a reference image under its content hash; return the LoadImage name."""
        check_subfolder(subfolder, "upload subfolder")
        name = content_name(data, what=f"reference image {filename_hint!r}")
        key = (subfolder, name)
        if key not in self._uploaded:
            stored = await self._when_up(lambda: self._send_upload(data, name, subfolder))
            self._uploaded[key] = stored
            self._upload_bytes[stored] = (data, name, subfolder)
        return self._uploaded[key]

    async def _when_up(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` once the server is up: a restart while a sentence is prepared or posted
        costs no attempt, as one while it renders does. A refused request is sent again
        only once the socket saw the server go (then it waits as the socket does: its
        reconnect wait, then ComfyUIUnavailableError); with the socket up, the refusal is
        the answer. Only for requests that are safe to send twice: an upload under a
        content name, a prompt under the id we chose, a download."""
        while True:
            await self._open_stream()  # waits while the socket reconnects
            try:
                return await call()
            except ComfyUIConnectionError:
                if not await self._stream.notices_drop(DROP_NOTICE_S):
                    raise

    async def _send_upload(self, data: bytes, name: str, subfolder: str) -> str:
        body = await self._http.post_form(
            "/upload/image",
            files={"image": (name, data, mime_type(name))},
            data={"type": "input", "subfolder": subfolder, "overwrite": "false"},
        )
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ComfyUIProtocolError(f"POST /upload/image answered {str(body)[:120]!r}")
        stored_in = str(body.get("subfolder") or "")
        # Use the name the server chose: it renames when other bytes hold ours.
        return f"{stored_in}/{body['name']}" if stored_in else str(body["name"])

    async def _upload_again(self, names: set[str]) -> bool:
        """Upload our files of `names` once more (a server replaced or cleaned since);
        True when each came back under the same name, so the graph stays valid."""
        same = True
        for stored in sorted(names):
            data, name, subfolder = self._upload_bytes[stored]
            same = await self._send_upload(data, name, subfolder) == stored and same
        return same

    # -- internals --------------------------------------------------------------------

    async def _post_prompt(self, graph: dict[str, Any], prompt_id: str, front: bool) -> str:
        payload: dict[str, Any] = {
            "prompt": graph,
            "client_id": self.client_id,
            "prompt_id": prompt_id,
        }
        if front:
            payload["front"] = True
        if self._previews:
            payload["extra_data"] = {"preview_method": "latent2rgb"}
        status, body = await self._send_prompt(payload, prompt_id)
        if status == 400:
            # A server that lost our uploads (replaced, its input folder cleaned) rejects
            # the references it no longer has: upload them again and post once more.
            lost = rejected_values(body) & self._upload_bytes.keys()
            if not lost or not await self._upload_again(lost):
                raise validation_error(body)
            log.warning(
                "ComfyUI at %s no longer had %d reference image(s) we uploaded; uploaded again",
                self.base_url,
                len(lost),
            )
            status, body = await self._send_prompt(payload, prompt_id)
            if status == 400:
                raise validation_error(body)
        accepted = body.get("prompt_id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(accepted, str):
            raise ComfyUIProtocolError(
                f"POST /prompt answered {status} without a prompt_id: {str(body)[:200]!r}"
            )
        return accepted

    async def _send_prompt(self, payload: dict[str, Any], prompt_id: str) -> tuple[int, Any]:
        try:
            return await self._http.post_for_status("/prompt", payload)
        except ComfyUIConnectionError:
            # The request may have reached the server before the answer was lost:
            # resubmitting would render the picture twice, so look for it first.
            if await self._prompts.is_known(prompt_id):
                return 200, {"prompt_id": prompt_id}
            raise

    async def _open_stream(self) -> None:
        try:
            await self._stream.ensure_open()
        except ComfyUIConnectionError as exc:
            if self._stream.gave_up:
                raise self._unavailable() from exc
            raise

    def _unavailable(self) -> ComfyUIUnavailableError:
        return ComfyUIUnavailableError(
            f"ComfyUI at {self.base_url} stayed unreachable for more than "
            f"{self._reconnect_wait_s:g}s (STORYBOARD_RECONNECT_WAIT_S); start it again, or "
            "raise STORYBOARD_RECONNECT_WAIT_S if its restarts take longer"
        )

    async def _stop_quietly(self, prompt_id: str) -> None:
        try:
            async with asyncio.timeout(min(self._http.timeout_s, STOP_ON_CANCEL_S)):
                outcome = await self._prompts.cancel(prompt_id)
        except Exception as exc:  # best effort while being cancelled (even a closed client)
            log.warning("could not stop prompt %s on %s: %s", prompt_id, self.base_url, exc)
        else:
            log.info("prompt %s given up: %s on %s", prompt_id, outcome, self.base_url)

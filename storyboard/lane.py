"""A GPU lane: one ComfyUI server, the Prefect limit that guards it, and its open session.

A `Lane` is configuration (where the server is, which concurrency tag guards it, which request
headers it needs). Without `STORYBOARD_COMFYUI_URLS` there is one lane, "default", guarded by the
tag "gpu", the limit a one-server setup and the doctor (flows.doctor_gpu) look for; with it, one
lane per listed server, each guarded by its own tag `gpu-{name}` (a limit of 1 each) and reached
on the /ws of its own URL.

A `LaneSession` owns the one ComfyUI client (one HTTP connection pool and WebSocket) of a process
for that lane. The client is async and bound to an event loop, while Prefect runs our tasks in
worker threads, so the session runs the client on a private event-loop thread and offers blocking
calls to any thread. Per process this costs exactly one extra thread per lane, however many
sentences there are. Closing the session (or `cancel_all()`) cancels every run in flight, so
each stops its prompt on the server (removed when pending, interrupted when running) and every
waiting thread's future completes; this is what a signal handler calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from storyboard.comfyui import ComfyUIClient, Event, OutputImage, RunResult
from storyboard.comfyui.client import STOP_ON_CANCEL_S
from storyboard.errors import ComfyUIConnectionError, ComfyUIError
from storyboard.servers import SecretHeaders, websocket_url
from storyboard.settings import Settings

T = TypeVar("T")

DEFAULT_LIMIT_TAG = "gpu"
# How long closing waits for the client's own shutdown steps; with STOP_ON_CANCEL_S it
# bounds close(), so Ctrl-C ends a batch within seconds even when ComfyUI is gone.
CLOSE_WAIT_S = 3.0


@dataclass(frozen=True)
class Lane:
    """One ComfyUI server and the Prefect tag whose limit (1) keeps it to one render at a time.

    `headers` go with every HTTP request and the WebSocket handshake (an authenticating
    proxy); their values show in no repr.
    """

    name: str
    comfyui_url: str
    ws_url: str
    limit_tag: str = DEFAULT_LIMIT_TAG
    headers: SecretHeaders = field(default_factory=SecretHeaders)


def lanes_from_settings(settings: Settings) -> list[Lane]:
    """The lanes this installation renders on, one per ComfyUI server, in configured order."""
    if not settings.comfyui_urls:
        return [
            Lane(
                name="default",
                comfyui_url=settings.comfyui_url,
                ws_url=settings.websocket_url,
                limit_tag=DEFAULT_LIMIT_TAG,
                headers=settings.headers_for("default"),
            )
        ]
    return [
        Lane(
            name=server.name,
            comfyui_url=server.url,
            ws_url=websocket_url(server.url),
            limit_tag=f"{DEFAULT_LIMIT_TAG}-{server.name}",
            headers=settings.headers_for(server.name),
        )
        for server in settings.comfyui_urls
    ]


EventCallback = Callable[[Event], object]


class LaneSession:
    """Blocking access, from any thread, to one long-lived async ComfyUI client."""

    def __init__(
        self,
        lane: Lane,
        *,
        request_timeout_s: float = 30.0,
        queue_timeout_s: float = 3600.0,
        reconnect_wait_s: float = 180.0,
        stall_s: float | None = None,
    ) -> None:
        self.lane = lane
        self._stall_s = stall_s
        self._request_timeout_s = request_timeout_s
        self._queue_timeout_s = queue_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"comfyui-lane-{lane.name}", daemon=True
        )
        self._client: ComfyUIClient | None = None
        self._object_info: dict[str, Any] | None = None
        self._uploads: dict[str, str] = {}
        # Reentrant: close() may run in a signal handler on a thread that holds it.
        self._lock = threading.RLock()
        self._closed = False
        self._futures: set[Future[Any]] = set()  # every call in flight, guarded by _lock
        self._runs: set[asyncio.Task[Any]] = set()  # touched on the loop thread only

    def __enter__(self) -> LaneSession:
        self._thread.start()
        client = ComfyUIClient(
            self.lane.comfyui_url,
            self.lane.ws_url,
            request_timeout_s=self._request_timeout_s,
            queue_timeout_s=self._queue_timeout_s,
            reconnect_wait_s=self._reconnect_wait_s,
            stall_s=self._stall_s,
            headers=self.lane.headers,
        )
        try:
            self._call(client.__aenter__())
        except BaseException:
            self._stop_loop()
            raise
        self._client = client
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every run in flight on the server, then close the client; safe from any thread.

        Bounded (STOP_ON_CANCEL_S plus twice CLOSE_WAIT_S at worst) even when the server is gone:
        a signal handler calls it while worker threads block on `start_run` futures, which
        then complete with CancelledError (or ComfyUIConnectionError), never hang.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.cancel_all()
            client, self._client = self._client, None
            if client is not None and self._thread.is_alive():
                with contextlib.suppress(Exception):
                    self._on_loop(client.__aexit__(None, None, None), CLOSE_WAIT_S)
        finally:
            self._stop_loop()

    def cancel_all(self) -> None:
        """Cancel every run in flight: each removes (pending) or interrupts (running) its prompt."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._on_loop(self._cancel_runs(), STOP_ON_CANCEL_S + CLOSE_WAIT_S)

    async def _cancel_runs(self) -> None:
        runs = list(self._runs)
        if not runs:
            return
        loop = asyncio.get_running_loop()
        # One budget for all of it: a server that swallows requests must not add them up.
        deadline = loop.time() + STOP_ON_CANCEL_S
        if self._client is not None:
            with contextlib.suppress(ComfyUIError, TimeoutError):
                async with asyncio.timeout(STOP_ON_CANCEL_S):
                    await self._client.remove_pending()
        for task in runs:
            task.cancel()
        await asyncio.wait(runs, timeout=max(deadline - loop.time(), 0.5))

    async def _cancel_the_rest(self) -> None:
        # Downloads and uploads in flight: their futures must complete, not outlive the loop.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._on_loop(self._cancel_the_rest(), CLOSE_WAIT_S + 1)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_WAIT_S)
        with self._lock:
            stranded = list(self._futures)
        for future in stranded:  # only if the loop did not finish them: never leave a waiter
            future.cancel()
        if not self._thread.is_alive():
            self._loop.close()

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    @property
    def client(self) -> ComfyUIClient:
        if self._client is None:
            raise ComfyUIConnectionError(f"the session for lane {self.lane.name!r} is closed")
        return self._client

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        with self._lock:
            if self._closed:
                coro.close()
                raise ComfyUIConnectionError(f"the session for lane {self.lane.name!r} is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Every client call carries its own timeout; no extra wait bound is needed here.
        return self._submit(coro).result()

    def wait_until_up(self, max_wait_s: float) -> None:
        self._call(self.client.wait_until_up(max_wait_s))

    def moved_on(self, stalled: tuple[str, ...]) -> bool:
        """Whether a server found stuck running `stalled` runs something else now, or nothing
        at all: it may take prompts again."""
        running, pending = self._call(self.client.queue())
        return tuple(running) != stalled or not (running or pending)

    def object_info(self) -> dict[str, Any]:
        """The server's /object_info, fetched once per session."""
        with self._lock:
            cached = self._object_info
        if cached is None:
            cached = self._call(self.client.object_info())
            with self._lock:
                self._object_info = cached
        return cached

    def upload(self, data: bytes, *, filename_hint: str = "ref.png") -> str:
        """Upload a reference image once per session (content-addressed), return its name."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._uploads.get(digest)
        if known is not None:
            return known
        name = self._call(self.client.upload_image(data, filename_hint=filename_hint))
        with self._lock:
            self._uploads[digest] = name
        return name

    def start_run(
        self,
        graph: dict[str, Any],
        *,
        timeout_s: float,
        on_event: EventCallback | None = None,
        front: bool = False,
    ) -> Future[RunResult]:
        """Queue a render; the returned future completes when ComfyUI has finished it.

        `front` puts it at the front of the server's queue (an on-demand render), ahead
        of every pending prompt but never beside the running one. Its RunResult carries
        `queue_s` and `render_s`; a ComfyUIError names the prompt (`exc.prompt_id`).
        `close()` or `cancel_all()` cancels it (CancelledError).
        """
        return self._submit(self._run(self.client, graph, timeout_s, on_event, front))

    async def _run(
        self,
        client: ComfyUIClient,
        graph: dict[str, Any],
        timeout_s: float,
        on_event: EventCallback | None,
        front: bool,
    ) -> RunResult:
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        try:
            return await client.run(graph, timeout_s=timeout_s, on_event=on_event, front=front)
        finally:
            self._runs.discard(task)

    def download(self, image: OutputImage, *, max_bytes: int, preview: str | None = None) -> bytes:
        return self._call(self.client.download(image, max_bytes=max_bytes, preview=preview))

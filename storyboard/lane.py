"""A GPU lane: one ComfyUI server, the Prefect limit that guards it, and its open session.

A `Lane` is configuration (where the server is, which concurrency tag guards it). Today there is
one lane; a studio with several GPUs gets one lane per server, each with its own limit of 1, and
the flow feeds each lane the same way -- a configuration change, not a rewrite.

A `LaneSession` owns the one ComfyUI client (one HTTP connection pool and WebSocket) of a process
for that lane. The client is async and bound to an event loop, while Prefect runs our tasks in
worker threads, so the session runs the client on a private event-loop thread and offers blocking
calls to any thread. Per process this costs exactly one extra thread per lane, however many
sentences there are.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from storyboard.comfyui import ComfyUIClient, Event, OutputImage, RunResult
from storyboard.errors import ComfyUIConnectionError
from storyboard.settings import Settings

T = TypeVar("T")

DEFAULT_LIMIT_TAG = "gpu"


@dataclass(frozen=True)
class Lane:
    """One ComfyUI server and the Prefect tag whose limit (1) keeps it to one render at a time."""

    name: str
    comfyui_url: str
    ws_url: str
    limit_tag: str = DEFAULT_LIMIT_TAG


def lanes_from_settings(settings: Settings) -> list[Lane]:
    """The lanes this installation renders on (one per ComfyUI server; one today)."""
    return [
        Lane(
            name="default",
            comfyui_url=settings.comfyui_url,
            ws_url=settings.websocket_url,
            limit_tag=DEFAULT_LIMIT_TAG,
        )
    ]


EventCallback = Callable[[Event], object]


class LaneSession:
    """Blocking access, from any thread, to one long-lived async ComfyUI client."""

    def __init__(self, lane: Lane, *, request_timeout_s: float = 30.0) -> None:
        self.lane = lane
        self._request_timeout_s = request_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"comfyui-lane-{lane.name}", daemon=True
        )
        self._client: ComfyUIClient | None = None
        self._object_info: dict[str, Any] | None = None
        self._uploads: dict[str, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> LaneSession:
        self._thread.start()
        client = ComfyUIClient(
            self.lane.comfyui_url,
            self.lane.ws_url,
            request_timeout_s=self._request_timeout_s,
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
        client, self._client = self._client, None
        try:
            if client is not None:
                self._call(client.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    @property
    def client(self) -> ComfyUIClient:
        if self._client is None:
            raise ComfyUIConnectionError(f"the session for lane {self.lane.name!r} is closed")
        return self._client

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Every client call carries its own timeout; no extra wait bound is needed here.
        return self._submit(coro).result()

    def wait_until_up(self, max_wait_s: float) -> None:
        self._call(self.client.wait_until_up(max_wait_s))

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
    ) -> Future[RunResult]:
        """Queue a render; the returned future completes when ComfyUI has finished it."""
        return self._submit(self.client.run(graph, timeout_s=timeout_s, on_event=on_event))

    def download(self, image: OutputImage, *, max_bytes: int) -> bytes:
        return self._call(self.client.download(image, max_bytes=max_bytes))

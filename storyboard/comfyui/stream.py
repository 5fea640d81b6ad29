"""One persistent WebSocket per client, its messages dispatched to per-prompt queues.

ComfyUI sends a prompt's messages only to the socket whose clientId submitted it,
and never replays them, so the socket must be open before the prompt is posted.
Sharing one socket (one client id) between many runs lets a caller queue the next
prompt while the current one renders. A single reader task owns the socket; when
it drops, every waiting run is told (it may have missed messages and switches to
polling history) and the reader reconnects with the same client id. A real
ComfyUI answers again 10-30 s after a restart, so reconnecting is bounded by total
time (`reconnect_wait_s`), sleeping per the injected `backoff` (the library's one
policy, `storyboard.backoff`) and asking `is_retryable` about each failed try, with
one warning line; every waiting run is told again when the socket is back or when
the wait ran out or a try failed for good (`gave_up`: the server counts as
unavailable).

Why not websockets' own reconnecting iterator (`async for ws in connect(...)`,
websockets 16)? Its delays come from module-wide settings (`WEBSOCKETS_BACKOFF_*`:
a random first delay of up to 5 s, then 3.1 s and more), not from a per-call
`backoff`, so it could neither share our policy nor let a test reconnect fast;
it has no bound on total time; and its `open_timeout` is fixed per iterator,
while each try here is clipped to what is left of `reconnect_wait_s` (a
black-holed host must not stretch the wait). So the reader keeps its own small
loop around `_open`.

Request headers (an authenticating proxy's) go with every handshake; websockets' own
debug log of them shows their values masked.

A prompt starts executing when its own `execution_start` arrives; no other
message moves it from "queued" to "running" (see `Subscription.started_at`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

from storyboard.backoff import Backoff
from storyboard.comfyui.events import (
    Message,
    Preview,
    QueueStatus,
    RunEnded,
    Started,
    parse_binary_frame,
    parse_text_frame,
)
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIProtocolError,
    is_retryable,
)

log = logging.getLogger(__name__)

# websockets logs every handshake header at DEBUG, a proxy's token included. Our sockets log
# through this child of its logger (its handlers still apply), which masks every header value
# but those of the handshake itself.
_HANDSHAKE_HEADERS = frozenset(
    {"host", "upgrade", "connection", "user-agent", "origin"}
    | {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)


class _MaskHeaders(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg == "> %s: %s"
            and isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() not in _HANDSHAKE_HEADERS
        ):
            record.args = (args[0], "***")
        return True


WS_LOG = logging.getLogger("websockets.client.storyboard")
WS_LOG.addFilter(_MaskHeaders())

Connect = Callable[..., Awaitable[ClientConnection]]


class Notice:
    """A change of the socket's state, queued to every waiting run."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Notice({self.name})"


DROPPED: Final = Notice("dropped")  # messages may have been lost: poll
RECONNECTED: Final = Notice("reconnected")  # the server answers again: ask it about our prompts
GAVE_UP: Final = Notice("gave up")  # the server stayed away past the reconnect wait
CLOSED: Final = Notice("closed")  # the client was closed: nothing more will arrive


@dataclass(eq=False)
class Subscription:
    prompt_id: str
    submitted_at: float  # event-loop clock
    queue: asyncio.Queue[Message | Notice] = field(default_factory=asyncio.Queue)
    # Set by execution_start (or a poll that finds the job in progress); never by any
    # other message, so time spent waiting behind other prompts is not render time.
    started_at: float | None = None
    missed_messages: bool = False
    dropped: bool = False  # the socket dropped at least once since submission
    graph: dict[str, Any] | None = None  # what we submitted; None for another client's prompt
    front: bool = False  # submitted to the front of the queue (so is a resubmission)
    # The size of that graph as the server's JSON answers carry it (non-ASCII escaped).
    sent_bytes: int = 0


class EventStream:
    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        connect: Connect,
        backoff: Backoff,
        reconnect_wait_s: float,
        open_timeout_s: float,
        max_message_bytes: int,
        previews: bool,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self._connect = connect
        self._backoff = backoff
        self._reconnect_wait_s = reconnect_wait_s
        self._open_timeout_s = open_timeout_s
        self._max_message_bytes = max_message_bytes
        self._previews = previews
        # Only when there are some: an injected `connect` need not know the option.
        self._extra: dict[str, Any] = {"additional_headers": dict(headers)} if headers else {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._dropped = asyncio.Event()  # set while the reader knows the socket is gone
        self._opening = asyncio.Lock()
        self._subscriptions: dict[str, Subscription] = {}
        # Messages for prompts nobody waits for (yet): kept briefly so a prompt whose
        # id the server changed on submit can still be followed.
        self._orphans: collections.deque[Message] = collections.deque(maxlen=256)
        self._running: str | None = None
        self._closing = False
        self.gave_up = False  # the last reconnect wait ran out; cleared by a new socket
        self.queue_remaining: int | None = None
        self.connections = 0  # sockets opened so far (reconnects included)
        # Event-loop time of the last frame of any kind (or of the socket's opening): the server
        # sends one to every socket whenever its queue changes, and to ours at each step of our
        # prompts, so a long silence while a prompt of ours waits means its queue is not moving.
        self.heard_at = 0.0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def notices_drop(self, within_s: float) -> bool:
        """True once the reader has seen the socket end, waiting up to `within_s` for it."""
        if not self.connected:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):  # not wait_for: it can drop a cancel (3.11)
                await self._dropped.wait()
        return not self.connected

    @property
    def alive(self) -> bool:
        """Connected, or the reader is still trying to reconnect."""
        return self._reader is not None and not self._reader.done()

    @property
    def reconnecting(self) -> bool:
        return self.alive and not self.connected

    async def ensure_open(self) -> None:
        """Return once the socket is open.

        ComfyUIConnectionError when a first socket cannot be opened; while the reader is
        reconnecting, wait for it (a restart costs no attempt); ComfyUIUnavailableError is
        the caller's to raise when `gave_up` is set afterwards.
        """
        if self._closing:
            raise ComfyUIConnectionError(f"the ComfyUI client of {self.url} is closed")
        async with self._opening:  # runs submitted together must share one socket and reader
            if self._reader is None or self._reader.done():
                self._ws = await self._open()
                self.gave_up = False
                self._connected.set()
                self._reader = asyncio.create_task(
                    self._read(), name=f"comfyui-ws-{self.client_id}"
                )
                return
        if self.connected:
            return
        # The reader's own wait is bounded by reconnect_wait_s; it ends connected or given up.
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait({waiter, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self.connected:
            raise ComfyUIConnectionError(f"the ComfyUI WebSocket {self.url} stayed down")

    def subscribe(self, prompt_id: str, *, submitted_at: float, missed: bool) -> Subscription:
        sub = Subscription(prompt_id, submitted_at, missed_messages=missed or not self.connected)
        self._subscriptions[prompt_id] = sub
        return sub

    def subscription(self, prompt_id: str) -> Subscription | None:
        return self._subscriptions.get(prompt_id)

    def rename(self, old: str, new: str) -> None:
        """Follow a prompt the server registered under another id than the one we sent."""
        sub = self._subscriptions.pop(old)
        sub.prompt_id = new
        self._subscriptions[new] = sub
        for message in [m for m in self._orphans if getattr(m, "prompt_id", None) == new]:
            self._orphans.remove(message)
            self._deliver(sub, message)

    def followed(self) -> list[str]:
        """Ids of the prompts some run is waiting for."""
        return list(self._subscriptions)

    def sent_bytes(self, prompt_id: str | None = None) -> int:
        """What the answers about our prompts may carry of ours: the graph of `prompt_id`
        (0 when not ours), or of every prompt followed now."""
        if prompt_id is not None:
            sub = self._subscriptions.get(prompt_id)
            return 0 if sub is None else sub.sent_bytes
        return sum(sub.sent_bytes for sub in self._subscriptions.values())

    def unsubscribe(self, prompt_id: str) -> None:
        self._subscriptions.pop(prompt_id, None)

    @property
    def closed(self) -> bool:
        return self._closing

    async def aclose(self) -> None:
        self._closing = True
        self._notify(CLOSED)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        self._connected.clear()

    async def _open(self, timeout_s: float | None = None) -> ClientConnection:
        uri = f"{self.url}?clientId={self.client_id}"
        open_timeout = (
            self._open_timeout_s if timeout_s is None else min(timeout_s, self._open_timeout_s)
        )
        try:
            ws = await self._connect(
                uri,
                open_timeout=open_timeout,
                close_timeout=self._open_timeout_s,
                # Previews can exceed websockets' 1 MiB default; a smaller limit would
                # close the socket mid-run with code 1009.
                max_size=self._max_message_bytes,
                proxy=None,  # ComfyUI is a local service; never route it through a proxy
                logger=WS_LOG,
                **self._extra,
            )
            if self._previews:
                flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
                await ws.send(json.dumps(flags))
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ComfyUIConnectionError(
                f"cannot open the ComfyUI WebSocket {self.url}: {exc or type(exc).__name__}"
            ) from exc
        self.connections += 1
        self.heard_at = asyncio.get_running_loop().time()
        return ws

    async def _read(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            try:
                async for frame in ws:
                    self._dispatch(frame)
            except (WebSocketException, OSError):
                pass  # any way the socket ends is a drop: reconnect, the runs poll meanwhile
            self._connected.clear()
            self._dropped.set()
            if self._closing:
                return
            for sub in self._subscriptions.values():
                sub.missed_messages = True
                sub.dropped = True
                sub.queue.put_nowait(DROPPED)
            if not await self._reconnect():
                self.gave_up = True
                self._notify(GAVE_UP)
                return
            self._dropped.clear()
            self._connected.set()
            self._notify(RECONNECTED)

    async def _reconnect(self) -> bool:
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self._reconnect_wait_s
        # One line for the whole wait: a restart takes many attempts, each is not news.
        log.warning(
            "ComfyUI WebSocket %s dropped; waiting up to %gs for the server to come back",
            self.url,
            self._reconnect_wait_s,
        )
        attempt = 0
        while True:  # at least one attempt, even with a wait of 0
            attempt += 1
            await asyncio.sleep(min(self._backoff(attempt), max(deadline - loop.time(), 0.0)))
            try:
                # A black-holed host must not stretch one attempt past the wait.
                self._ws = await self._open(max(deadline - loop.time(), 1.0))
            except ComfyUIError as exc:
                if not is_retryable(exc):
                    log.error("ComfyUI WebSocket %s cannot be reopened: %s", self.url, exc)
                    return False
                log.debug("reconnect attempt %d failed: %s", attempt, exc)
                if loop.time() >= deadline:
                    break
                continue
            log.info("ComfyUI WebSocket %s is back after %.1fs", self.url, loop.time() - began)
            return True
        # Not an error by itself: the caller says what it costs (an attempt, or a lane set aside).
        log.warning("ComfyUI WebSocket %s stayed down for %gs", self.url, self._reconnect_wait_s)
        return False

    def _notify(self, notice: Notice) -> None:
        for sub in self._subscriptions.values():
            sub.queue.put_nowait(notice)

    def _dispatch(self, frame: str | bytes) -> None:
        self.heard_at = asyncio.get_running_loop().time()
        try:
            message = self._parse(frame)
        except (ComfyUIProtocolError, KeyError, TypeError, ValueError) as exc:
            # One malformed frame must not stop the reader that every run depends on.
            log.warning("skipping a WebSocket frame ComfyUI sent: %s", exc)
            return
        if message is None:
            return
        if isinstance(message, QueueStatus):
            self.queue_remaining = message.queue_remaining
            return
        prompt_id = message.prompt_id
        if prompt_id is None:
            return
        sub = self._subscriptions.get(prompt_id)
        if sub is None:
            self._orphans.append(message)
        else:
            self._deliver(sub, message)

    def _parse(self, frame: str | bytes) -> Message | None:
        if isinstance(frame, str):
            message = parse_text_frame(frame)
            # A late `executing` null names a prompt that is over, perhaps while the
            # next one already runs: it must not take that one's previews.
            if message is not None and not isinstance(message, QueueStatus | RunEnded):
                self._running = message.prompt_id
            return message
        if not self._previews:
            return None
        preview = parse_binary_frame(frame)
        if preview is not None and preview.prompt_id is None:
            # Type-1 frames carry no prompt id: they belong to the prompt running now.
            return Preview(self._running, preview.image_format, preview.data)
        return preview

    def _deliver(self, sub: Subscription, message: Message) -> None:
        if isinstance(message, Started) and sub.started_at is None:
            sub.started_at = asyncio.get_running_loop().time()
        sub.queue.put_nowait(message)


def queue_snapshot(body: Any, client_id: str | None = None) -> tuple[list[str], list[str]]:
    """Prompt ids (running, pending in queue order) from a `GET /queue` body; with
    `client_id`, only the prompts that client posted (an entry's extra data, its fourth
    field, names the client)."""

    def ids(entries: Any) -> list[str]:
        rows = [e for e in entries if isinstance(e, list) and len(e) > 1] if entries else []
        if client_id is not None:
            rows = [row for row in rows if _posted_by(row) == client_id]
        rows.sort(key=lambda row: row[0] if isinstance(row[0], int | float) else 0)
        return [str(row[1]) for row in rows]

    if not isinstance(body, dict):
        raise ComfyUIProtocolError(f"GET /queue answered {str(body)[:80]!r}, not an object")
    return ids(body.get("queue_running")), ids(body.get("queue_pending"))


def _posted_by(entry: list[Any]) -> Any:
    extra = entry[3] if len(entry) > 3 else None
    return extra.get("client_id") if isinstance(extra, dict) else None

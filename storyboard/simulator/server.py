"""Serving a simulator over real sockets: in the running loop, or in a thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from storyboard.simulator.config import SimulatorConfig
from storyboard.simulator.simulator import ComfyUISimulator

_START_TIMEOUT_S = 10.0


class ListenError(OSError):
    """The simulator cannot listen on host:port; the message says why and what to do.

    `in_use`: something else listens there already.
    """

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        self.host, self.port = host, port
        self.in_use = cause.errno == errno.EADDRINUSE
        self.message = _listen_message(host, port, cause)
        super().__init__(cause.errno, self.message)

    def __str__(self) -> str:  # OSError's own adds "[Errno n]", which tells a user nothing
        return self.message


def _listen_message(host: str, port: int, cause: OSError) -> str:
    if isinstance(cause, socket.gaierror):
        return f"unknown host {host!r}: listen on an address of this machine, e.g. --host 127.0.0.1"
    if cause.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use: pick another --port (0: any free port)"
    if cause.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: use e.g. --host 127.0.0.1"
    if cause.errno == errno.EACCES:
        return (
            f"no permission to listen on {host}:{port} (ports below 1024 are privileged): "
            "pick --port 1024 or above"
        )
    return f"cannot listen on {host}:{port}: {cause.strerror or cause}"


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # The same port must be bindable again right after an outage (refuse_connections).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to whoever embeds the simulator (a test, the CLI's asyncio.run).
        yield


class Listener:
    """uvicorn on a socket bound here, so it can stop listening and come back on the same port."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._outage: asyncio.Task[None] | None = None
        self._back_at = 0.0
        self._refusals = 0

    async def start(self) -> None:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", ws="websockets-sansio", log_level="warning",
            access_log=False, timeout_graceful_shutdown=1,
        )  # fmt: skip
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if self._task.done() or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"simulator could not start on {self.host}:{self.port}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        self._stop_listening()
        server.should_exit = True
        try:
            with contextlib.suppress(Exception):
                await task
        finally:
            # uvicorn cancels what is still running after its graceful second but leaves
            # those connections' sockets open (a client that never answered the close, or
            # one that stopped reading: a closing transport waits for its unsent bytes), and
            # a stop cancelled meanwhile (the simulator closed during an outage) leaves all
            # of them: a stopped server, like a killed ComfyUI, has none left. Aborting one
            # already closed does nothing.
            left = [getattr(c, "transport", None) for c in server.server_state.connections]
            for transport in left:
                if transport is not None:
                    transport.abort()
        if left:
            await asyncio.sleep(0)  # abort closes the socket on the loop's next turn

    def refuse(self, seconds: float) -> None:
        """Stop accepting connections now (they are refused); listen again after `seconds`."""
        self._back_at = max(self._back_at, time.monotonic() + seconds)
        self._refusals += 1
        self._stop_listening()
        if self._outage is None or self._outage.done():
            self._outage = asyncio.create_task(self._sit_out())

    def _stop_listening(self) -> None:
        """Accept no more connections, and close the listening sockets on the loop's next turn.

        asyncio accepts a connection in one turn and makes its transport in the next; a server
        closed in between fails that making and leaves the accepted socket open (CPython 3.11),
        outside any count, so nothing could close it. Reading no more from the listening
        sockets stops the accepting now; those already accepted get their transports (and so a
        place among the connections a stop aborts) before the close, scheduled after them.
        """
        if self._server is None:
            return
        loop = asyncio.get_running_loop()
        servers = list(getattr(self._server, "servers", ()))  # set once uvicorn listens
        for server in servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())

        def close() -> None:
            for server in servers:
                server.close()

        loop.call_soon(close)

    async def _sit_out(self) -> None:
        while True:
            await self.stop()
            # The deadline can move while we wait (a second refuse_connections call).
            while (remaining := self._back_at - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
            refusals = self._refusals
            await self.start()
            # One that came while the server was starting may have found nothing listening
            # yet to close: it gets its own outage.
            if self._refusals == refusals:
                return

    async def close(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage
        await self.stop()


@contextlib.asynccontextmanager
async def serve_simulator(
    config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ComfyUISimulator]:
    """A running simulator on `host:port` (0: a free port); `.url` and `.ws_url` are set.

    ListenError (an OSError) when it cannot listen there.
    """
    sim = ComfyUISimulator(config)
    listener = Listener(sim.app, host, port)
    try:
        await sim.start()
        await listener.start()
        sim.url = f"http://{host}:{listener.port}"
        sim.ws_url = f"ws://{host}:{listener.port}/ws"
        sim.refuse_handler = lambda seconds: sim.call_in_loop(lambda: listener.refuse(seconds))
        yield sim
    finally:
        await listener.close()
        await sim.aclose()


class SimulatorThread:
    """A simulator with its own event loop in a background thread, for sync callers.

    `with SimulatorThread(config) as thread:` or `start()`/`stop()`; `.url`,
    `.ws_url` and `.sim` (runs, faults, submissions) once started.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config
        self._host = host
        self._port = port
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._sim: ComfyUISimulator | None = None

    @property
    def sim(self) -> ComfyUISimulator:
        if self._sim is None:
            raise RuntimeError("SimulatorThread is not running")
        return self._sim

    @property
    def url(self) -> str:
        return self.sim.url

    @property
    def ws_url(self) -> str:
        return self.sim.ws_url

    def start(self) -> SimulatorThread:
        self._thread = threading.Thread(target=self._main, name="comfyui-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S) or self._error is not None:
            self.stop()
            raise RuntimeError("simulator thread failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=_START_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_simulator(self._config, host=self._host, port=self._port) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop.wait()

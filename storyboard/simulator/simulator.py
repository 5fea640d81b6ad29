"""The simulated ComfyUI server: a queue worked by one task, history and jobs.

The queue runs in submission order, except that a prompt sent with `"front": true`
goes before every pending one (the newest such first, as ComfyUI numbers it
negative); the running prompt is never displaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from storyboard.simulator.app import build_app
from storyboard.simulator.config import SimulatorConfig, base_object_info, object_info_with
from storyboard.simulator.execution import Execution, RunOutcome
from storyboard.simulator.faults import Faults
from storyboard.simulator.files import FileStore
from storyboard.simulator.hub import Hub
from storyboard.simulator.state import (
    InFlight,
    QueueItem,
    RunRecord,
    busy_seconds,
    max_concurrency,
    now_ms,
    switch_seconds,
)
from storyboard.simulator.submission import Accepted
from storyboard.simulator.warm import WarmState

log = logging.getLogger(__name__)

_JOB_STATUS = {"success": "completed", "error": "failed", "interrupted": "cancelled"}


class ComfyUISimulator:
    """State and worker of one simulated server; `.app` is its Starlette app.

    Start the worker with `await start()` in the serving loop (serve_simulator
    does); `aclose()` stops it and removes the temporary folders.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._root = Path(tempfile.mkdtemp(prefix="comfyui-sim-"))
        self.files = FileStore(
            self._root, output_dir=self.config.output_dir, input_dir=self.config.input_dir
        )
        self.hub = Hub()
        self.faults = Faults(on_refuse=self._refuse, on_restart=self._restart)
        self.runs: list[RunRecord] = []
        # Prompts whose `executing` null was sent, in order (late_finish makes it lag).
        self.run_ends_sent: list[str] = []
        # Headers of the latest requests and handshakes (see gate), newest last.
        self.seen_headers: deque[dict[str, str]] = deque(maxlen=self.config.header_log)
        self.submissions: Counter[str] = Counter()
        # Every graph accepted by POST /prompt, as received (kept across restart()).
        self.graphs: dict[str, dict[str, Any]] = {}
        self.cache_keys: set[str] = set()
        self.ui_cache: dict[str, dict[str, Any]] = {}
        # What the last sampled prompt left loaded; None: a fresh (or restarted) server.
        self.warm: WarmState | None = None
        self.running: QueueItem | None = None
        self.url = ""
        self.ws_url = ""
        self.refuse_handler: Callable[[float], None] | None = None
        self._base_info = {
            name: spec
            for name, spec in base_object_info().items()
            if name not in self.config.without_nodes
        }
        self._pending: list[QueueItem] = []
        self._history: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._number = 0
        self._in_flight = InFlight()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Task[RunOutcome] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.app: Starlette = build_app(self)

    # -- lifecycle -------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="comfyui-sim-worker")

    async def aclose(self) -> None:
        tasks = [t for t in (self._worker, self._current, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None
        shutil.rmtree(self._root, ignore_errors=True)

    # -- what tests read --------------------------------------------------
    def busy_seconds(self) -> float:
        return busy_seconds(self.runs)

    def switch_seconds(self) -> float:
        """Time charged for LoRA switches and new references over every run."""
        return switch_seconds(self.runs)

    def max_concurrency(self) -> int:
        return max_concurrency(self.runs)

    def max_in_flight(self, client_id: str | None = None) -> int:
        """The most prompts ever queued + running at once: of `client_id`, or of everyone.

        Unlike max_concurrency (always 1: the executor is serial), this counts what a
        client controls: how many prompts it put on the server before earlier ones ended.
        """
        return self._in_flight.peak(client_id)

    # -- queries -----------------------------------------------------------
    def object_info(self) -> dict[str, Any]:
        return object_info_with(self._base_info, self.config.models, self.files.input_files())

    def queue_remaining(self) -> int:
        return len(self._pending) + (1 if self.running is not None else 0)

    def queue(self) -> dict[str, Any]:
        running = [self.running.entry()] if self.running is not None else []
        return {"queue_running": running, "queue_pending": [i.entry() for i in self._pending]}

    def history(self, prompt_id: str) -> dict[str, Any]:
        entry = self._history.get(prompt_id)
        return {prompt_id: entry} if entry is not None else {}

    def all_history(self, max_items: int | None) -> dict[str, Any]:
        items = list(self._history.items())
        return dict(items[-max_items:] if max_items else items)

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(prompt_id)
        return {"id": prompt_id, **job} if job is not None else None

    # -- commands ----------------------------------------------------------
    async def enqueue(self, accepted: Accepted) -> dict[str, Any]:
        self._number += 1
        number = -self._number if accepted.front else self._number
        accepted.extra_data.setdefault("create_time", now_ms())
        item = QueueItem(number, accepted.prompt_id, accepted.graph, accepted.extra_data,
                         accepted.outputs)  # fmt: skip
        self._pending.append(item)
        self._pending.sort(key=lambda i: i.number)
        self.submissions[item.prompt_id] += 1
        self._in_flight.add(item.prompt_id, item.client_id)
        self.graphs[item.prompt_id] = item.graph
        self._jobs[item.prompt_id] = {"status": "pending", "priority": number,
                                      "create_time": accepted.extra_data["create_time"],
                                      "outputs_count": 0}  # fmt: skip
        self._wake.set()
        await self.broadcast_status()
        return {"prompt_id": item.prompt_id, "number": number, "node_errors": accepted.node_errors}

    async def delete_pending(self, prompt_ids: list[str] | None) -> None:
        """Remove pending prompts (all of them when `prompt_ids` is None)."""
        keep = (
            []
            if prompt_ids is None
            else [i for i in self._pending if i.prompt_id not in prompt_ids]
        )
        gone = [item.prompt_id for item in self._pending if item not in keep]
        for prompt_id in gone:
            self._jobs.pop(prompt_id, None)
        self._pending = keep
        self._in_flight.discard(gone)
        await self.broadcast_status()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt if it is `prompt_id` (or any, when None)."""
        running = self.running
        if running is None or (prompt_id is not None and running.prompt_id != prompt_id):
            return False
        running.interrupt.set()
        return True

    async def cancel(self, prompt_id: str) -> bool:
        if any(item.prompt_id == prompt_id for item in self._pending):
            await self.delete_pending([prompt_id])
            return True
        return self.interrupt(prompt_id)

    async def broadcast_status(self) -> None:
        await self.hub.broadcast("status", {"status": {"exec_info": {
            "queue_remaining": self.queue_remaining()}}})  # fmt: skip

    # -- the worker ----------------------------------------------------------
    async def _next(self) -> QueueItem:
        while not self._pending:
            self._wake.clear()
            await self._wake.wait()
        return self._pending.pop(0)

    async def _work(self) -> None:
        while True:
            item = await self._next()
            self.running = item
            # A running job shows no execution_start_time yet (captured); it comes at the end.
            self._jobs[item.prompt_id]["status"] = "in_progress"
            started_ms = now_ms()
            await self.broadcast_status()
            start = time.monotonic()
            self._current = asyncio.create_task(Execution(self, item).run())
            await asyncio.wait({self._current})
            task, self._current = self._current, None
            if task.cancelled():  # restart(): the run is lost without a trace
                self.runs.append(RunRecord(item.prompt_id, start, time.monotonic(), "lost"))
                self._in_flight.discard([item.prompt_id])
                continue
            if task.exception() is not None:
                log.error("simulated run %s crashed", item.prompt_id, exc_info=task.exception())
                outcome = RunOutcome(status="error")
            else:
                outcome = task.result()
            paid = outcome.charges
            self.runs.append(RunRecord(item.prompt_id, start, time.monotonic(), outcome.status,
                                       paid.load_s, paid.lora_s, paid.reference_s))  # fmt: skip
            await self._finish(item, outcome, started_ms)

    async def _finish(self, item: QueueItem, outcome: RunOutcome, started_ms: int) -> None:
        self.cache_keys = outcome.kept_signatures
        ok = outcome.status == "success"
        entry = {
            "prompt": item.entry(),
            "outputs": outcome.outputs,
            "status": {"status_str": "success" if ok else "error", "completed": ok,
                       "messages": outcome.messages},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n}
                     for n in outcome.outputs},
        }  # fmt: skip
        job = {
            "status": _JOB_STATUS[outcome.status],
            "execution_start_time": started_ms,
            "execution_end_time": now_ms(),
            "outputs_count": sum(len(o.get("images", [])) for o in outcome.outputs.values()),
        }
        delay = self.faults.history_delay_s
        if delay > 0:
            self._spawn(self._write_history_later(item.prompt_id, entry, job, delay))
        else:
            self._write_history(item.prompt_id, entry, job)
        self.running = None
        self._in_flight.discard([item.prompt_id])
        await self.broadcast_status()
        late = self.faults.late_finish_s
        if late > 0:
            self._spawn(self._send_run_end(item, late))
        else:
            await self._send_run_end(item, 0.0)

    async def _send_run_end(self, item: QueueItem, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self.hub.send(
            item.client_id, "executing", {"node": None, "prompt_id": item.prompt_id}
        )
        self.run_ends_sent.append(item.prompt_id)

    def _write_history(self, prompt_id: str, entry: dict[str, Any], job: dict[str, Any]) -> None:
        self._history[prompt_id] = entry
        if prompt_id in self._jobs:
            self._jobs[prompt_id].update(job)

    async def _write_history_later(self, prompt_id: str, entry: dict[str, Any],
                                   job: dict[str, Any], delay: float) -> None:  # fmt: skip
        await asyncio.sleep(delay)
        self._write_history(prompt_id, entry, job)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- faults that need the loop ---------------------------------------------
    def _refuse(self, seconds: float) -> None:
        if self.refuse_handler is None:
            raise RuntimeError("refuse_connections needs a served simulator (serve_simulator)")
        self.refuse_handler(seconds)

    def _restart(self, down_s: float) -> None:
        self.call_in_loop(lambda: self._restart_now(down_s))

    def _restart_now(self, down_s: float) -> None:
        for job_id in [item.prompt_id for item in self._pending]:
            self._jobs.pop(job_id, None)
        self._pending.clear()
        self._in_flight.clear()
        self._history.clear()
        self._jobs.clear()
        self.cache_keys = set()
        self.ui_cache.clear()
        self.warm = None
        for task in list(self._background):
            task.cancel()
        if self._current is not None:
            self._current.cancel()
        self.running = None
        self._spawn(self.hub.close_all())
        if down_s > 0:
            self._refuse(down_s)

    def call_in_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the simulator's loop now, waiting for it when called from another thread.

        The wait also covers what `fn` left for the loop's next turn: a listener that stops
        listening closes its sockets there, and a caller told a refusal began may connect at once.
        """
        loop = self._loop
        with contextlib.suppress(RuntimeError):
            if loop is None or asyncio.get_running_loop() is loop:
                fn()
                return
        assert loop is not None
        running = loop
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                running.call_soon(done.set)

        running.call_soon_threadsafe(call)
        done.wait(timeout=10)

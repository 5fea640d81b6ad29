"""Which lane an on-demand render goes to, and how it jumps that server's queue.

An on-demand render never waits for the lane a batch holds (its OS lock or Prefect slot):
it asks every lane's ComfyUI `GET /queue` at once and takes the one with the least work
ahead of it (storyboard.scheduler.lane_load decides among the answers). Its prompt goes to
the front of that server's queue (`FrontSession`), so it waits for at most the one render
executing there. ComfyUI executes its queue one prompt at a time, so
the batch's prompt and ours never execute together; a batch keeps only one prompt waiting
and queues it behind ours.

A lane that does not answer is left out; when none answers within the start-up wait, the
error names every lane and what it answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx

from storyboard.comfyui import RunResult
from storyboard.comfyui.stream import queue_snapshot
from storyboard.comfyui.transport import MAX_QUEUE_BYTES, Http, http_client
from storyboard.errors import ComfyUIConnectionError, ComfyUIError, is_retryable
from storyboard.lane import EventCallback, Lane, LaneSession
from storyboard.scheduler.lane_load import LaneLoad, least_loaded

T = TypeVar("T")

# Between two rounds of asking every lane, while none answers (bounded by the caller's wait).
RETRY_EVERY_S = 0.5


async def read_load(lane: Lane, http: httpx.AsyncClient, timeout_s: float) -> LaneLoad:
    """One `GET /queue` of `lane`, with its headers and within `timeout_s`."""
    body = await Http(http, lane.comfyui_url, timeout_s, headers=lane.headers).get_json(
        "/queue", max_bytes=MAX_QUEUE_BYTES
    )
    running, pending = queue_snapshot(body)
    return LaneLoad(lane, len(running), len(pending))


async def read_loads(
    lanes: Sequence[Lane], timeout_s: float
) -> tuple[list[LaneLoad], dict[str, ComfyUIError]]:
    """Every lane asked at once: the loads of those that answered, the errors of the rest."""
    async with http_client() as http:
        answers = await asyncio.gather(
            *(read_load(lane, http, timeout_s) for lane in lanes), return_exceptions=True
        )
    loads: list[LaneLoad] = []
    errors: dict[str, ComfyUIError] = {}
    for lane, answer in zip(lanes, answers, strict=True):
        if isinstance(answer, LaneLoad):
            loads.append(answer)
        elif isinstance(answer, ComfyUIError):
            errors[lane.name] = answer
        else:
            raise answer
    return loads, errors


async def choose(lanes: Sequence[Lane], *, wait_s: float, timeout_s: float) -> LaneLoad:
    """The least loaded lane, asking again until one answers or `wait_s` has passed."""
    if not lanes:
        raise ValueError("choose needs at least one lane")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        remaining = deadline - loop.time()
        loads, errors = await read_loads(lanes, max(min(timeout_s, remaining), 0.5))
        if loads:
            return least_loaded(loads)
        lasting = [exc for exc in errors.values() if not is_retryable(exc)]
        if lasting or deadline - loop.time() <= 0:
            named = "; ".join(f"lane {name!r}: {exc}" for name, exc in errors.items())
            raise ComfyUIConnectionError(
                f"no ComfyUI lane answered GET /queue within {wait_s:g} s ({named}); start a"
                " server, or fix STORYBOARD_COMFYUI_URL / STORYBOARD_COMFYUI_URLS. No sentence"
                " was changed."
            ) from (lasting or list(errors.values()))[0]
        await asyncio.sleep(min(RETRY_EVERY_S, max(deadline - loop.time(), 0.0)))


def choose_lane(lanes: Sequence[Lane], *, wait_s: float, timeout_s: float = 5.0) -> LaneLoad:
    """`choose` from blocking code (a flow), on its own event loop."""
    return _run_blocking(choose(lanes, wait_s=wait_s, timeout_s=timeout_s))


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a thread that runs a loop already: a private thread gets its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class FrontSession(LaneSession):
    """A lane session whose every render goes to the front of its server's queue."""

    def start_run(
        self,
        graph: dict[str, Any],
        *,
        timeout_s: float,
        on_event: EventCallback | None = None,
        front: bool = True,
    ) -> Future[RunResult]:
        return super().start_run(graph, timeout_s=timeout_s, on_event=on_event, front=True)

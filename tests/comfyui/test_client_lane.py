"""The lane session from threads: closing it (a signal handler does) stops our prompts.

A real simulator in its own thread, a real LaneSession with its private loop thread,
worker threads blocked on `start_run` futures and `close()` called from yet another.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from storyboard.errors import ComfyUIConnectionError, ComfyUIError
from storyboard.lane import Lane, LaneSession
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.clients import graph

WAIT_S = 10.0


@pytest.fixture
def server() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(steps=3, step_s=0.01)) as thread:
        yield thread


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _outcome(future: concurrent.futures.Future[object], into: list[BaseException]) -> None:
    try:
        future.result(timeout=30)
    except BaseException as exc:  # what a worker thread blocked on the render gets
        into.append(exc)


def test_close_from_another_thread_stops_our_prompts_and_frees_every_waiter(
    server: SimulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    sim = server.sim
    sim.faults.hang_next(1)
    # Requests time out after a minute: a close that waited for them would take that long.
    session = LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=60)
    session.__enter__()
    running = session.start_run(graph(seed=1), timeout_s=60)
    pending = session.start_run(graph(seed=2), timeout_s=60)
    _until(lambda: len(sim.queue()["queue_pending"]) == 1 and sim.running is not None, "both")
    outcomes: list[BaseException] = []
    waiters = [threading.Thread(target=_outcome, args=(f, outcomes)) for f in (running, pending)]
    for waiter in waiters:
        waiter.start()

    closer = threading.Thread(target=session.close)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="storyboard.comfyui"):
        closer.start()
        closer.join(WAIT_S)
        for waiter in waiters:
            waiter.join(WAIT_S)
    assert not closer.is_alive() and not any(w.is_alive() for w in waiters)
    assert time.monotonic() - began < 30.0  # not the request timeout
    assert len(outcomes) == 2
    assert all(
        isinstance(e, concurrent.futures.CancelledError | ComfyUIConnectionError) for e in outcomes
    )

    assert sim.queue() == {"queue_running": [], "queue_pending": []}
    assert [run.status for run in sim.runs] == ["interrupted"]  # the pending one never ran
    assert len(sim.submissions) == 2
    stopped = " ".join(r.getMessage() for r in caplog.records if "given up" in r.getMessage())
    assert "interrupted" in stopped and "removed" in stopped
    with pytest.raises(ComfyUIConnectionError, match="closed"):
        session.start_run(graph(seed=3), timeout_s=5)
    session.close()  # twice is harmless (the context manager's exit after a signal handler's)


def test_cancel_all_keeps_the_session_usable(server: SimulatorThread) -> None:
    sim = server.sim
    sim.faults.hang_next(1)
    with LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5) as session:
        hung = session.start_run(graph(seed=4), timeout_s=60)
        _until(lambda: sim.running is not None, "the hung render")
        session.cancel_all()
        with pytest.raises(concurrent.futures.CancelledError):
            hung.result(timeout=WAIT_S)
        result = session.start_run(graph(seed=5), timeout_s=10).result(timeout=WAIT_S)
    assert result.images and result.render_s > 0
    assert [run.status for run in sim.runs] == ["interrupted", "success"]


def test_close_while_the_server_is_gone_is_bounded_and_frees_the_waiter(
    server: SimulatorThread,
) -> None:
    sim = server.sim
    sim.faults.hang_next(1)
    session = LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5)
    session.__enter__()
    hung = session.start_run(graph(seed=6), timeout_s=60)
    _until(lambda: sim.running is not None, "the hung render")
    sim.faults.refuse_connections(30)  # still away when the signal arrives
    began = time.monotonic()
    session.close()
    assert time.monotonic() - began < 8.0
    with pytest.raises(concurrent.futures.CancelledError):
        hung.result(timeout=1)


def test_a_front_run_is_queued_ahead_of_the_batch_and_never_beside_the_running_one(
    server: SimulatorThread,
) -> None:
    sim = server.sim
    sim.faults.hang_next(1)
    with LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5) as session:
        hung = session.start_run(graph(seed=7), timeout_s=60)
        _until(lambda: sim.running is not None, "the hung render")
        queued = session.start_run(graph(seed=8), timeout_s=60)
        _until(lambda: len(sim.queue()["queue_pending"]) == 1, "the batch's next prompt")
        urgent = session.start_run(graph(seed=9), timeout_s=60, front=True)
        _until(lambda: len(sim.queue()["queue_pending"]) == 2, "the on-demand prompt")
        hung_id = sim.queue()["queue_running"][0][1]
        pending = [entry[1] for entry in sim.queue()["queue_pending"]]
        httpx.post(server.url + "/interrupt", timeout=5).raise_for_status()  # someone else
        with pytest.raises(ComfyUIError):
            hung.result(timeout=WAIT_S)
        first, second = urgent.result(timeout=WAIT_S), queued.result(timeout=WAIT_S)
    assert pending == [first.prompt_id, second.prompt_id]
    assert [run.prompt_id for run in sim.runs] == [hung_id, first.prompt_id, second.prompt_id]
    assert sim.max_concurrency() == 1

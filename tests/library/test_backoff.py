"""The one backoff policy, and the four waiting loops that sleep by it and ask `is_retryable`."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pytest

from storyboard.backoff import NETWORK_BACKOFF, default_backoff
from storyboard.comfyui import ComfyUIClient
from storyboard.comfyui.stream import EventStream
from storyboard.errors import ComfyUIExecutionError, StoreError, StoreLockedError
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from storyboard.store.connection import Database
from tests.support.clients import RequestLog, client_for, graph


class Recorded:
    """A backoff that notes the retry numbers it is asked for."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.attempts: list[int] = []

    def __call__(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return self.delay_s


@pytest.mark.parametrize(
    ("attempt", "full_s"), [(1, 0.005), (2, 0.01), (3, 0.02), (6, 0.16), (7, 0.25), (40, 0.25)]
)
def test_delays_double_to_the_cap_jittered_down_to_half(attempt: int, full_s: float) -> None:
    delays = [default_backoff(attempt) for _ in range(200)]
    assert all(full_s * 0.5 <= d <= full_s for d in delays)
    assert len(set(delays)) > 1  # jittered, so two processes that collided drift apart


def test_the_network_scale_is_the_same_policy() -> None:
    assert NETWORK_BACKOFF.func is default_backoff  # type: ignore[attr-defined]
    assert 0.125 <= NETWORK_BACKOFF(1) <= 0.25
    assert 2.5 <= NETWORK_BACKOFF(30) <= 5.0


def test_every_waiting_loop_defaults_to_the_one_policy() -> None:
    def default(of: object) -> object:
        return inspect.signature(of).parameters["backoff"].default  # type: ignore[arg-type]

    assert default(Database) is default_backoff
    assert default(ComfyUIClient) is NETWORK_BACKOFF
    # The stream and the history wait get the client's, never one of their own.
    assert default(EventStream) is inspect.Parameter.empty


def test_the_lock_wait_never_retries_what_is_not_contention(tmp_path: Path) -> None:
    slept: list[float] = []
    db = Database(tmp_path / "x.duckdb", lock_timeout_s=5, sleep=slept.append)

    def bad_sql(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("SELECT * FROM no_such_table")

    with pytest.raises(StoreError, match="no_such_table") as caught:
        db.run(bad_sql)
    assert not isinstance(caught.value, StoreLockedError)
    assert slept == []


def test_the_lock_wait_retries_a_write_conflict_with_retry_numbers(tmp_path: Path) -> None:
    backoff = Recorded(0.0)
    db = Database(tmp_path / "x.duckdb", lock_timeout_s=5, backoff=backoff)
    db.run(lambda con: con.execute("CREATE TABLE t (v INT)"))
    tries = 0

    def conflicting(con: duckdb.DuckDBPyConnection) -> int:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise duckdb.TransactionException("write-write conflict on key")
        return 7

    assert db.run(conflicting) == 7
    assert backoff.attempts == [1, 2]


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=2, step_s=0.005), port=0) as server:
        yield server


async def test_a_failed_history_read_after_finish_is_retried(sim: ComfyUISimulator) -> None:
    requests = RequestLog()
    # Polls far apart: the only /history read is the one after the run finished.
    async for comfy in client_for(sim.url, requests, poll_interval_s=30.0):
        prompt_id = await comfy.submit(graph(seed=5))
        sim.faults.answer_next(f"/history/{prompt_id}", 2, status=502, body="bad gateway")
        result = await comfy.wait(prompt_id, timeout_s=10)
        assert result.images
        assert requests.count(f"GET /history/{prompt_id}") == 3


async def test_an_error_the_history_entry_records_is_the_answer_not_read_again(
    sim: ComfyUISimulator,
) -> None:
    requests = RequestLog()
    async for comfy in client_for(sim.url, requests, poll_interval_s=30.0):
        prompt_id = await comfy.submit(graph(seed=6))
        error = {"node_id": "3", "node_type": "KSampler", "exception_message": "late oom"}
        entry = {"status": {"status_str": "error", "messages": [["execution_error", error]]}}
        sim.faults.answer_next(
            f"/history/{prompt_id}",
            body=json.dumps({prompt_id: entry}),
            content_type="application/json",
        )
        # Retryable as an attempt (ComfyUIExecutionError), yet the wait must not re-read it.
        with pytest.raises(ComfyUIExecutionError, match="late oom"):
            await comfy.wait(prompt_id, timeout_s=10)
        assert requests.count(f"GET /history/{prompt_id}") == 1


async def test_start_up_wait_sleeps_the_injected_backoff_per_retry(
    sim: ComfyUISimulator,
) -> None:
    backoff = Recorded(0.01)
    sim.faults.answer_next("/system_stats", 2, status=503, body="loading")
    async for comfy in client_for(sim.url, backoff=backoff):
        stats = await comfy.wait_until_up(10)
        assert "system" in stats
    assert backoff.attempts == [1, 2]


async def test_a_poll_answered_by_a_proxy_error_page_is_asked_again(
    sim: ComfyUISimulator,
) -> None:
    requests = RequestLog()
    async for comfy in client_for(sim.url):
        prompt_id = await comfy.submit(graph(seed=7))
        await comfy.wait(prompt_id, timeout_s=10)
        # Another client follows the finished prompt by polling; its first look meets a page
        # a proxy sent instead of ComfyUI (ComfyUIProtocolError, retryable).
        sim.faults.answer_next(f"/history/{prompt_id}", body="<html>502</html>")
        async for other in client_for(sim.url, requests):
            result = await other.wait(prompt_id, timeout_s=10)
        assert result.images
        assert requests.count(f"GET /history/{prompt_id}") == 2

"""The undertaker, through a real run process killed with a real SIGKILL: its prompts leave the
simulator, its claims are released with no attempt spent and its flow run is marked Crashed
on the Prefect test API, within seconds; a run that ends cleanly stands it down."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import State, flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import get_current_settings
from prefect.states import Running

from flows.undertaker import bury
from storyboard.run_lock import RunLock, lock_path
from storyboard.store import RELEASED_ERROR
from tests.support.clients import graph
from tests.support.paths import REPO
from tests.support.reliability import PROJECT, Tiny

pytestmark = pytest.mark.usefixtures("prefect_api")

# A run in its own process: its lock, its undertaker, two claims; says so, then waits to be
# killed, or with "clean" releases its claims and ends as a run that finished does.
RUN = """
import sys
from pathlib import Path
from typing import Any
from flows.undertaker import Undertaker
from storyboard.run_lock import RunLock
from storyboard.store import Store

database, run_id, api_url, client_id, how = sys.argv[1:6]
store = Store(Path(database))
with RunLock(run_id, store=store) as lock, Undertaker(
    run_id, Path(database), api_url, {"default": client_id}
) as undertaker:
    for sentence in ("s1", "s2"):
        assert store.start_job("rp", sentence, run_id=run_id, attempt=1, stale_after_s=3600)
    print(undertaker.process.pid, flush=True)
    if how == "clean":
        store.release_run(run_id)
        lock.released()
        undertaker.released()
    else:
        sys.stdin.read()
"""


def a_flow_run() -> str:
    """A Running flow run on the test API, as a run's own would be."""

    @flow(name="undertaker-test")
    def nothing() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(nothing)
        client.set_flow_run_state(run.id, state=Running(), force=True)
    return str(run.id)


def state_of(run_id: str) -> State[Any]:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(run_id)).state
    assert state is not None
    return state


Start = Callable[[str, str, str], tuple[subprocess.Popen[str], int]]


@pytest.fixture
def start_run(tiny: Tiny) -> Iterator[Start]:
    """Start RUN: the process and its undertaker's pid."""
    started: list[subprocess.Popen[str]] = []

    def start(run_id: str, client_id: str, how: str) -> tuple[subprocess.Popen[str], int]:
        api_url = get_current_settings().api.url or ""
        process = subprocess.Popen(
            [sys.executable, "-c", RUN, str(tiny.settings.database), run_id, api_url, client_id,
             how],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        return process, int(process.stdout.readline())

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=30)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def ended(pid: int) -> bool:
    """Whether process `pid` (not our child) has ended."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"timed out: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def queue_ids(tiny: Tiny) -> list[str]:
    queue = tiny.sim.queue()
    return [entry[1] for entry in queue["queue_running"] + queue["queue_pending"]]


def post_prompt(tiny: Tiny, seed: int, client_id: str) -> str:
    posted = httpx.post(
        f"{tiny.sim_thread.url}/prompt", json={"prompt": graph(seed=seed), "client_id": client_id}
    )
    assert posted.status_code == 200, posted.text
    prompt_id: str = posted.json()["prompt_id"]
    return prompt_id


def test_a_killed_run_s_prompts_claims_and_flow_run_are_cleared_within_seconds(
    tiny: Tiny, start_run: Start
) -> None:
    run_id, client_id = a_flow_run(), uuid.uuid4().hex
    tiny.sim.faults.slow_steps(30.0)  # the first prompt runs, the rest wait
    ours = [post_prompt(tiny, seed, client_id) for seed in (1, 2)]
    others = post_prompt(tiny, 3, "another")
    process, undertaker = start_run(run_id, client_id, "kill")
    assert queue_ids(tiny) == [*ours, others]

    process.kill()
    took_s = wait_until(lambda: ended(undertaker), "the undertaker is done")

    assert took_s < 15, took_s
    assert tiny.store.running_jobs() == []
    for sentence in ("s1", "s2"):
        found = tiny.sentence(sentence)
        assert (found.status, found.image_dirty) == ("pending", True), sentence
        [job] = tiny.store.jobs_for(PROJECT, sentence)
        assert (job.attempt, job.error) == (1, RELEASED_ERROR)  # no attempt spent
    wait_until(lambda: queue_ids(tiny) == [others], "its prompts leave; another client's stays")
    assert tiny.sim.running is not None and tiny.sim.running.prompt_id == others
    assert not lock_path(run_id).exists()
    state = state_of(run_id)
    assert state.type == StateType.CRASHED
    assert "released 2 claim(s), still dirty" in (state.message or ""), state.message


def test_a_run_that_ends_cleanly_stands_its_undertaker_down(tiny: Tiny, start_run: Start) -> None:
    run_id = a_flow_run()
    process, undertaker = start_run(run_id, uuid.uuid4().hex, "clean")

    assert process.wait(timeout=30) == 0
    wait_until(lambda: ended(undertaker), "the undertaker is stood down")
    assert state_of(run_id).type == StateType.RUNNING  # not its business: the run ended well


def test_a_run_resumed_by_a_live_process_is_left_to_it(tiny: Tiny) -> None:
    run_id = a_flow_run()
    with RunLock(run_id, store=tiny.store):
        assert tiny.store.start_job("rp", "s1", run_id=run_id, attempt=1, stale_after_s=3600)
        lines = bury(run_id, tiny.settings.database, get_current_settings().api.url, {})

        assert lines == [
            f"run {run_id}: took 0 prompt(s) off its servers",
            f"run {run_id}: resumed by a live process; its claims are left to it",
        ]
        assert [job.sentence_id for job in tiny.store.running_jobs()] == ["s1"]
        assert state_of(run_id).type == StateType.RUNNING
        tiny.store.release_run(run_id)

"""The warm runner: on-demand deployment runs claimed from a real Prefect API and run in this
process, against a real simulator and a real DuckDB file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Pending
from prefect.utilities.engine import propose_state_sync

from flows import warm_runner
from flows.generate_image_flow import generate_image_flow
from flows.warm_runner import DeploymentMissingError, WarmRunner, serve
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.reliability import PROJECT, Tiny, make_tiny

pytestmark = pytest.mark.usefixtures("prefect_api")

WAIT_S = 60.0


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as opened:
        yield opened


@pytest.fixture
def deployment(client: SyncPrefectClient) -> str:
    """A deployment of generate-image of its own name, as `prefect deploy` would make it."""
    flow_id = client.create_flow_from_name("generate-image")
    name = f"on-demand-{time.monotonic_ns()}"
    client.create_deployment(
        flow_id=flow_id,
        name=name,
        entrypoint="flows/generate_image_flow.py:generate_image_flow",
    )
    return f"generate-image/{name}"


@pytest.fixture
def tiny(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> Iterator[Tiny]:
    yield make_tiny(tmp_path, monkeypatch, sim_thread)


@pytest.fixture
def sim_thread() -> Iterator[SimulatorThread]:
    # Renders of ~0.6 s: a run is still rendering when the test looks.
    with SimulatorThread(SimulatorConfig(steps=6, step_s=0.1)) as thread:
        yield thread


def request(client: SyncPrefectClient, deployment: str, sentence_id: str) -> UUID:
    """A scheduled run, due now, as the event's automation creates it."""
    deployment_id = client.read_deployment_by_name(deployment).id
    run = client.create_flow_run_from_deployment(
        deployment_id, parameters={"project_id": PROJECT, "sentence_id": sentence_id}
    )
    return run.id


def state_types(client: SyncPrefectClient, run_id: UUID) -> list[StateType]:
    return [state.type for state in client.read_flow_run_states(run_id)]


def wait_final(client: SyncPrefectClient, run_id: UUID) -> StateType:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_final():
            return state.type
        time.sleep(0.1)
    pytest.fail(f"flow run {run_id} did not finish in {WAIT_S:g} s")


def test_a_due_run_is_claimed_and_rendered_in_this_process(
    client: SyncPrefectClient, deployment: str, tiny: Tiny
) -> None:
    run_id = request(client, deployment, "s1")
    runner = WarmRunner(generate_image_flow, client, deployment, most=2)
    assert [run.id for run in runner.due()] == [run_id]

    assert runner.poll() == [run_id]
    assert runner.running() == [run_id]
    assert runner.close() == []

    assert state_types(client, run_id) == [
        StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.COMPLETED
    ]  # fmt: skip
    assert tiny.sentence("s1").status == "completed"
    assert tiny.image("s1").is_file()
    assert [job.attempt for job in tiny.store.jobs_for(PROJECT, "s1")] == [1]
    assert runner.due() == [] and runner.running() == []


def test_a_run_another_runner_claimed_first_is_left_to_it(
    client: SyncPrefectClient, deployment: str, tiny: Tiny
) -> None:
    run_id = request(client, deployment, "s1")
    runner = WarmRunner(generate_image_flow, client, deployment)
    [seen] = runner.due()
    # A worker (or a second runner) proposes PENDING between our poll and our claim.
    assert propose_state_sync(client, Pending(), flow_run_id=run_id).is_pending()

    assert runner.claim(seen) is False
    assert runner.poll() == []
    assert runner.close() == []
    assert client.read_flow_run(run_id).state_type == StateType.PENDING
    assert tiny.store.jobs_for(PROJECT, "s1") == []
    assert tiny.sim.runs == []


def test_no_more_than_most_run_at_once_and_the_rest_wait_for_a_later_poll(
    client: SyncPrefectClient, deployment: str, tiny: Tiny
) -> None:
    first, second = request(client, deployment, "s1"), request(client, deployment, "s2")
    runner = WarmRunner(generate_image_flow, client, deployment, most=1)

    assert runner.poll() == [first]
    assert runner.poll() == []  # the first still renders: no room
    assert client.read_flow_run(second).state_type == StateType.SCHEDULED
    assert wait_final(client, first) == StateType.COMPLETED
    deadline = time.monotonic() + WAIT_S
    while runner.free() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.poll() == [second]
    assert runner.close() == []
    assert wait_final(client, second) == StateType.COMPLETED
    assert {tiny.sentence(s).status for s in ("s1", "s2")} == {"completed"}


def test_a_run_still_going_when_the_runner_stops_is_marked_crashed(
    client: SyncPrefectClient, deployment: str, tiny: Tiny
) -> None:
    run_id = request(client, deployment, "s1")
    runner = WarmRunner(generate_image_flow, client, deployment)
    assert runner.poll() == [run_id]
    deadline = time.monotonic() + WAIT_S
    while client.read_flow_run(run_id).state_type != StateType.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert runner.close(wait_s=0.0) == [run_id]
    assert client.read_flow_run(run_id).state_type == StateType.CRASHED
    assert runner.close() == []  # its thread has ended: nothing of this test runs on


def test_serve_polls_until_stopped_and_a_failed_poll_is_tried_again(
    client: SyncPrefectClient,
    deployment: str,
    tiny: Tiny,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = WarmRunner(generate_image_flow, client, deployment)
    polls: list[str] = []
    real_due = runner.due

    def due_once_down() -> list[Any]:
        polls.append("poll")
        if len(polls) == 1:
            raise OSError("connection refused")  # the server restarting
        return real_due()

    monkeypatch.setattr(runner, "due", due_once_down)
    stop = threading.Event()
    # Polls every 0.5 s: faster ones queue on the test API's SQLite behind the run's own writes
    # (this test once took over 120 s on a loaded machine at 0.05 s).
    serving = threading.Thread(target=serve, args=(runner, stop, 0.5))
    serving.start()
    try:
        run_id = request(client, deployment, "s1")
        assert wait_final(client, run_id) == StateType.COMPLETED
    finally:
        stop.set()
        serving.join(timeout=WAIT_S)
    assert not serving.is_alive()
    assert runner.close() == []
    assert "poll of generate-image/" in caplog.text and "connection refused" in caplog.text
    assert len(polls) >= 2


def test_a_deployment_that_is_not_there_is_named_with_the_fix(client: SyncPrefectClient) -> None:
    with pytest.raises(DeploymentMissingError, match=r"'generate-image/nope'.*flows\.setup"):
        WarmRunner(generate_image_flow, client, "generate-image/nope")
    with pytest.raises(ValueError, match="most must be at least 1"):
        WarmRunner(generate_image_flow, client, "generate-image/nope", most=0)


def test_the_command_says_what_is_missing_in_one_line(
    tiny: Tiny, capsys: pytest.CaptureFixture[str]
) -> None:
    assert warm_runner.main(["--deployment", "generate-image/nope", "--poll-s", "0.1"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: no deployment 'generate-image/nope'") and out.count("\n") == 1


@pytest.mark.parametrize("argv", [["--poll-s", "0"], ["--most", "0"]])
def test_the_command_refuses_nonsense(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        warm_runner.main(argv)
    assert exited.value.code == 2
    assert "--poll-s must be positive" in capsys.readouterr().err


def test_the_command_says_when_the_prefect_api_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        assert warm_runner.main(["--poll-s", "0.1", "--most", "1"]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"error: the Prefect API at {dead}/ did not answer")
    assert "PREFECT_API_URL" in out and out.count("\n") == 1

"""Faults around the renders, through real `image-batch` runs on the Prefect test API against
the simulator with a real DuckDB store: a store that cannot record a failure (another process
holds it), a ComfyUI that stays away past the reconnect wait, a Prefect API whose artifact
calls fail mid-batch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import StateType

from flows.batch_report import RESULTS_KEY
from flows.cancel_watch import CANCEL_POLL_S
from flows.image_batch import image_batch
from storyboard.store import RELEASED_ERROR
from tests.support.flows import cancel_running, results_table, task_states
from tests.support.reliability import PROJECT, Tiny, decodes, prompt_of

pytestmark = pytest.mark.usefixtures("prefect_api")

WAIT_S = 60.0


def run_batch(**parameters: Any) -> Any:
    return image_batch(project_id=PROJECT, **parameters, return_state=True)


def rendering(tiny: Tiny, sentence_id: str) -> Callable[[], bool]:
    def check() -> bool:
        item = tiny.sim.running
        return item is not None and item.prompt_id in tiny.prompts_for(prompt_of(sentence_id))

    return check


@contextmanager
def when(condition: Callable[[], bool], action: Callable[[], None]) -> Iterator[None]:
    """Run `action` once, from a watcher thread, as soon as `condition()` holds."""
    stop, fired, failed = threading.Event(), threading.Event(), []

    def watch() -> None:
        try:
            while not stop.is_set():
                if condition():
                    action()
                    fired.set()
                    return
                time.sleep(0.005)
        except Exception as exc:  # surfaced by the test, not lost in the thread
            failed.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=WAIT_S)
    assert not failed, failed
    assert fired.is_set(), "the fault was never injected"


# Holds the DuckDB file (its lock) from "lock" to "unlock" on stdin: another process that
# keeps the store from being written, as a full disk or a stuck client would.
LOCK_ON_CUE = """
import os, sys, time, duckdb
print("ready", flush=True)
sys.stdin.readline()
# As a storyboard command waits for a batch's kept file: retry, leaving the waiting marker.
marker = sys.argv[1] + ".waiting"
while True:
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(0.02)
if os.path.exists(marker):
    os.remove(marker)
print("locked", flush=True)
sys.stdin.readline()
con.close()
print("unlocked", flush=True)
"""


def results_published(flow_run_id: str) -> bool:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RESULTS_KEY]))
        )
    return any(str(a.flow_run_id) == flow_run_id for a in found)


def test_a_failure_that_cannot_be_recorded_still_releases_the_runs_jobs(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_ATTEMPTS", "1")
    monkeypatch.setenv("STORYBOARD_STORE_LOCK_TIMEOUT_S", "2")
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "1.5")
    tiny.sim.faults.hang_next(1)  # s1 runs out of time: a failure to record, 1.5 s from now
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_ON_CUE, str(tiny.settings.database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"

    def hold_the_store_until_the_batch_reports() -> None:
        assert holder.stdin is not None and holder.stdout is not None
        run_id = tiny.store.jobs_for(PROJECT, "s1")[0].run_id
        holder.stdin.write("lock\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "locked"
        # The failure of s1 cannot be recorded now; let go once the batch has reported it,
        # that is, before it releases its jobs.
        deadline = time.monotonic() + WAIT_S
        while not results_published(run_id):
            assert time.monotonic() < deadline, "the batch never published its results"
            time.sleep(0.05)
        holder.stdin.write("unlock\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "unlocked"

    try:
        with when(rendering(tiny, "s1"), hold_the_store_until_the_batch_reports):
            state = run_batch(limit=1)
    finally:
        holder.kill()
        holder.communicate(timeout=30)  # also closes its pipes

    assert state.is_failed()
    outcome = results_table(state)["s1"]
    assert outcome["status"] == "failed" and "is still locked" in outcome["error"], outcome
    [job] = tiny.store.jobs_for(PROJECT, "s1")
    assert (job.status, job.error) == ("released", RELEASED_ERROR)
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("pending", True)


def test_comfyui_away_past_the_reconnect_wait_stops_the_feed_and_the_rest_stay_dirty(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_RECONNECT_WAIT_S", "1")
    sim = tiny.sim
    sim.faults.slow_steps(1.0)  # the first is still rendering when the server goes: 2 s a render

    def first_rendering_and_second_queued() -> bool:
        # Which sentence the feed submits first depends on which prepare finishes first.
        submitted = sum(tiny.submissions(sid) for sid in tiny.sentence_ids)
        return sim.running is not None and sim.queue_remaining() == 2 and submitted == 2

    with when(first_rendering_and_second_queued, lambda: sim.faults.refuse_connections(30)):
        state = run_batch()

    assert state.is_failed()
    message = str(state.message)
    assert message.startswith(f"ComfyUI at {tiny.settings.comfyui_url} stayed unreachable"), message
    assert "1 of 3 sentence(s) not attempted" in message, message
    on_server = [sid for sid in tiny.sentence_ids if tiny.submissions(sid)]
    (never_sent,) = set(tiny.sentence_ids) - set(on_server)
    statuses = {sid: row["status"] for sid, row in results_table(state).items()}
    assert statuses == {**dict.fromkeys(on_server, "failed"), never_sent: "not attempted"}
    for sid in on_server:  # on the server when it went away: that attempt failed, once
        jobs = tiny.store.jobs_for(PROJECT, sid)
        assert [j.status for j in jobs] == ["failed"], jobs
        assert tiny.submissions(sid) == 1
        assert tiny.sentence(sid).image_dirty
    # Claimed ahead at most, then released: no attempt spent on it.
    assert all(j.error == RELEASED_ERROR for j in tiny.store.jobs_for(PROJECT, never_sent))
    left = tiny.sentence(never_sent)
    assert (left.status, left.image_dirty) == ("pending", True)


def test_artifact_calls_failing_mid_batch_cost_no_render(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    tiny.sim.faults.slow_steps(0.2)  # long enough for progress updates during the batch

    calls: list[str] = []

    def api_down(*args: object, **kwargs: object) -> Any:
        calls.append("artifact call")
        raise httpx.ConnectError("[Errno 111] Connection refused (the Prefect API is down)")

    # Every call to the artifact routes, whichever client method makes it, is refused; the
    # run's other calls (its states, its logs) still go through.
    sync_request, async_request = SyncPrefectClient.request, PrefectClient.request

    def sync_down(
        self: SyncPrefectClient, method: Any, path: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if path.startswith("/artifacts"):
            return api_down()
        return sync_request(self, method, path, *args, **kwargs)

    async def async_down(
        self: PrefectClient, method: Any, path: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if path.startswith("/artifacts"):
            return api_down()
        return await async_request(self, method, path, *args, **kwargs)

    def take_the_artifact_api_down() -> None:
        monkeypatch.setattr(SyncPrefectClient, "request", sync_down)
        monkeypatch.setattr(PrefectClient, "request", async_down)

    with when(rendering(tiny, "s1"), take_the_artifact_api_down):
        state = run_batch()

    assert state.is_completed(), state.message
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("completed", False), sid
        assert decodes(tiny.image(sid))
        assert tiny.submissions(sid) == 1  # nothing rendered twice for a failed API call
        assert [j.status for j in tiny.store.jobs_for(PROJECT, sid)] == ["completed"]
    said = [r.getMessage() for r in caplog.records if "Prefect API" in r.getMessage()]
    # Said once, by the first call that found it gone: the run's one progress artifact
    # (renders make none of their own), updated after the outage began.
    assert len(said) == 1, said
    assert said[0].startswith("the Prefect API stopped answering (batch progress update:")
    assert "every picture is stored" in said[0]
    # No artifact call after that (each would wait out the client's retries): not the final
    # progress, the results table, the pictures or the summary.
    assert calls == ["artifact call"]


def test_the_cli_gets_into_the_store_a_batch_keeps_open(tiny: Tiny) -> None:
    # The batch keeps the DuckDB file open between its calls; a CLI command that meets the
    # lock leaves its marker, and the batch lets go for it (storyboard.store.connection).
    tiny.sim.faults.slow_steps(1.0)  # 2 s a render: the batch outlives the command
    answers: list[tuple[subprocess.CompletedProcess[str], float]] = []

    def ask_status() -> None:
        done = subprocess.run(
            [sys.executable, "-m", "storyboard.cli", "status"],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        answers.append((done, time.monotonic()))

    with when(lambda: tiny.sim.running is not None, ask_status):
        state = run_batch()
    ended = time.monotonic()

    assert state.is_completed(), state.message
    [(done, answered)] = answers
    assert done.returncode == 0, done.stderr
    assert PROJECT in done.stdout
    assert answered < ended  # while the batch still held the store


def test_a_cancel_from_prefect_stops_the_batch_within_seconds_the_rest_stays_dirty(
    tiny: Tiny,
) -> None:
    tiny.sim.faults.slow_steps(0.5)
    cancelled_at: list[float] = []

    def cancel() -> None:
        tiny.sim.faults.slow_steps(30.0)  # s2's next step outlasts the cancel: it lands in s2
        cancel_running("image-batch")
        cancelled_at.append(time.monotonic())

    with when(rendering(tiny, "s2"), cancel):
        state = run_batch()
    ended_s = time.monotonic() - cancelled_at[0]

    assert state.is_cancelled(), (state.name, state.message)
    assert state.message == (
        "cancelled from Prefect: 1 of 3 sentence(s) stored; the rest released, still dirty"
    )
    # One poll (CANCEL_POLL_S) and the stop, not the renders left (over 30 s).
    assert ended_s < CANCEL_POLL_S + 4.0, ended_s
    assert tiny.sentence("s1").status == "completed"
    for sid in ("s2", "s3"):
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("pending", True), sid
    assert tiny.store.running_jobs() == []
    assert [j.error for j in tiny.store.jobs_for(PROJECT, "s2")] == [RELEASED_ERROR]
    assert tiny.sim.queue() == {"queue_running": [], "queue_pending": []}  # ours are gone
    ran = {run.prompt_id for run in tiny.sim.runs}
    assert not ran & set(tiny.prompts_for(prompt_of("s3")))  # queued ahead, then taken off
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state is not None and run.state.type == StateType.CANCELLED
    # What it stored is published: its results table names s1 completed.
    rows = results_table(state)
    assert rows["s1"]["status"] == "completed"
    for sid in ("s2", "s3"):  # released, no attempt spent: not their failure
        assert (rows[sid]["status"], rows[sid]["error"]) == (
            "not attempted",
            "stopped with the run: released, still dirty",
        ), rows[sid]
    # The render the cancel stopped ends Cancelled, not Failed with an empty CancelledError.
    renders = task_states(state, "render-")
    assert renders[f"render-{PROJECT}-s2"] == StateType.CANCELLED, renders
    assert StateType.FAILED not in renders.values(), renders

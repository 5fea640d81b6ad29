"""Faults survived and bad input refused, through real `image-batch` / `generate-image` runs on
the Prefect test API against a misbehaving simulator, with a real DuckDB store. Retries have
no backoff; frames are tiny."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect.settings import get_current_settings

from flows.doctor_gpu import examine_gpu_limit
from flows.generate_image_flow import generate_image_flow
from flows.image_batch import image_batch
from storyboard.doctor import examine
from storyboard.errors import InvalidIdError, StoreError, WorkflowFormatError
from storyboard.simulator import ComfyUISimulator, SimulatorThread
from storyboard.store import Character, SentenceInput
from storyboard.store.upserts import MAX_PROMPT_CHARS
from tests.support.flows import results_table
from tests.support.paths import REPO
from tests.support.processes import ProcessTree
from tests.support.reliability import PROJECT, Tiny, carries, decodes, make_tiny, prompt_of

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_batch(**parameters: Any) -> Any:
    return image_batch(project_id=PROJECT, **parameters, return_state=True)


def assert_all_completed(tiny: Tiny) -> None:
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("completed", False), sid
        assert decodes(tiny.image(sid))


@contextmanager
def when(condition: Callable[[], bool], action: Callable[[], None]) -> Iterator[None]:
    """Run `action` once, from a watcher thread, as soon as `condition()` holds."""
    stop = threading.Event()
    fired = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if condition():
                action()
                fired.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert fired.is_set(), "the fault was never injected"


def rendering(sim: ComfyUISimulator, tiny: Tiny, sentence_id: str) -> Callable[[], bool]:
    """True while the simulator executes the prompt of `sentence_id`."""

    def check() -> bool:
        item = sim.running
        return item is not None and item.prompt_id in tiny.prompts_for(prompt_of(sentence_id))

    return check


def test_comfyui_down_at_start_fails_clearly_and_touches_nothing(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_STARTUP_WAIT_S", "1")
    tiny.sim.faults.refuse_connections(30)  # stopped before the batch; back after the test
    state = run_batch()
    assert state.is_failed()
    with pytest.raises(Exception, match="did not answer within 1 s") as raised:
        state.result()
    assert "No sentence was changed" in str(raised.value)
    for sid in tiny.sentence_ids:
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("pending", True)
        assert tiny.store.jobs_for(PROJECT, sid) == []
    assert tiny.sim.graphs == {}


def test_comfyui_down_mid_batch_and_back(tiny: Tiny) -> None:
    sim = tiny.sim
    sim.faults.slow_steps(0.5)  # the second renders long enough for the first to be stored
    stored_first: list[str] = []

    def one_stored_and_another_rendering() -> bool:
        # Which sentence goes first depends on which prepare finishes first. The simulator
        # first: a store read costs ~25 ms of CPU, and this is asked every 5 ms.
        if sim.running is None or not any(r.status == "success" for r in list(sim.runs)):
            return False
        done = [s.id for s in tiny.store.sentences(PROJECT) if s.status == "completed"]
        if len(done) == 1 and sim.running is not None:
            stored_first[:] = done
            return True
        return False

    with when(one_stored_and_another_rendering, lambda: sim.faults.refuse_connections(1.0)):
        state = run_batch()
    assert state.is_completed(), state.message
    assert_all_completed(tiny)
    [first] = stored_first
    assert tiny.submissions(first) == 1  # completed before the outage: not rendered again
    assert all(len(tiny.runs(sid, "success")) == 1 for sid in tiny.sentence_ids)
    assert sim.max_in_flight() <= 2  # flows.lane_feed.LANE_DEPTH


def test_websocket_dropped_mid_render_completes_with_one_submission(tiny: Tiny) -> None:
    tiny.sim.faults.drop_ws_next(1, after_steps=1)
    state = run_batch(limit=2)
    assert state.is_completed(), state.message
    assert [tiny.submissions(sid) for sid in ("s1", "s2")] == [1, 1]
    assert tiny.sentence("s1").status == "completed"


def test_one_execution_error_is_retried(tiny: Tiny) -> None:
    tiny.sim.faults.fail_next(1, "CUDA error: an illegal memory access")
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert tiny.sentence("s1").status == "completed"
    assert tiny.submissions("s1") == 2
    assert [r.status for r in tiny.runs("s1")] == ["error", "success"]
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert [(j.attempt, j.status) for j in jobs] == [(1, "failed"), (2, "completed")]
    assert "illegal memory access" in (jobs[0].error or "")
    # The failed attempt ran on the server before it failed: its GPU time is recorded too.
    assert jobs[0].render_s is not None and jobs[0].render_s >= 0.0
    gpu = state.result()["gpu"]
    assert gpu["attempts"] == 2
    assert gpu["failed_seconds"] == pytest.approx(jobs[0].render_s)


def test_a_model_file_the_server_cannot_load_fails_once_with_its_message(tiny: Tiny) -> None:
    # As the real server answers a diffusion model file that is not a safetensors model.
    tiny.sim.faults.fail_node_next("UNETLoader", 3)
    state = run_batch(limit=1)
    assert state.is_failed()
    assert tiny.submissions("s1") == 1
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert [(j.attempt, j.status) for j in jobs] == [(1, "failed")]
    assert "UNETLoader" in (jobs[0].error or "")
    assert "header too large" in (jobs[0].error or "")
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("failed", True)
    assert "header too large" in (sentence.last_error or "")


def test_out_of_memory_in_a_loader_is_retried(tiny: Tiny) -> None:
    tiny.sim.faults.fail_node_next(
        "UNETLoader",
        1,
        "Allocation on device \nThis error means you ran out of memory on your GPU.",
        "torch.OutOfMemoryError",
    )
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert tiny.submissions("s1") == 2
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert [(j.attempt, j.status) for j in jobs] == [(1, "failed"), (2, "completed")]
    assert "OutOfMemoryError" in (jobs[0].error or "")


def test_a_sentence_waiting_to_retry_does_not_hold_up_the_others(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_RETRY_BACKOFF_S", "2")
    s1, failed_once = prompt_of("s1"), threading.Event()

    def first_s1_render(graph: dict[str, Any]) -> bool:
        if carries(graph, s1) and not failed_once.is_set():
            failed_once.set()
            return True
        return False

    tiny.sim.faults.fail_matching(first_s1_render, "CUDA out of memory")
    state = run_batch()
    assert state.is_completed(), state.message
    assert_all_completed(tiny)
    order = {r.prompt_id: sid for sid in tiny.sentence_ids for r in tiny.runs(sid)}
    runs = [(order[r.prompt_id], r.status) for r in tiny.sim.runs]
    # s3 renders while s1 waits out its retry delay; s1 comes back last. (s1 and s2 are
    # submitted together, so which of them ComfyUI queued first is not ours to fix.)
    assert sorted(runs) == [
        ("s1", "error"),
        ("s1", "success"),
        ("s2", "success"),
        ("s3", "success"),
    ]
    assert runs.index(("s1", "error")) < runs.index(("s3", "success"))
    assert runs[-1] == ("s1", "success")


def test_an_unchanged_graph_reuses_its_picture_without_the_gpu(tiny: Tiny) -> None:
    tiny.store.update_sentence(PROJECT, "s1", seed=7)  # a fixed seed: the same graph again
    assert run_batch(limit=1).is_completed()
    first = Image.open(tiny.image("s1")).tobytes()

    tiny.store.mark_dirty(PROJECT, ["s1"])
    state = run_batch(limit=1)

    assert state.is_completed(), state.message
    assert "1 cached" in str(state.message)
    assert tiny.submissions("s1") == 1  # the second batch never asked ComfyUI
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("completed", False)
    assert Image.open(tiny.image("s1")).tobytes() == first  # same pixels, fresh provenance

    state = image_batch(project_id=PROJECT, limit=1, force=True, return_state=True)
    assert state.is_completed(), state.message
    assert tiny.submissions("s1") == 2  # `force` renders again


def test_two_sentences_waiting_to_retry_leave_the_lane_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread: SimulatorThread
) -> None:
    """The lane keeps feeding while two renders wait out their backoff: every other sentence
    reaches the server and finishes before either retry (the GPU does not idle the delay)."""
    tiny = make_tiny(tmp_path, monkeypatch, sim_thread, sentences=7)
    monkeypatch.setenv("STORYBOARD_RETRY_BACKOFF_S", "3")
    failed: list[str] = []
    lock = threading.Lock()

    def first_two_to_render(graph: dict[str, Any]) -> bool:
        with lock:
            sid = next(s for s in tiny.sentence_ids if carries(graph, prompt_of(s)))
            if len(failed) < 2 and sid not in failed:
                failed.append(sid)
                return True
            return False

    tiny.sim.faults.fail_matching(first_two_to_render, "CUDA out of memory")
    state = run_batch()
    assert state.is_completed(), state.message
    assert_all_completed(tiny)
    order = {r.prompt_id: sid for sid in tiny.sentence_ids for r in tiny.runs(sid)}
    runs = [(order[r.prompt_id], r.status) for r in tiny.sim.runs]
    assert len(failed) == 2 and [runs.count((sid, "error")) for sid in failed] == [1, 1]
    others = [sid for sid in tiny.sentence_ids if sid not in failed]
    last_other = max(runs.index((sid, "success")) for sid in others)
    first_retry = min(runs.index((sid, "success")) for sid in failed)
    assert last_other < first_retry, runs
    assert tiny.sim.max_in_flight() <= 2  # the retries took their places, never a third


def test_permanent_error_fails_after_exactly_the_attempts_and_the_rest_completes(
    tiny: Tiny,
) -> None:
    s1 = prompt_of("s1")
    tiny.sim.faults.fail_matching(lambda graph: carries(graph, s1), "model file is corrupt")
    state = run_batch(limit=2)
    assert state.is_failed()
    assert "1 of 2 sentence(s) failed" in str(state.message)
    failed = tiny.sentence("s1")
    assert (failed.status, failed.image_dirty) == ("failed", True)
    assert "model file is corrupt" in (failed.last_error or "")
    assert tiny.submissions("s1") == 3
    assert [j.attempt for j in tiny.store.jobs_for(PROJECT, "s1")] == [1, 2, 3]
    assert not tiny.image("s1").exists()
    assert tiny.sentence("s2").status == "completed"
    assert tiny.submissions("s2") == 1


def test_history_written_late_still_completes_once(tiny: Tiny) -> None:
    tiny.sim.faults.history_delay(0.6)
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert tiny.submissions("s1") == 1
    assert tiny.sentence("s1").status == "completed"


def test_render_stuck_past_the_timeout_is_interrupted_then_retried(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "1.5")
    tiny.sim.faults.hang_next(1)
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert [r.status for r in tiny.runs("s1")] == ["interrupted", "success"]
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert "did not finish within 1.5s" in (jobs[0].error or "")
    assert "interrupted" in (jobs[0].error or "")
    assert tiny.sentence("s1").status == "completed"


def test_corrupt_image_bytes_are_refused_and_retried(tiny: Tiny) -> None:
    tiny.sim.faults.corrupt_next(1)
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert tiny.submissions("s1") == 2
    jobs = tiny.store.jobs_for(PROJECT, "s1")
    assert "not a complete image" in (jobs[0].error or "")
    assert decodes(tiny.image("s1"))
    # The refused picture was rendered in full: that attempt's GPU time is on its job.
    assert jobs[0].status == "failed" and (jobs[0].render_s or 0.0) > 0.0


def test_comfyui_restarted_with_history_lost_mid_render(tiny: Tiny) -> None:
    sim = tiny.sim
    sim.faults.slow_steps(0.15)
    with when(rendering(sim, tiny, "s1"), lambda: sim.faults.restart()):
        state = run_batch(limit=2)
    assert state.is_completed(), state.message
    # s1 is lost with the restart (or, if it finished in the moment before, its history is):
    # either way it is rendered once more, and then stored.
    first, again = (r.status for r in tiny.runs("s1"))
    assert (first in ("lost", "success"), again) == (True, "success")
    # s2 may wait in ComfyUI's queue when it restarts, or have finished a moment before
    # with its history not read yet: either way it is lost and submitted again, never
    # charged an attempt.
    for sid in ("s1", "s2"):
        assert [j.attempt for j in tiny.store.jobs_for(PROJECT, sid)] == [1], sid
        assert tiny.sentence(sid).status == "completed"


def test_two_batches_at_once_never_render_a_sentence_twice(tiny: Tiny) -> None:
    tiny.sim.faults.slow_steps(0.05)
    states: list[Any] = []

    def batch() -> None:
        states.append(run_batch())

    threads = [threading.Thread(target=batch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(states) == 2
    assert_all_completed(tiny)
    assert [len(tiny.runs(sid, "success")) for sid in tiny.sentence_ids] == [1, 1, 1]
    assert tiny.sim.max_in_flight() <= 2  # one feeder per server, LANE_DEPTH deep


def test_prompt_edited_while_rendering_is_rendered_again_as_edited(tiny: Tiny) -> None:
    sim = tiny.sim
    sim.faults.slow_steps(0.15)
    edited = "the same scene, now at night"

    def edit() -> None:
        tiny.store.update_sentence(PROJECT, "s1", image_prompt=edited)

    with when(rendering(sim, tiny, "s1"), edit):
        state = run_batch(limit=1)
    assert state.is_completed(), state.message
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("completed", False)
    assert sentence.image_prompt == edited
    # The picture of the old prompt was recorded on its job, not as the sentence's picture.
    old, new = tiny.store.jobs_for(PROJECT, "s1")
    assert (old.status, new.status) == ("completed", "completed")
    assert old.revision < new.revision == sentence.image_revision
    assert len(tiny.prompts_for(edited)) == 1
    assert results_table(state)["s1"]["status"] == "completed"


def test_prompt_edited_after_the_batch_listed_it_is_rendered_as_edited(tiny: Tiny) -> None:
    # The batch reads every sentence once, when it lists them; its claim must notice an edit
    # made since and prepare that sentence again from the store.
    sim = tiny.sim
    sim.faults.slow_steps(0.15)
    edited = "the last sentence, rewritten while the first one rendered"

    def some_rendering() -> bool:
        return sim.running is not None

    def edit() -> None:
        tiny.store.update_sentence(PROJECT, "s3", image_prompt=edited)

    with when(some_rendering, edit):
        state = run_batch()
    assert state.is_completed(), state.message
    sentence = tiny.sentence("s3")
    assert (sentence.status, sentence.image_dirty) == ("completed", False)
    # Edited before its claim: prepared again from the store; after it: its picture of the
    # listed prompt is recorded stale and it is rendered again. Either way, once as edited.
    assert len(tiny.prompts_for(edited)) == 1
    assert tiny.submissions("s3") <= 1
    assert tiny.store.jobs_for(PROJECT, "s3")[-1].status == "completed"


def test_store_locked_by_another_process_is_waited_out(tiny: Tiny) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tiny.settings.database), "2.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        state = run_batch(limit=1)
        released_at = float(holder.stdout.readline())
    finally:
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert state.is_completed(), state.message
    assert tiny.sentence("s1").status == "completed"
    job = tiny.store.jobs_for(PROJECT, "s1")[0]
    assert job.started_at.timestamp() >= released_at  # it could only start once released


# Holds a DuckDB connection (the file lock) for argv[2] seconds, then reports when it let go.
LOCK_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
print(time.time(), flush=True)
"""


def test_orchestrator_killed_mid_batch_then_run_again(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch, processes: ProcessTree
) -> None:
    """A batch on a Prefect server killed with SIGKILL with its undertaker (an OOM kill of
    the whole service): the next batch takes over its claims and its lane slot at once, no
    attempt spent, and marks its flow run Crashed; the slot's lease would have kept the lane
    a minute longer."""
    # No timeout has to pass: the dead run's lock tells (storyboard.run_lock).
    monkeypatch.setenv("STORYBOARD_IMAGE_TIMEOUT_S", "3600")
    sim = tiny.sim
    sim.faults.slow_steps(0.5)
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}
    batch = subprocess.Popen(
        [sys.executable, "-m", "flows.image_batch"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    stored_first: list[str] = []

    def one_done_and_next_rendering() -> bool:
        running = sim.running
        if running is None:  # asked first: it costs nothing, a store read ~25 ms of CPU
            return False
        # Which sentence goes first depends on which prepare finishes first.
        done = [s.id for s in tiny.store.sentences(PROJECT) if s.status == "completed"]
        if len(done) != 1:
            return False
        if running.prompt_id in tiny.prompts_for(prompt_of(done[0])):
            return False
        stored_first[:] = done
        return True

    try:
        deadline = time.monotonic() + 60
        while not any(tiny.runs(sid, "success") for sid in tiny.sentence_ids):
            assert batch.poll() is None, "the batch ended before its first render"
            assert time.monotonic() < deadline, "the batch never rendered"
            time.sleep(0.01)
        # From now on a render outlasts the first one's recording however loaded the machine:
        # the kill lands with one sentence stored and the next rendering.
        sim.faults.slow_steps(3.0)
        while not one_done_and_next_rendering():
            assert batch.poll() is None, "the batch ended before it could be killed"
            assert time.monotonic() < deadline, "the batch never reached its second render"
            time.sleep(0.1)  # the window lasts a whole 6 s render
        # Its undertaker would clear its claims and its run at once (test_undertaker.py).
        [undertaker] = processes.running(batch.pid, "flows.undertaker")
        os.kill(undertaker, signal.SIGKILL)
        os.kill(batch.pid, signal.SIGKILL)
    finally:
        batch.kill()
        batch.wait(timeout=30)
    assert batch.returncode == -signal.SIGKILL
    sim.faults.slow_steps(0.01)

    try:
        # Left behind: jobs running for a dead run, their sentences `generating`, the gpu slot.
        stuck = [s for s in tiny.sentence_ids if tiny.sentence(s).status == "generating"]
        [first] = stored_first
        assert stuck and first not in stuck
        # Long before the image timeout, the doctor knows their run is dead.
        found = examine(tiny.store, tiny.data_dir, stale_after_s=3600)
        for sid in stuck:
            assert {("dead-run-job", sid), ("stale-sentence", sid)} <= {
                (f.kind, f.sentence_id) for f in found
            }, found
        slots = examine_gpu_limit("gpu", stale_after_s=2)
        assert slots.counted == 1 and slots.live == [] and slots.dead_runs, slots.lines()
        # Its lease lasts a minute past its death: with 20 s to get the slot, the next batch
        # could not wait for it to end.
        monkeypatch.setenv("STORYBOARD_QUEUE_TIMEOUT_S", "20")
        state = run_batch()
        assert state.is_completed(), state.message
        assert running_batches() == []  # the killed run is Crashed: it told the slot was dead
    finally:  # never leave the shared test API's lane blocked for the next tests
        crash_running_batches()
        examine_gpu_limit("gpu", stale_after_s=0, repair=True)

    assert_all_completed(tiny)
    assert len(tiny.runs(first, "success")) == 1  # completed before the kill: not redone
    for sid in stuck:  # taken over at once, no attempt spent
        jobs = tiny.store.jobs_for(PROJECT, sid)
        assert [(j.status, j.attempt) for j in jobs] == [("released", 1), ("completed", 1)]
    images = tiny.image(first).parent
    assert all(decodes(path) for path in images.glob("*.png"))
    assert examine(tiny.store, tiny.data_dir, stale_after_s=0) == []  # no temp file either
    after = examine_gpu_limit("gpu", stale_after_s=2)
    assert after.counted == 0 and after.healthy


def running_batches() -> list[str]:
    """The ids of the image-batch runs the test API has Running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["image-batch"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
    return [str(run.id) for run in runs]


def crash_running_batches() -> None:
    """Mark the SIGKILLed batch's flow run Crashed, as `prefect flow-run cancel` would.

    A killed process cannot report its end, so on the shared test API its run would stay
    Running forever, and later tests' doctor (rightly) counts a Running batch as a live holder.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    )
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=running):
            client.set_flow_run_state(run.id, Crashed(message="killed by the test"), force=True)


# -- from the server: answers that break the protocol ----------------------------------------

HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        pytest.param(
            {"status": 502, "body": HTML_502}, "POST /prompt answered 502: '<html>", id="html-5xx"
        ),
        pytest.param(
            {"status": 200, "body": "<html>ok</html>"}, "body that is not JSON", id="non-json-200"
        ),
        pytest.param(
            {"status": 200, "body": '{"number": 3}', "content_type": "application/json"},
            "answered 200 without a prompt_id",
            id="no-prompt-id",
        ),
    ],
)
def test_broken_answers_to_post_prompt_fail_the_sentence_clearly(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch, fault: dict[str, Any], message: str
) -> None:
    monkeypatch.setenv("STORYBOARD_ATTEMPTS", "2")
    tiny.sim.faults.answer_next("/prompt", 99, **fault)
    state = run_batch(limit=1)
    assert state.is_failed()
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("failed", True)
    assert message in (sentence.last_error or "")
    assert len(tiny.store.jobs_for(PROJECT, "s1")) == 2  # retryable: both attempts used
    assert tiny.sim.graphs == {} and not tiny.image("s1").exists()


def test_one_broken_answer_is_retried(tiny: Tiny) -> None:
    tiny.sim.faults.answer_next("/prompt", 1, status=502, body=HTML_502)
    state = run_batch(limit=1)
    assert state.is_completed(), state.message
    assert tiny.submissions("s1") == 1
    assert tiny.sentence("s1").status == "completed"


@pytest.mark.parametrize(
    ("fault", "max_bytes", "attempts", "message"),
    [
        pytest.param("bomb_next", None, 1, "decompression bomb", id="decompression-bomb"),
        pytest.param(None, 2000, 1, "larger than the download limit of 2000", id="over-size-cap"),
        pytest.param(
            "escape_name_next", None, 1, "unsafe output file name '../../x.png'", id="escaping-name"
        ),
    ],
)
def test_dangerous_outputs_are_refused_and_nothing_is_written(
    tiny: Tiny,
    monkeypatch: pytest.MonkeyPatch,
    fault: str | None,
    max_bytes: int | None,
    attempts: int,
    message: str,
) -> None:
    monkeypatch.setenv("STORYBOARD_ATTEMPTS", "2")
    if max_bytes is not None:
        monkeypatch.setenv("STORYBOARD_MAX_DOWNLOAD_BYTES", str(max_bytes))
    if fault is not None:
        getattr(tiny.sim.faults, fault)(1)
    state = run_batch(limit=1)
    assert state.is_failed()
    sentence = tiny.sentence("s1")
    assert (sentence.status, sentence.image_dirty) == ("failed", True)
    assert message in (sentence.last_error or "")
    assert tiny.submissions("s1") == attempts  # not retryable: one; retryable: every attempt
    assert not tiny.image("s1").exists()
    assert not list(tiny.data_dir.parent.rglob("x.png"))


# -- bad input through the flows -------------------------------------------------------------

HOSTILE = 'say "cheese" {x} %s $HOME \\ back\nline\ttab\x00nul 😀🎬 שלום مرحبا \u202ertl\u202c'
BIG = ("a long, detailed scene description; " * 3000)[:MAX_PROMPT_CHARS]  # the most taken


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_references_and_lora_are_refused_and_hostile_prompts_arrive_exactly(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBOARD_MAX_REFERENCE_BYTES", "20000")
    refs = tiny.data_dir / "projects" / PROJECT / "refs"
    refs.mkdir(parents=True)
    good = noise_png(8)
    (refs / "good.png").write_bytes(good)
    (refs / "notes.png").write_bytes(b"these are my notes, not a picture")
    (refs / "huge.png").write_bytes(noise_png(128))  # about 49 kB
    secret = noise_png(9)
    (tmp_path / "secret.png").write_bytes(secret)
    (refs / "link.png").symlink_to(tmp_path / "secret.png")  # points outside the project
    cases = {  # sentence -> (character reference, expected refusal)
        "b1": ("refs/missing.png", "does not exist"),
        "b2": ("refs/notes.png", "is not a readable image"),
        "b3": ("refs/huge.png", "more than the limit of 20000"),
        "b4": ("refs/link.png", "outside the project directory"),
    }
    characters = [
        Character(id=f"c{sid}", project_id=PROJECT, name=sid, reference_images=[ref])
        for sid, (ref, _) in cases.items()
    ]
    characters.append(
        Character(id="cgood", project_id=PROJECT, name="good", reference_images=["refs/good.png"])
    )
    sentences = [
        SentenceInput(id=sid, project_id=PROJECT, position=10 + i, text=sid,
                      image_prompt=prompt_of(sid), character_ids=[f"c{sid}"])
        for i, sid in enumerate(cases)
    ]  # fmt: skip
    sentences += [
        SentenceInput(id="b5", project_id=PROJECT, position=20, text="b5",
                      image_prompt=prompt_of("b5"), lora_name="missing_style.safetensors"),
        SentenceInput(id="h1", project_id=PROJECT, position=21, text="h1", image_prompt=HOSTILE,
                      character_ids=["cgood"]),
        SentenceInput(id="h2", project_id=PROJECT, position=22, text="h2", image_prompt=BIG),
    ]  # fmt: skip
    tiny.store.upsert(characters=characters, sentences=sentences)
    state = image_batch(project_id=PROJECT, return_state=True)

    assert state.is_failed()
    assert "5 of 10 sentence(s) failed" in str(state.message)
    for sid, (_, message) in cases.items():
        sentence = tiny.sentence(sid)
        assert (sentence.status, sentence.image_dirty) == ("failed", True)
        assert message in (sentence.last_error or ""), sentence.last_error
        assert len(tiny.store.jobs_for(PROJECT, sid)) == 1  # not retried
        assert tiny.submissions(sid) == 0 and not tiny.image(sid).exists()
    lora = tiny.sentence("b5")
    assert lora.status == "failed" and "missing_style.safetensors" in (lora.last_error or "")
    assert "is not on the server; available: " in (lora.last_error or "")  # what it has instead
    assert "noir_v1.safetensors" in (lora.last_error or "")
    assert tiny.submissions("b5") == 0
    uploaded = {tiny.sim.files.read_input(name) for name in tiny.sim.files.input_files()}
    assert uploaded == {good}  # nothing outside the project, nothing refused, was uploaded
    for sid, prompt in (("h1", HOSTILE), ("h2", BIG)):
        assert len(tiny.prompts_for(prompt)) == 1, sid  # the exact string reached ComfyUI
        assert tiny.sentence(sid).status == "completed" and decodes(tiny.image(sid))


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "x" * 65, "\u0440roject"])
def test_unsafe_ids_as_flow_parameters_are_refused(tiny: Tiny, bad: str) -> None:
    batch = image_batch(project_id=bad, return_state=True)
    single = generate_image_flow(project_id=PROJECT, sentence_id=bad, return_state=True)
    for state, what in ((batch, "project id"), (single, "sentence id")):
        assert state.is_failed()
        with pytest.raises(InvalidIdError, match=f"invalid {what}"):
            state.result()
    assert tiny.sim.graphs == {}
    assert all(tiny.store.jobs_for(PROJECT, sid) == [] for sid in tiny.sentence_ids)


def test_a_blank_prompt_given_to_generate_image_is_refused(tiny: Tiny) -> None:
    before = tiny.sentence("s1")
    state = generate_image_flow(project_id=PROJECT, sentence_id="s1", prompt=" \n ",
                                return_state=True)  # fmt: skip
    assert state.is_failed()
    with pytest.raises(StoreError, match="empty or only whitespace"):
        state.result()
    assert tiny.sentence("s1") == before and tiny.sim.graphs == {}


def test_a_workflow_file_that_is_not_json_fails_the_batch_before_any_sentence(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "exported.json"
    broken.write_text("{'single': 'quotes'}", encoding="utf-8")
    monkeypatch.setenv("STORYBOARD_WORKFLOW", str(broken))
    state = run_batch()
    assert state.is_failed()
    with pytest.raises(WorkflowFormatError, match=r"not JSON.*Export \(API\)"):
        state.result()
    assert all(tiny.sentence(sid).status == "pending" for sid in tiny.sentence_ids)
    assert tiny.sim.graphs == {}

"""image-batch over several ComfyUI servers (STORYBOARD_COMFYUI_URLS), one simulator per lane
on loopback, a real store and the Prefect test API: every lane busy, each sentence rendered
once, a lost lane's sentences finished by the others, a held lane taken when it frees up,
LoRAs kept warm on their lanes, a mixed farm routed."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from flows.image_batch import image_batch
from storyboard.lane_lock import LaneLock
from storyboard.scheduler import pacing
from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.simulator.config import DEFAULT_MODELS
from storyboard.store import RELEASED_ERROR, ImageJob, Store
from storyboard.store.models import Project, SentenceInput
from tests.support.clients import graph
from tests.support.flows import results_table, storyboard_env

# Two to four simulators and a batch in each test.
pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

PROJECT = "farm"
NOIR = "storyboard_noir_v1.safetensors"
WATERCOLOR = "storyboard_watercolor_v1.safetensors"
LANES: list[str] = []  # the lane names of the running test (farm)
_BATCHES = itertools.count()


@pytest.fixture
def sims() -> Iterator[list[SimulatorThread]]:
    """Two simulated servers (a, b), 4 steps of 20 ms a picture."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(SimulatorThread(SimulatorConfig(steps=4, step_s=0.02)))
            for _ in range(2)
        ]


def farm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims: list[SimulatorThread],
    count: int,
    loras: tuple[str, ...] = (NOIR,),
    **env: str,
) -> Store:
    """A project of `count` sentences without characters, LoRAs in turn; lanes a<n>, b<n>."""
    # Lane names (so Prefect limits) of this test alone: the test API is shared by the session.
    LANES[:] = [f"{chr(97 + i)}{next(_BATCHES)}" for i in range(len(sims))]
    urls = ",".join(f"{name}={sim.url}" for name, sim in zip(LANES, sims, strict=True))
    settings = storyboard_env(
        monkeypatch,
        tmp_path / "data",
        sims[0].url,
        **{"STORYBOARD_COMFYUI_URLS": urls, "STORYBOARD_RECONNECT_WAIT_S": "0.5", **env},
    )
    store = Store(settings.database)
    store.upsert_projects([Project(id=PROJECT, name="Farm")])
    store.upsert_sentences(
        [
            SentenceInput(
                id=f"s{n:02d}",
                project_id=PROJECT,
                position=n,
                text=f"Sentence {n}.",
                image_prompt=f"A lighthouse, picture {n}",
                lora_name=loras[n % len(loras)],
            )
            for n in range(count)
        ]
    )
    return store


def run_batch() -> Any:
    state = image_batch(project_id=PROJECT, return_state=True)
    # However it ended, the batch gave back every lane's slot it took.
    with get_client(sync_client=True) as client:
        for tag in (f"gpu-{name}" for name in LANES):
            limit = client.read_global_concurrency_limit_by_name(f"tag:{tag}")
            assert limit.active_slots == 0, (tag, limit.active_slots)
    return state


def rendered_by(sim: SimulatorThread) -> list[str]:
    """The sentences (by prompt text) each successful run of `sim` drew, in order."""
    found = []
    for run in sim.sim.runs:
        if run.status != "success":
            continue
        graph = sim.sim.graphs[run.prompt_id]
        texts = [
            node["inputs"]["text"]
            for node in graph.values()
            if node.get("class_type") == "CLIPTextEncode"
            and "picture" in str(node["inputs"].get("text"))
        ]
        found.extend(texts)
    return found


def loras_of(sim: SimulatorThread) -> list[str]:
    names = []
    for run in sim.sim.runs:
        graph = sim.sim.graphs[run.prompt_id]
        names.extend(
            node["inputs"]["lora_name"]
            for node in graph.values()
            if node.get("class_type") == "LoraLoaderModelOnly"
        )
    return names


def assert_each_once(store: Store, sims: list[SimulatorThread], count: int) -> None:
    drawn = [text for sim in sims for text in rendered_by(sim)]
    assert sorted(drawn) == sorted(f"A lighthouse, picture {n}" for n in range(count))
    for sentence in store.sentences(PROJECT):
        assert sentence.status == "completed", (sentence.id, sentence.last_error)
        assert not sentence.image_dirty


def test_every_lane_renders_some_each_sentence_once_two_prompts_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    store = farm(tmp_path, monkeypatch, sims, 10)

    state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 10)
    for sim in sims:
        assert rendered_by(sim), "a lane rendered nothing"
        assert sim.sim.max_in_flight() <= 2  # flows.lane_feed.LANE_DEPTH
    jobs = [job for s in store.sentences(PROJECT) for job in store.jobs_for(PROJECT, s.id)]
    assert [(j.attempt, j.status) for j in jobs] == [(1, "completed")] * 10
    # Each job names the lane it ran on; the run's GPU time is reported per lane.
    by_lane = {lane: [j for j in jobs if j.lane == lane] for lane in LANES}
    assert sum(len(found) for found in by_lane.values()) == 10
    gpu_lanes = state.result()["gpu_lanes"]
    assert set(gpu_lanes) == set(LANES)
    for lane, found in by_lane.items():
        assert gpu_lanes[lane]["attempts"] == len(found)
        assert gpu_lanes[lane]["seconds"] == pytest.approx(sum(j.render_s or 0 for j in found))


def test_a_lane_lost_mid_batch_the_other_finishes_its_sentences_no_attempt_spent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims: list[SimulatorThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    for sim in sims:
        sim.sim.faults.slow_steps(0.05)
    # The lost lane's sentences go to the other after the hand-off, not the reconnect wait
    # (ten minutes: past this test's timeout).
    store = farm(
        tmp_path,
        monkeypatch,
        sims,
        10,
        STORYBOARD_RECONNECT_WAIT_S="600",
        STORYBOARD_LANE_HANDOFF_S="0.5",
    )
    doomed = sims[1]

    def kill_when_rendering() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not doomed.sim.runs:
            time.sleep(0.01)
        if doomed.sim.runs:
            doomed.sim.faults.refuse_connections(3600)

    killer = threading.Thread(target=kill_when_rendering, daemon=True)
    killer.start()
    state = run_batch()
    killer.join(5)

    assert state.is_completed(), state.message
    # Every sentence has exactly one completed picture; none was drawn twice by a live lane.
    drawn = rendered_by(sims[0]) + rendered_by(doomed)
    given_back: list[ImageJob] = []
    assert len(set(drawn)) == 10
    assert len(rendered_by(sims[0])) + len(rendered_by(doomed)) == len(drawn)
    for sentence in store.sentences(PROJECT):
        assert sentence.status == "completed", (sentence.id, sentence.last_error)
        jobs = store.jobs_for(PROJECT, sentence.id)
        completed = [j for j in jobs if j.status == "completed"]
        assert [j.attempt for j in completed] == [1]
        # An attempt the lost lane held is released; at most its server's own transient
        # failure (a refused connection, retried on the spot) shows, never another's.
        lost = [j.error or "" for j in jobs if j.status == "failed"]
        assert all(doomed.url in error for error in lost), lost
        given_back.extend(j for j in jobs if j.status == "released")
    # What the lost lane held went back unfailed: a released job, not a failed one.
    assert given_back and all(j.error == RELEASED_ERROR for j in given_back), given_back
    rows = results_table(state)
    assert {row["status"] for row in rows.values()} == {"completed"}
    assert all(row["attempts"] == 1 for row in rows.values())
    # Nothing failed, so nothing is logged as an error (a lane set aside is a warning).
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


def test_every_lane_lost_stops_the_batch_the_rest_stays_dirty_naming_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    for sim in sims:
        sim.sim.faults.slow_steps(0.05)
    store = farm(tmp_path, monkeypatch, sims, 12)

    def kill_both() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(s.sim.runs for s in sims):
            time.sleep(0.01)
        if all(s.sim.runs for s in sims):
            for sim in sims:
                sim.sim.faults.refuse_connections(3600)

    killer = threading.Thread(target=kill_both, daemon=True)
    killer.start()
    state = run_batch()
    killer.join(5)

    assert state.is_failed()
    assert "not attempted" in (state.message or "")
    assert any(sim.url in (state.message or "") for sim in sims)
    left = [s for s in store.sentences(PROJECT) if s.image_dirty]
    assert left
    assert all(s.status == "pending" for s in left)
    assert store.running_jobs() == []


def test_a_lane_held_by_another_process_is_skipped_then_taken_when_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    # 2 s a picture: lane a alone would take ~32 s, far longer than the freed lane needs to be
    # retried (LANE_RETRY_S) and to start, even when taking its slot stalls for the whole
    # SLOT_TRY_S (15 s) before the one-by-one fallback, as it did once on a busy machine.
    for sim in sims:
        sim.sim.faults.slow_steps(0.5)
    store = farm(tmp_path, monkeypatch, sims, 16)
    held = sims[1]
    lock = LaneLock(held.url, "another-run", wait_s=0.0)
    lock.__enter__()
    released_at: list[float] = []

    def release_later() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not sims[0].sim.runs:
            time.sleep(0.01)
        released_at.append(time.monotonic())
        lock.__exit__(None, None, None)

    releaser = threading.Thread(target=release_later, daemon=True)
    releaser.start()
    try:
        state = run_batch()
    finally:
        releaser.join(5)
        lock.__exit__(None, None, None)

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 16)
    assert released_at and sims[0].sim.runs
    assert rendered_by(held), "the freed lane never joined"
    # Nothing reached the held lane before the other process let go of it.
    assert all(run.start >= released_at[0] for run in held.sim.runs)


def switches(names: list[str]) -> int:
    return sum(1 for a, b in itertools.pairwise(names) if a != b)


@pytest.mark.usefixtures("no_feeder_runs")
def test_a_lane_whose_slot_a_server_restart_left_counted_is_freed_and_fed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims: list[SimulatorThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = farm(tmp_path, monkeypatch, sims, 8)
    with get_client(sync_client=True) as client:
        # What a restart leaves on lane b: its slot counted, no lease, no run holding it.
        client.create_concurrency_limit(tag=f"gpu-{LANES[1]}", concurrency_limit=1)
        client.update_global_concurrency_limit(
            f"tag:gpu-{LANES[1]}", GlobalConcurrencyLimitUpdate(active_slots=1)
        )

    with caplog.at_level(logging.WARNING):
        state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 8)
    assert rendered_by(sims[1]), "the lane whose slot was left counted never fed"
    assert f"lane {LANES[1]!r}: freed its slot" in caplog.text


def test_sentences_of_one_lora_stay_on_one_lane_warm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    store = farm(tmp_path, monkeypatch, sims, 16, loras=(NOIR, WATERCOLOR))

    state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 16)
    seen = [loras_of(sim) for sim in sims]
    # Interleaved in the storyboard (15 switches in order); each lane sees long runs.
    assert sum(switches(names) for names in seen) <= 2, seen
    assert all(names for names in seen)


def test_a_mixed_farm_sends_a_lora_only_where_it_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    without_noir = {**DEFAULT_MODELS, "loras": [WATERCOLOR]}
    sims[1].sim.config.models = without_noir
    store = farm(tmp_path, monkeypatch, sims, 8, loras=(NOIR, WATERCOLOR))

    state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 8)
    assert NOIR not in loras_of(sims[1])


def test_a_sentence_no_lane_can_render_fails_before_queueing_naming_each_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    store = farm(tmp_path, monkeypatch, sims, 3)
    store.update_sentence(PROJECT, "s01", lora_name="nowhere_v9.safetensors")

    state = run_batch()

    assert state.is_failed()
    failed = store.get_sentence(PROJECT, "s01")
    assert failed.status == "failed" and failed.image_dirty
    error = failed.last_error or ""
    assert "nowhere_v9.safetensors" in error and "no lane can render it" in error
    assert all(f"lane {name!r}" in error for name in LANES) and NOIR in error
    assert all("nowhere" not in str(loras_of(sim)) for sim in sims)
    assert results_table(state)["s01"]["status"] == "failed"


def test_a_lane_whose_prompts_fail_server_side_is_set_aside_the_other_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    broken = sims[1]
    broken.sim.faults.answer_next("/prompt", 1000, status=500, body="upstream down")
    store = farm(tmp_path, monkeypatch, sims, 12, STORYBOARD_ATTEMPTS="1")

    state = run_batch()

    rows = results_table(state)
    failed = {sid for sid, row in rows.items() if row["status"] == "failed"}
    # Three failures in a row on the broken lane, then it is left alone (COOL_DOWN_S).
    assert len(failed) == 3, rows
    assert all("500" in (rows[sid]["error"] or "") for sid in failed)
    assert broken.sim.runs == []
    for sentence in store.sentences(PROJECT):
        if sentence.id not in failed:
            assert sentence.status == "completed", (sentence.id, sentence.last_error)
    assert len(rendered_by(sims[0])) == 12 - len(failed)


def test_a_dry_run_validates_on_each_lane_that_could_render_and_uploads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    sims[1].sim.config.models = {**DEFAULT_MODELS, "loras": [WATERCOLOR]}
    store = farm(tmp_path, monkeypatch, sims, 4, loras=(NOIR, WATERCOLOR))
    store.update_sentence(PROJECT, "s03", lora_name="nowhere_v9.safetensors")

    state = image_batch(project_id=PROJECT, dry_run=True, return_state=True)

    assert state.is_failed()
    rows = results_table(state)
    assert {sid: row["status"] for sid, row in rows.items()} == {
        "s00": "valid",
        "s01": "valid",
        "s02": "valid",
        "s03": "invalid",
    }
    assert "no lane can render it" in (rows["s03"]["error"] or "")
    assert all(sim.sim.runs == [] and sim.sim.files.input_files() == [] for sim in sims)
    assert all(s.status == "pending" for s in store.sentences(PROJECT))


def test_fast_renders_are_claimed_and_recorded_in_groups_each_sentence_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    store = farm(tmp_path, monkeypatch, sims, 40)
    # Groups of what a lane renders in 30 s: as large as they get, however loaded the machine.
    monkeypatch.setattr(pacing, "GROUP_AHEAD_S", 30.0)
    groups: dict[str, list[int]] = {"start_jobs": [], "complete_jobs": []}
    for name, sizes in groups.items():
        real = getattr(Store, name)

        def spy(self: Store, rows: Any, *args: Any, _real: Any = real, _sizes: Any = sizes,
                **kwargs: Any) -> Any:  # fmt: skip
            _sizes.append(len(rows))  # a spy on the real call: the store still does the work
            return _real(self, rows, *args, **kwargs)

        monkeypatch.setattr(Store, name, spy)

    state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 40)
    for sentence in store.sentences(PROJECT):
        assert [(j.attempt, j.status) for j in store.jobs_for(PROJECT, sentence.id)] == [
            (1, "completed")
        ]
    assert sum(groups["start_jobs"]) == 40 and sum(groups["complete_jobs"]) == 40
    # Once two renders have finished, a lane claims and records several per store call.
    assert max(groups["start_jobs"]) > 1, groups
    assert max(groups["complete_jobs"]) > 1, groups
    assert len(groups["start_jobs"]) + len(groups["complete_jobs"]) < 80, groups


def test_every_lane_sends_its_first_prompt_before_any_lane_sends_its_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a batch's start no lane claims and prepares its second sentence before every lane
    has sent its first (storyboard.scheduler.pacing.StartLine): the first renders go out first."""
    with ExitStack() as stack:
        four = [
            stack.enter_context(SimulatorThread(SimulatorConfig(steps=4, step_s=0.25)))
            for _ in range(4)
        ]
        store = farm(tmp_path, monkeypatch, four, 12)
        # Each claim, with how many lanes had a prompt on their server when it was made.
        claims: list[tuple[int, int]] = []
        real = Store.start_jobs

        def spy(self: Store, rows: Any, *args: Any, **kwargs: Any) -> Any:
            claims.append((len(rows), sum(1 for sim in four if sim.sim.graphs)))
            return real(self, rows, *args, **kwargs)

        monkeypatch.setattr(Store, "start_jobs", spy)
        state = run_batch()
    assert state.is_completed(), state.message
    assert_each_once(store, four, 12)
    # One claim per lane before the last lane's first prompt went out, not a second as well.
    assert sum(n for n, sent in claims if sent < len(four)) == len(four), claims


def hang_with_a_prompt_of_someone_else(sim: SimulatorThread) -> str:
    """`sim` runs another client's prompt that never ends (a hung node): its queue stops."""
    sim.sim.faults.hang_next(1)
    answer = httpx.post(
        f"{sim.url}/prompt", json={"prompt": graph(seed=99), "client_id": "someone-else"}
    )
    hung: str = answer.json()["prompt_id"]
    deadline = time.monotonic() + 10
    while sim.sim.running is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.sim.running is not None
    return hung


def test_a_stuck_lane_is_set_aside_its_sentences_go_to_the_other_no_attempt_spent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sims: list[SimulatorThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck = sims[1]
    hung = hang_with_a_prompt_of_someone_else(stuck)
    store = farm(tmp_path, monkeypatch, sims, 8, STORYBOARD_STALL_S="1")

    state = run_batch()

    assert state.is_completed(), state.message
    assert_each_once(store, sims, 8)
    assert len(rendered_by(sims[0])) == 8
    assert [run.prompt_id for run in stuck.sim.runs] == []  # the hung one never ends
    assert [row[1] for row in stuck.sim.queue()["queue_running"]] == [hung]
    assert stuck.sim.queue()["queue_pending"] == []  # ours were taken off its queue
    for sentence in store.sentences(PROJECT):
        jobs = store.jobs_for(PROJECT, sentence.id)
        assert [j.status for j in jobs if j.status != "released"] == ["completed"], jobs
        assert all(j.error == RELEASED_ERROR for j in jobs if j.status == "released")
    assert all(row["attempts"] == 1 for row in results_table(state).values())
    aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert any(f"ComfyUI at {stuck.url} is stuck" in line for line in aside), aside


def test_one_stuck_lane_ends_the_batch_naming_the_server_the_rest_stays_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sims: list[SimulatorThread]
) -> None:
    stuck = sims[0]
    hang_with_a_prompt_of_someone_else(stuck)
    store = farm(tmp_path, monkeypatch, [stuck], 4, STORYBOARD_STALL_S="1")

    began = time.monotonic()
    state = run_batch()

    assert time.monotonic() - began < 30  # not the queue budget: an hour
    assert state.is_failed()
    message = state.message or ""
    assert f"ComfyUI at {stuck.url} is stuck" in message, message
    assert "STORYBOARD_STALL_S" in message and "not attempted, still dirty" in message
    assert all(s.image_dirty for s in store.sentences(PROJECT))
    assert store.running_jobs() == []
    assert stuck.sim.queue()["queue_pending"] == []

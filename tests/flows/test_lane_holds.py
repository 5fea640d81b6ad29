"""A batch over several lanes holds the free ones together: their locks, and their slots as one
lease of the run; a lane another run holds is left, lock and all (real Prefect test API)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, StateType
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.sync import concurrency
from prefect.states import Crashed, Running

from flows import gpu_limit
from flows.cancel_watch import CancelRequested
from flows.doctor_gpu import examine_gpu_limit
from flows.gpu_limit import ensure_lane_limits, tag_limits, try_hold_lanes
from storyboard.errors import LaneBusyError
from storyboard.lane import Lane
from storyboard.lane_lock import probe
from storyboard.store import Store

pytestmark = pytest.mark.usefixtures("prefect_api")
LOG = logging.getLogger("tests.lane_holds")
# How old each case's lease is (lease: 60 s).
AGE = {
    "expired": timedelta(seconds=90),
    "ended": timedelta(0),
    "fresh": timedelta(seconds=5),
    "none": timedelta(0),
}


def lanes(count: int) -> list[Lane]:
    """Lanes of servers and tags no other test uses (locks and limits are shared)."""
    key = uuid.uuid4().hex[:8]
    return [
        Lane(
            f"lane{k}",
            f"http://127.0.0.1:1/{key}/{k}",
            f"ws://127.0.0.1:1/{key}/{k}/ws",
            limit_tag=f"gpu-{key}-{k}",
        )
        for k in range(count)
    ]


def active(client: SyncPrefectClient, lane: Lane) -> int:
    return client.read_global_concurrency_limit_by_name(f"tag:{lane.limit_tag}").active_slots


Hold = Callable[[Lane], AbstractContextManager[None]]


@pytest.fixture
def other_run_holds() -> Hold:
    """Another machine's run holding one lane's slot (its lock is on that machine)."""

    def hold(lane: Lane) -> AbstractContextManager[None]:
        holder = ConcurrencyLeaseHolder(type="flow_run", id=uuid.uuid4())
        return concurrency(
            names=[f"tag:{lane.limit_tag}"],
            occupy=1,
            lease_duration=60,
            strict=True,
            holder=holder,
        )

    return hold


def test_the_free_lanes_are_held_together_and_a_taken_one_is_left(other_run_holds: Hold) -> None:
    a, b, c = farm = lanes(3)
    ensure_lane_limits([lane.limit_tag for lane in farm], LOG)
    run_id = str(uuid.uuid4())
    with get_client(sync_client=True) as client, other_run_holds(b):
        held, taken = try_hold_lanes(farm, run_id, lease_s=60, logger=LOG)
        with held:
            assert taken == [a, c]
            assert [active(client, lane) for lane in farm] == [1, 1, 1]
            assert probe(a.comfyui_url).held and probe(c.comfyui_url).held
            assert not probe(b.comfyui_url).held  # the taken lane's lock went back at once
        assert [active(client, lane) for lane in farm] == [0, 1, 0]
        assert not probe(a.comfyui_url).held and not probe(c.comfyui_url).held


def test_a_slot_taken_after_the_read_leaves_the_others_held_one_by_one(
    other_run_holds: Hold, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server grants a lease over several limits whole or not at all: one slot taken
    between our read and our write fails it, and the lanes are then tried one by one."""
    a, b, c = farm = lanes(3)
    ensure_lane_limits([lane.limit_tag for lane in farm], LOG)

    def read_too_early(client: SyncPrefectClient) -> dict[str, GlobalConcurrencyLimitResponse]:
        found = tag_limits(client)
        return {**found, b.limit_tag: found[b.limit_tag].model_copy(update={"active_slots": 0})}

    monkeypatch.setattr(gpu_limit, "tag_limits", read_too_early)
    # Short for the lease over all three, which cannot succeed; long enough for one lane's
    # on a loaded machine (a try that times out while the server grants it keeps nothing).
    monkeypatch.setattr(gpu_limit, "SLOT_TRY_S", 5.0)
    with get_client(sync_client=True) as client, other_run_holds(b):
        held, taken = try_hold_lanes(farm, str(uuid.uuid4()), lease_s=60, logger=LOG)
        with held:
            assert taken == [a, c]
            assert [active(client, lane) for lane in farm] == [1, 1, 1]
            assert not probe(b.comfyui_url).held
        assert [active(client, lane) for lane in farm] == [0, 1, 0]


def test_lanes_another_batch_here_holds_are_left_without_asking_the_api() -> None:
    farm = lanes(2)
    ensure_lane_limits([lane.limit_tag for lane in farm], LOG)
    with try_hold_lanes(farm, str(uuid.uuid4()), lease_s=60, logger=LOG)[0]:
        held, taken = try_hold_lanes(farm, str(uuid.uuid4()), lease_s=60, logger=LOG)
        with held:
            assert taken == []


def test_limits_missing_or_changed_by_hand_are_set_back_to_one() -> None:
    _missing, changed, fine = farm = lanes(3)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=changed.limit_tag, concurrency_limit=3)
        client.create_concurrency_limit(tag=fine.limit_tag, concurrency_limit=1)
        ensure_lane_limits([lane.limit_tag for lane in farm], LOG)
        limits = tag_limits(client)
    assert [limits[lane.limit_tag].limit for lane in farm] == [1, 1, 1]


def test_a_count_a_dead_process_left_is_freed_and_its_lane_held_with_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On the ephemeral API a killed batch leaves its slot counted with no lease behind it;
    holding the lane lock, the next batch frees that count and holds the lane like the rest.
    The test API is a server, so its branch for the ephemeral API is switched on."""
    a, b = farm = lanes(2)
    ensure_lane_limits([lane.limit_tag for lane in farm], LOG)
    monkeypatch.setattr(gpu_limit, "is_ephemeral", lambda: True)
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            f"tag:{b.limit_tag}", GlobalConcurrencyLimitUpdate(active_slots=1)
        )
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            held, taken = try_hold_lanes(farm, str(uuid.uuid4()), lease_s=60, logger=LOG)
        with held:
            assert taken == [a, b]
            assert [active(client, lane) for lane in farm] == [1, 1]
        assert [active(client, lane) for lane in farm] == [0, 0]
    freed = [r.getMessage() for r in caplog.records if "held by no live run" in r.getMessage()]
    assert len(freed) == 1 and b.limit_tag in freed[0], freed


def test_a_batch_waiting_for_a_taken_slot_says_so_every_few_seconds_with_the_repair(
    other_run_holds: Hold, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gpu_limit, "WAIT_LINE_S", 0.5)
    [lane] = lanes(1)
    ensure_lane_limits([lane.limit_tag], LOG)
    caplog.set_level(logging.INFO, logger=LOG.name)

    with (
        other_run_holds(lane),
        pytest.raises(LaneBusyError, match="doctor_gpu --repair"),
        gpu_limit.hold_lane(lane, str(uuid.uuid4()), wait_s=5, lease_s=60, logger=LOG),
    ):
        pytest.fail("the slot was taken by another run")

    waiting = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(waiting) >= 2, waiting  # not one silent wait of the whole bound
    assert all(gpu_limit.REPAIR_COMMAND in line and lane.limit_tag in line for line in waiting)
    assert not probe(lane.comfyui_url).held  # its lock went back with the wait


def test_a_batch_waiting_for_a_taken_slot_ends_at_a_cancel_letting_go_of_the_lane(
    other_run_holds: Hold,
) -> None:
    [lane] = lanes(1)
    ensure_lane_limits([lane.limit_tag], LOG)
    cancelled = threading.Event()
    cancelled.set()  # by the cancel watch: the wait's first try is its last

    began = time.monotonic()
    with (
        other_run_holds(lane),
        pytest.raises(CancelRequested),
        gpu_limit.hold_lane(
            lane, str(uuid.uuid4()), wait_s=3600, lease_s=60, logger=LOG, cancelled=cancelled
        ),
    ):
        pytest.fail("the slot was taken by another run")
    waited_s = time.monotonic() - began

    assert waited_s < gpu_limit.WAIT_LINE_S + 3.0, waited_s  # not the hour
    assert not probe(lane.comfyui_url).held  # its lock went back with the wait


@pytest.mark.parametrize("lease", ["expired", "ended", "fresh", "none"])
def test_the_doctor_tells_a_running_feeder_dead_or_live_by_its_lease_not_its_state(
    tmp_path: Path, lease: str
) -> None:
    """A Prefect server restart leaves a killed batch's run Running: its lease in the store
    tells. Dead ones are named and, on repair, marked Crashed; with no lease it stays live."""
    [lane] = lanes(1)
    ensure_lane_limits([lane.limit_tag], LOG)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow(name="image-batch")(lambda: None), state=Running())
    store = Store(tmp_path / "store.duckdb", clock=lambda: datetime.now(UTC) - AGE[lease])
    if lease != "none":
        store.renew_lease(str(run.id), host="gpu-box-2", pid=4242)
    if lease == "ended":
        store.end_lease(str(run.id))

    report = examine_gpu_limit(
        lane.limit_tag, stale_after_s=600, repair=True, lanes=[], store=store, lease_s=60
    )

    dead = any(str(run.id) in line for line in report.dead)
    live = any(str(run.id) in line for line in report.live)
    assert (dead, live) == ((True, False) if lease in ("expired", "ended") else (False, True))
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state is not None and state.type == (StateType.CRASHED if dead else StateType.RUNNING)
    if not dead:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Crashed(message="test over"), force=True)

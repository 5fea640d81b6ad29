"""Lane health (storyboard.scheduler.health): every dead-lane, give-back, cool-down and rejoin
rule, event by event, on an injected clock."""

from __future__ import annotations

from concurrent.futures import CancelledError

import pytest

from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIExecutionError,
    ComfyUIServerError,
    ComfyUITimeoutError,
    ComfyUIUnavailableError,
    WorkflowError,
)
from storyboard.scheduler.health import (
    COOL_DOWN_S,
    DEAD_AFTER,
    LaneDown,
    LaneHealth,
    Verdict,
    Waits,
    stranded,
    waits,
)
from storyboard.scheduler.work_queue import Item, WorkQueue

SERVER_SIDE = [
    ComfyUIConnectionError("refused"),
    ComfyUIServerError("500", 500),
    ComfyUITimeoutError("slow"),
]
KEEPS = Verdict(give_back=False, set_aside=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(shared: bool = True) -> tuple[LaneHealth, Clock]:
    clock = Clock()
    return LaneHealth(shared=shared, clock=clock), clock


@pytest.mark.parametrize("exc", SERVER_SIDE, ids=lambda e: type(e).__name__)
def test_dead_after_server_side_failures_in_a_row_the_last_reported_the_rest_given_back(
    exc: Exception,
) -> None:
    lane, _ = health()
    for _ in range(DEAD_AFTER - 1):
        assert lane.render_failed(exc) == KEEPS  # the sentence's own failure, reported
        assert lane.down is None and not lane.lane_down.is_set()
    # The one that sets the lane aside is still reported: it failed before the lane was down.
    assert lane.render_failed(exc) == Verdict(give_back=False, set_aside=True)
    assert isinstance(lane.down, LaneDown)
    assert f"{DEAD_AFTER} server-side failures in a row" in str(lane.down)
    assert lane.lane_down.is_set()
    # What ends on it afterwards goes back to the queue; the prompts are cancelled once only.
    assert lane.render_failed(exc) == Verdict(give_back=True, set_aside=False)
    assert lane.render_failed(CancelledError()) == Verdict(give_back=True, set_aside=False)


def test_a_failing_prepare_that_sets_the_lane_aside_is_given_back() -> None:
    lane, _ = health()
    exc = ComfyUIServerError("502", 502)
    for _ in range(DEAD_AFTER - 1):
        assert lane.prepare_failed(exc) == KEEPS
    assert lane.prepare_failed(exc) == Verdict(give_back=True, set_aside=True)


def test_a_success_resets_the_count_and_sentence_faults_do_not_count() -> None:
    lane, _ = health()
    exc = ComfyUITimeoutError("slow")
    for _ in range(DEAD_AFTER - 1):
        lane.render_failed(exc)
    lane.succeeded()
    for _ in range(DEAD_AFTER - 1):
        lane.render_failed(exc)
    assert lane.down is None
    # Faults of the sentence (its workflow, its execution) neither count nor reset.
    for own in (
        WorkflowError("bad"),
        ComfyUIExecutionError(
            "oom", node_id="3", node_type="KSampler", exception_message="out of memory"
        ),
    ):
        assert lane.render_failed(own) == KEEPS
    assert lane.down is None
    assert lane.render_failed(exc).set_aside


def test_each_feed_counts_failures_in_a_row_afresh() -> None:
    lane, _ = health()
    for _ in range(DEAD_AFTER - 1):
        lane.render_failed(ComfyUIConnectionError("refused"))
    lane.start_feed()
    lane.render_failed(ComfyUIConnectionError("refused"))
    assert lane.down is None


def test_an_unreachable_server_sets_the_lane_aside_at_once_and_its_sentence_goes_back() -> None:
    lane, _ = health()
    gone = ComfyUIUnavailableError("no answer past the reconnect wait")
    assert lane.render_failed(gone) == Verdict(give_back=True, set_aside=True)
    assert lane.down is gone
    assert lane.withholds(ComfyUIServerError("500", 500))  # the lane is down: nothing recorded


def test_tasks_withhold_only_the_lanes_failures() -> None:
    lane, _ = health()
    assert lane.withholds(ComfyUIUnavailableError("gone"))
    assert not lane.withholds(ComfyUIServerError("500", 500))
    assert not lane.withholds(WorkflowError("bad"))
    single, _ = health(shared=False)
    assert not single.withholds(ComfyUIUnavailableError("gone"))  # nowhere to give it back


def test_one_lane_reports_its_failures_and_ends_only_when_unreachable() -> None:
    lane, _ = health(shared=False)
    for _ in range(DEAD_AFTER * 2):
        assert lane.render_failed(ComfyUIServerError("500", 500)) == KEEPS
    assert lane.down is None
    gone = ComfyUIUnavailableError("gone")
    # The feed ends, the sentence is reported (nowhere else to go) and no prompt is cancelled.
    assert lane.render_failed(gone) == KEEPS
    assert lane.down is gone and not lane.lane_down.is_set()
    assert lane.leftover() == "not attempted"
    assert lane.leftover(WorkflowError("bad")) == "fail"  # its own prepare failure stands
    assert lane.set_aside() is False  # no rejoining: the batch has no other lane


def test_a_shared_lane_gives_back_what_it_took_and_did_not_send() -> None:
    lane, _ = health()
    lane.render_failed(ComfyUIUnavailableError("gone"))
    assert lane.leftover() == "give back"
    assert lane.leftover(ComfyUIServerError("500", 500)) == "give back"


def test_a_lane_failing_prompts_cools_down_before_its_probes_then_rejoins() -> None:
    lane, clock = health()
    for _ in range(DEAD_AFTER):
        lane.render_failed(ComfyUIServerError("500", 500))
    assert not lane.aside  # its feed is winding down: it still holds its sentences
    assert lane.set_aside() is True
    assert lane.aside
    assert lane.cool_down_left() == COOL_DOWN_S
    clock.now += COOL_DOWN_S - 1
    assert lane.cool_down_left() == 1
    clock.now += 1
    assert lane.cool_down_left() == 0  # probes start
    lane.answered()
    assert (lane.down, lane.aside, lane.lane_down.is_set()) == (None, False, False)
    # Back with a clean slate: DEAD_AFTER more failures in a row to be set aside again.
    for _ in range(DEAD_AFTER - 1):
        assert lane.render_failed(ComfyUIServerError("500", 500)) == KEEPS
    assert lane.render_failed(ComfyUIServerError("500", 500)).set_aside


def test_an_unreachable_lane_is_probed_at_once() -> None:
    lane, _ = health()
    lane.render_failed(ComfyUIUnavailableError("gone"))
    lane.set_aside()
    assert lane.cool_down_left() == 0


def test_a_feeding_lane_has_no_cool_down() -> None:
    lane, _ = health()
    assert lane.cool_down_left() == 0 and not lane.aside


def items(lanes: str) -> list[Item[str]]:
    """One item per letter: the lanes that can render it."""
    return [Item(n, f"s{n}", n, frozenset(names)) for n, names in enumerate(lanes.split())]


def test_the_batch_is_stranded_once_no_feeding_lane_can_render_what_is_left() -> None:
    queue = WorkQueue(items("a ab b"))
    assert not stranded(queue, started=False, feeding=[])  # nothing started yet: wait
    assert not stranded(queue, started=True, feeding=["a"])
    assert stranded(queue, started=True, feeding=[])  # every held lane set aside
    first = queue.take("a")
    assert first is not None
    assert not stranded(queue, started=True, feeding=["c"])  # one is out: it may come back
    queue.settle(first)
    assert stranded(queue, started=True, feeding=["c"])  # c can render none of the rest
    while (item := queue.take("b")) is not None:
        queue.settle(item)
    assert queue.finished
    assert not stranded(queue, started=True, feeding=[])  # done, not stranded


def test_one_lane_waits_out_the_reconnect_several_hand_off_then_wait_the_rest() -> None:
    assert waits(1, reconnect_wait_s=180, handoff_s=30) == Waits(180, 0)
    assert waits(3, reconnect_wait_s=180, handoff_s=30) == Waits(30, 150)
    assert waits(2, reconnect_wait_s=10, handoff_s=30) == Waits(10, 0)  # never longer

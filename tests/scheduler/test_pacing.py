"""Pacing (storyboard.scheduler.pacing): how many sentences a lane claims and records per store
call, and the start line of a batch's first prompts."""

from __future__ import annotations

from storyboard.scheduler.pacing import GroupSize, StartLine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_groups_cover_about_a_second_of_renders_at_the_recent_pace() -> None:
    clock = Clock()
    sizes = GroupSize(ahead_s=1.0, most=16, clock=clock)
    assert sizes.size == 1  # nothing finished yet: a lane filling its pipeline claims one
    sizes.finished()
    assert sizes.size == 1  # one render says nothing about the pace
    for _ in range(20):
        clock.now += 0.1
        sizes.finished()
    assert sizes.size == 10
    for _ in range(20):  # renders slow down: back to one per call
        clock.now += 2.0
        sizes.finished()
    assert sizes.size == 1


def test_group_size_is_bounded() -> None:
    clock = Clock()
    sizes = GroupSize(ahead_s=1.0, most=16, clock=clock)
    sizes.finished()
    sizes.finished()  # two at the same instant (cached pictures)
    assert sizes.size == 16
    for _ in range(30):
        clock.now += 0.001
        sizes.finished()
    assert sizes.size == 16


def test_groups_are_as_large_as_allowed_when_renders_finish_at_once() -> None:
    clock = Clock()
    sizes = GroupSize(ahead_s=1.0, most=16, clock=clock)
    sizes.finished()
    sizes.finished()  # no time between two finished renders: all cached, say
    assert sizes.size == 16


def test_the_start_line_holds_a_lane_only_while_another_is_before_its_first_prompt() -> None:
    line = StartLine()
    # Waits that would hang the test (pytest's timeout) if the line held a lane in vain.
    line.wait(lambda: False, wait_s=60)  # nobody starting: no wait
    line.join("a")
    line.join("b")
    line.leave("a")  # a has sent its first prompt
    line.wait(lambda: True, wait_s=60)  # its own first render has ended: no wait either
    line.leave("b")
    line.wait(lambda: False, wait_s=60)  # every lane has sent its first


def test_a_lane_waits_at_the_start_line_at_most_its_wait() -> None:
    line = StartLine()
    line.join("slow")
    line.wait(lambda: False, wait_s=0.0)  # returns: the lane goes on without the slow one

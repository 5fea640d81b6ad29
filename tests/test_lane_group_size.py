"""How many sentences a lane claims and records per store call (flows.lane_feed.GroupSize)."""

from __future__ import annotations

from flows.lane_groups import GroupSize


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

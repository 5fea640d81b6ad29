"""The on-demand lane choice among the lanes' answers (storyboard.scheduler.lane_load)."""

from __future__ import annotations

import pytest

from storyboard.lane import Lane
from storyboard.scheduler.lane_load import LaneLoad, least_loaded


def lane_of(name: str, url: str) -> Lane:
    return Lane(name=name, comfyui_url=url, ws_url="ws" + url.removeprefix("http") + "/ws")


def test_ties_go_to_the_fewest_pending_then_to_the_configured_order() -> None:
    a, b, c = (lane_of(name, f"http://127.0.0.1:{port}") for name, port in
               (("a", 1), ("b", 2), ("c", 3)))  # fmt: skip
    assert least_loaded([LaneLoad(a, 0, 2), LaneLoad(b, 1, 1), LaneLoad(c, 1, 2)]).lane is b
    assert least_loaded([LaneLoad(a, 1, 0), LaneLoad(b, 0, 1)]).lane is a
    assert least_loaded([LaneLoad(a, 1, 1), LaneLoad(b, 1, 1)]).lane is a
    assert least_loaded([LaneLoad(a, 3, 0), LaneLoad(b, 0, 0)]).lane is b


def test_no_answer_is_no_choice() -> None:
    with pytest.raises(ValueError, match="at least one lane"):
        least_loaded([])

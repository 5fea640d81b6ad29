"""The render size of a frame and the graph one image job queues."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storyboard.workflow import graph_for_job, render_size


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ((1920, 1080), (1920, 1088)),
        ((1280, 720), (1280, 720)),
        ((1366, 768), (1376, 768)),
        ((3840, 2160), (3840, 2160)),
        ((1, 1), (16, 16)),
    ],
)
def test_render_size_rounds_each_side_up_to_16(
    frame: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert render_size(*frame) == expected


@given(st.integers(1, 9000), st.integers(1, 9000))
def test_render_size_covers_the_frame_and_is_idempotent(w: int, h: int) -> None:
    rw, rh = render_size(w, h)
    assert rw % 16 == rh % 16 == 0
    assert w <= rw < w + 16 and h <= rh < h + 16
    assert render_size(rw, rh) == (rw, rh)


def test_render_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        render_size(0, 1080)


def test_graph_for_job_prefixes_only_save_image_outputs_and_leaves_the_graph_alone() -> None:
    graph = {
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "storyboard"}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "filename_prefix": "not-an-output"}},
    }
    queued = graph_for_job(graph, "job-1")
    assert queued["9"]["inputs"]["filename_prefix"] == "storyboard-job-1"
    assert queued["3"] == graph["3"]
    assert graph["9"]["inputs"]["filename_prefix"] == "storyboard"  # a copy was edited

"""A render's progress lines: queued and started at INFO as they come, steps at DEBUG, rarely.

A real simulator on loopback and a real LaneSession: the events arrive on the session's loop
thread, the lines are logged by the thread that waits for the render (this test's).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from storyboard.comfyui import Event, Progress
from storyboard.lane import Lane, LaneSession
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tasks import progress as progress_module
from tasks.progress import RenderProgress
from tests.support.clients import graph

STEPS = 20


@pytest.fixture
def server() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(steps=STEPS, step_s=0.1)) as thread:
        yield thread


def test_lines_come_as_the_render_goes_and_steps_are_rare_debug_lines(
    server: SimulatorThread,
) -> None:
    steps_seen = 0
    info: list[tuple[str, int]] = []  # each line with the steps seen when it was logged
    debug: list[str] = []
    progress = RenderProgress(
        "p/s1", lambda line: info.append((line, steps_seen)), debug=debug.append
    )

    def on_event(event: Event) -> None:
        nonlocal steps_seen
        if isinstance(event, Progress):
            steps_seen += 1
        progress.on_event(event)

    with LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5) as session:
        result = progress.wait(session.start_run(graph(seed=1), timeout_s=30, on_event=on_event))
    progress.flush_lines()

    assert result.images
    assert [line for line, _ in info] == ["p/s1: queued on ComfyUI (position 0)", "p/s1: started"]
    # Woken by the event, not by a timer: "started" was logged while the sampler ran.
    assert info[1][1] < STEPS
    # A 2 s render is shorter than STEP_LOG_S: no step line but the one at its end.
    assert len(debug) <= 2
    assert debug[-1] == f"p/s1: step {STEPS}/{STEPS}"


def test_a_long_render_logs_its_step_every_step_log_s(
    server: SimulatorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "STEP_LOG_S", 0.5)
    debug: list[str] = []
    progress = RenderProgress("p/s2", lambda _: None, debug=debug.append)
    with LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5) as session:
        progress.wait(session.start_run(graph(seed=2), timeout_s=30, on_event=progress.on_event))

    # About four in a 2 s render: bounded by time, not one per step.
    assert 2 <= len(debug) < STEPS / 2
    assert len(set(debug)) == len(debug)  # a step that did not move is not logged again

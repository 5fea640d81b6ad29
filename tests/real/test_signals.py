"""Scenario 6: Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM to a
running `storyboard render` on the embedded Prefect API, against a real ComfyUI."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.prefect_db import QUIET_PREFECT
from tests.support.processes import ProcessTree
from tests.support.real import (
    ComfyUI,
    jobs,
    popen_storyboard,
    sentence_states,
    storyboard,
    storyboard_env,
    wait_for,
)

INTERRUPTED = "image-batch: interrupted; its unfinished sentences stay dirty"


@pytest.mark.parametrize(
    ("name", "send", "code"),
    [
        ("ctrl-c", lambda pid: os.killpg(pid, signal.SIGINT), 130),
        ("sigterm", lambda pid: os.kill(pid, signal.SIGTERM), 143),
    ],
)
def test_a_signal_ends_render_at_once_leaving_nothing_behind(
    shared_comfyui: ComfyUI,
    tmp_path: Path,
    figure: Callable[[str], None],
    processes: ProcessTree,
    name: str,
    send: Callable[[int], None],
    code: int,
) -> None:
    data = tmp_path / "data"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        QUIET_PREFECT, PREFECT_HOME=str(tmp_path / "prefect-home")
    )  # the embedded API, as users run
    env = storyboard_env(base, data, shared_comfyui.url)
    assert storyboard("seed-demo", env=env).returncode == 0
    log = tmp_path / "render.log"
    batch = popen_storyboard("render", "lighthouse", env=env, log=log)

    def rendering() -> bool:
        assert batch.poll() is None, log.read_text()
        return bool(shared_comfyui.get("/queue")["queue_running"])

    wait_for(rendering, "a render on the server", timeout=300)
    started = processes.descendants(batch.pid)
    assert started, "the embedded Prefect API runs as a child process"
    sent_at = time.monotonic()
    send(batch.pid)
    batch.wait(timeout=60)
    took = time.monotonic() - sent_at

    output = log.read_text()
    assert batch.returncode == code, output
    assert INTERRUPTED in output.splitlines(), output
    assert "Traceback" not in output, output
    assert took < 10, f"{took:.1f} s to exit"
    queue = shared_comfyui.get("/queue")
    assert queue["queue_running"] == [] and queue["queue_pending"] == [], queue
    assert "generating" not in sentence_states(data).values()
    assert not [row for row in jobs(data) if row["status"] == "running"]
    wait_for(
        lambda: not any(processes.alive(pid) for pid in started), "its children to end", timeout=10
    )
    figure(
        f"{name}: exit {code} {took:.1f} s after the signal, server queue empty, "
        f"nothing generating, {len(started)} child process(es) gone"
    )

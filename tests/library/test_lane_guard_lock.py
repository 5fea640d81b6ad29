"""The lane lock itself: one holder per server URL, a bounded wait naming the holder, freed by
the kernel when its holder is killed, and a lock folder nobody else can plant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from storyboard.errors import ConfigError, LaneBusyError
from storyboard.lane_lock import LaneLock, lock_path, normalise_url, probe


def a_url() -> str:
    """A server URL no other test uses (the lock folder is shared by the whole machine)."""
    return f"http://127.0.0.1:1/{uuid.uuid4().hex}"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://localhost:8188", "http://127.0.0.1:8188/"),
        ("http://LOCALHOST:8188/", "http://[::1]:8188"),
        ("http://gpu-box", "HTTP://gpu-box:80"),
        ("https://gpu-box/comfy/", "https://gpu-box:443/comfy"),
    ],
)
def test_spellings_of_one_server_share_one_lock(one: str, other: str) -> None:
    assert normalise_url(one) == normalise_url(other)
    assert lock_path(one) == lock_path(other)


def test_other_servers_have_other_locks() -> None:
    assert lock_path("http://127.0.0.1:8188") != lock_path("http://127.0.0.1:8189")
    assert lock_path("http://gpu-a:8188") != lock_path("http://gpu-b:8188")


def test_a_held_lane_is_waited_for_within_the_bound_then_names_its_holder() -> None:
    url = a_url()
    told: list[object] = []
    with LaneLock(url, "run-a", wait_s=1):
        assert probe(url).held
        started = time.monotonic()
        with (
            pytest.raises(LaneBusyError) as caught,
            LaneLock(url, "run-b", wait_s=0.4, on_wait=told.append),
        ):
            pass
        waited = time.monotonic() - started
    message = str(caught.value)
    assert f"pid {os.getpid()}, flow run run-a" in message
    assert "STORYBOARD_QUEUE_TIMEOUT_S" in message
    assert 0.4 <= waited < 3
    assert len(told) == 1
    state = probe(url)
    assert not state.held and state.holder is not None and state.holder.run_id == "run-a"
    with LaneLock(url, "run-b", wait_s=0):  # free again: taken at once
        pass


HOLDER = """
import sys, time
from storyboard.lane_lock import LaneLock
with LaneLock(sys.argv[1], "killed-run", wait_s=5):
    print("held", flush=True)
    time.sleep(60)
"""


def test_the_kernel_frees_the_lane_of_a_killed_holder() -> None:
    url = a_url()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        state = probe(url)
        assert state.held and state.holder is not None and state.holder.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    started = time.monotonic()
    with LaneLock(url, "next-run", wait_s=2):
        assert time.monotonic() - started < 1
    after = probe(url)
    assert after.holder is not None and after.holder.run_id == "next-run"


def test_a_lock_folder_that_is_a_link_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / f"storyboard-lanes-{os.getuid()}").symlink_to(elsewhere)

    with pytest.raises(ConfigError, match="not a directory of this user"):
        LaneLock(a_url(), "run", wait_s=0).__enter__()
    assert list(elsewhere.iterdir()) == []

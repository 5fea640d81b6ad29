"""Test-wide isolation: no test reads the user's configuration or Prefect home."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports prefect, so no test touches ~/.prefect or phones home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="storyboard-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
# Every process a test starts inherits this mark (tests build child environments from
# os.environ), so one that outlives the session is found even after it was re-parented.
SESSION_MARK = "SB_TEST_SESSION"  # no STORYBOARD_ prefix: tests strip those from child envs
os.environ[SESSION_MARK] = uuid.uuid4().hex
for _name in list(os.environ):
    if _name.startswith("STORYBOARD_") or _name in (
        "COMFYUI_URL",
        "COMFYUI_WS_URL",
    ):
        del os.environ[_name]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: spread over the workers from the start, they do not leave one
    worker finishing a long test while the others are idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API (subprocess server + SQLite) for the whole session.

    Defined here, once: a session fixture imported into several modules would start one
    harness per module, nested inside each other.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


class ProcessTree:
    """What /proc says of processes: a command's children, and whether one still runs."""

    @staticmethod
    def descendants(pid: int) -> set[int]:
        """Every process below `pid` (the parent pid is field 4 of /proc/N/stat)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        found: set[int] = set()
        todo = [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    @staticmethod
    def alive(pid: int) -> bool:
        """Running, not a zombie waiting for its parent to read its status."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def processes() -> ProcessTree:
    return ProcessTree()


# How long processes stopped by the last teardowns get to exit before they count as left.
LEFT_BEHIND_WAIT_S = 15.0


def _started_by_session(mark: str) -> set[int]:
    """Live processes (other than this one) that are this process's descendants or carry
    this session's mark in the environment they were started with."""
    me = os.getpid()
    found = {pid for pid in ProcessTree.descendants(me) if ProcessTree.alive(pid)}
    needle = f"{SESSION_MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ.split(b"\0") and ProcessTree.alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="session", autouse=True)
def nothing_outlives_the_session() -> Iterator[None]:
    """Fails the run when a process a test started (a Prefect API, a simulator, a ComfyUI, a
    batch) is still alive once every fixture has stopped; those left are then killed."""
    yield
    mark = os.environ[SESSION_MARK]
    deadline = time.monotonic() + LEFT_BEHIND_WAIT_S
    left = _started_by_session(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _started_by_session(mark)
    if not left:
        return
    described = [f"{pid}: {_command(pid)}" for pid in sorted(left)]
    for pid in left:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
    pytest.fail("processes started by tests outlived the session:\n" + "\n".join(described))

"""Test-wide isolation: no test reads the user's configuration or Prefect home."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports prefect, so no test touches ~/.prefect or phones home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="storyboard-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
for _name in list(os.environ):
    if _name.startswith("STORYBOARD_") or _name in ("COMFYUI_URL", "COMFYUI_WS_URL"):
        del os.environ[_name]


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

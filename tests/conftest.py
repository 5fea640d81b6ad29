"""Test-wide isolation: no test reads the user's configuration or Prefect home."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

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

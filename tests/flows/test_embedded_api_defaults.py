"""A flow called directly from a fresh process gets the embedded API's start limit and no
telemetry, as `storyboard render` does: both come from importing the `flows` package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO

READ_SETTINGS = (
    "import {module}\n"
    "from prefect.settings import get_current_settings\n"
    "server = get_current_settings().server\n"
    "print(server.ephemeral.startup_timeout_seconds, server.analytics_enabled)\n"
)

pytestmark = pytest.mark.slow  # flows on an embedded API, in processes of their own


def settings_in_fresh_process(module: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    done = subprocess.run(
        [sys.executable, "-c", READ_SETTINGS.format(module=module)],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("module", ["flows.generate_image_flow", "flows.cli", "flows.image_batch"])
def test_a_flow_imported_in_a_fresh_process_gets_the_embedded_api_defaults(module: str) -> None:
    assert settings_in_fresh_process(module) == "120 False"


def test_a_start_limit_already_in_the_environment_wins() -> None:
    found = settings_in_fresh_process(
        "flows.generate_image_flow", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="45"
    )
    assert found == "45 False"

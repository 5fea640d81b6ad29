"""prefect.yaml's batch deployment says when it runs in words: its description names the
schedule's cron, hour and zone, as `prefect deploy` fills them in from the setup's timezone."""

from __future__ import annotations

import os

import pytest
import yaml
from prefect.utilities.templating import apply_values

from tests.support.paths import REPO


def test_the_batch_description_names_the_schedules_cron_hour_and_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [batch] = [d for d in config["deployments"] if d["name"] == "default"]
    # As `python -m flows.setup --timezone Asia/Tokyo` has `prefect deploy` fill it in.
    monkeypatch.setenv("STORYBOARD_SCHEDULE_TIMEZONE", "Asia/Tokyo")
    deployed = apply_values(batch, os.environ, remove_notset=False)
    [schedule] = deployed["schedules"]
    minute, hour, *_ = schedule["cron"].split()

    assert schedule["timezone"] == "Asia/Tokyo"
    assert f"(cron `{schedule['cron']}`)" in deployed["description"]
    assert f" at {int(hour):02d}:{int(minute):02d} Asia/Tokyo " in deployed["description"]

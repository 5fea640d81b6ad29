"""Helpers of the pipeline and flow tests: settings pointing at a test data dir and simulator,
the demo project's handle, a batch run's results table.

Their fixtures (`simulator`, `demo`, and the one Prefect test API per session, `prefect_api`)
are in tests/conftest.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling

from flows.batch_report import RESULTS_KEY
from storyboard.settings import Settings, load_settings
from storyboard.store import Store
from tests.support.paths import REPO

FLUX_WORKFLOW = REPO / "workflows" / "image" / "flux-2.json"


@dataclass
class Project:
    settings: Settings
    store: Store
    project_id: str

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


def storyboard_env(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, comfyui_url: str, **extra: str
) -> Settings:
    """Point the settings (read by the flows at run time) at a test data dir and simulator."""
    values = {
        "STORYBOARD_DATA_DIR": str(data_dir),
        "STORYBOARD_COMFYUI_URL": comfyui_url,
        "STORYBOARD_WORKFLOW": str(FLUX_WORKFLOW),
        "STORYBOARD_RETRY_BACKOFF_S": "0",
        "STORYBOARD_STARTUP_WAIT_S": "2",
        "STORYBOARD_IMAGE_TIMEOUT_S": "30",
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def task_states(state: Any, prefix: str) -> dict[str, StateType]:
    """The state type of each task run of a flow run whose name starts with `prefix`, once
    none of them is still running (task states reach the API through events, a moment late)."""
    deadline = time.monotonic() + 30.0
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
        found = {r.name: r.state_type for r in runs if r.name.startswith(prefix)}
        settled = all(t is not None and t not in UNSETTLED for t in found.values())
        if settled or time.monotonic() > deadline:
            return {name: t for name, t in found.items() if t is not None}
        time.sleep(0.1)


UNSETTLED = frozenset({StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED})


def results_table(state: Any) -> dict[str, dict[str, Any]]:
    """The rows of a batch run's results artifact, by sentence id: what the UI shows (a
    Failed batch state carries only its message)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            ),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RESULTS_KEY])),
        )
    [table] = found
    data = table.data
    rows = json.loads(data) if isinstance(data, str) else data
    return {row["sentence"].split("/", 1)[1]: row for row in rows}


def cancel_running(flow_name: str) -> None:
    """What the UI's Cancel button and `prefect flow-run cancel` do to the one running run of
    `flow_name`: set it Cancelling through the API."""
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
        client.set_flow_run_state(run.id, Cancelling())

"""image-batch on the Prefect test API against the simulator: real store, real PNGs."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.batch_report import PROGRESS_KEY, RESULTS_KEY, SUMMARY_KEY
from flows.image_batch import image_batch
from storyboard import ids
from tests.flow_fixtures import Project, demo, prefect_api, simulator  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_batch(**parameters: Any) -> Any:
    return image_batch(**parameters, return_state=True)


def artifacts_of(flow_run_id: Any) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[PROGRESS_KEY, RESULTS_KEY, SUMMARY_KEY])
            ),
        )
    return {artifact.key: artifact for artifact in found}


def test_every_dirty_sentence_becomes_a_1080p_png(demo: Project, simulator: Any) -> None:
    dirty = demo.store.dirty_sentences(demo.project_id)
    assert len(dirty) >= 3

    state = run_batch(project_id=demo.project_id)

    assert state.is_completed(), state.message
    for sentence in dirty:
        path = ids.image_path(demo.data_dir, demo.project_id, sentence.id)
        with Image.open(path) as image:
            assert image.size == (1920, 1080)
            assert image.format == "PNG"
        stored = demo.store.get_sentence(demo.project_id, sentence.id)
        assert stored.status == "completed"
        assert not stored.image_dirty
        assert stored.image_file == path.relative_to(demo.data_dir.resolve()).as_posix()
    assert demo.store.dirty_sentences(demo.project_id) == []
    assert simulator.sim.max_concurrency() == 1
    assert len(simulator.sim.runs) == len(dirty)

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert artifacts[PROGRESS_KEY].data == 100.0
    table = artifacts[RESULTS_KEY].data
    assert isinstance(table, str) and all(s.id in table for s in dirty)
    assert f"completed | {len(dirty)}" in str(artifacts[SUMMARY_KEY].data)

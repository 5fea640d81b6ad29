"""Issue 11's rules for flows and tasks, checked where they live: Prefect's public API only,
one name per thing, the statuses a batch reports, and mypy strict over flows and tasks."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path

import storyboard.store
import storyboard.store.connection
from flows import doctor_gpu
from flows.batch_report import FAILED_STATUSES
from storyboard import pipeline
from storyboard.scheduler.outcome import NOT_ATTEMPTED, Outcome, Status
from storyboard.simulator import execution
from tasks.context import BatchContext
from tasks.images import prepare_image, render_image, store_image
from tests.support.paths import REPO

# Private attributes of Prefect's futures that the feed once read instead of the public API.
PRIVATE_PREFECT = re.compile(r"\bwrapped_future\b|\b_final_state\b|\b_wrapped_future\b")


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).glob("*.py"))


def test_flows_and_tasks_use_only_public_prefect_future_api() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in _sources("flows", "tasks")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_PREFECT.search(line)
    ]
    assert offenders == []


def test_mypy_strict_checks_flows_and_tasks_with_the_library() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert {"storyboard", "flows", "tasks"} <= set(config["packages"])


def test_outcome_status_is_a_closed_set_the_report_agrees_with() -> None:
    statuses = set(typing.get_args(Status))
    assert statuses == {
        "completed",
        "cached",
        "stale",
        "failed",
        "skipped",
        "not attempted",
        "valid",
        "invalid",
    }
    assert NOT_ATTEMPTED in statuses
    assert set(FAILED_STATUSES) <= statuses
    assert typing.get_type_hints(Outcome)["status"] == Status


def test_one_outcome_one_store_image_one_default_backoff() -> None:
    # The simulator's result of one prompt is a RunOutcome; Outcome is the batch row.
    assert not hasattr(execution, "Outcome")
    assert hasattr(execution, "RunOutcome")
    # The library saves a picture; `store_image` is only the Prefect task (store-image).
    assert not hasattr(pipeline, "store_image")
    assert store_image.name == "store-image"
    # storyboard.backoff is the one home of default_backoff: the store re-exports nothing.
    assert not hasattr(storyboard.store, "default_backoff")
    assert "default_backoff" not in storyboard.store.connection.__all__


def test_no_image_task_is_tagged_gpu_and_the_docs_say_so() -> None:
    # The lane feed holds the `gpu` slot for the whole feed (flows.lane_feed); a gpu-tagged
    # task would take the slot again per render and wait on the feed that holds it.
    assert [t.tags for t in (prepare_image, render_image, store_image)] == [set()] * 3
    readme = (REPO / "README.md").read_text()
    assert "(tag gpu)" not in readme
    assert "no task of ours is tagged `gpu`" in " ".join((doctor_gpu.__doc__ or "").split())


def test_reading_attempts_is_named_for_forgetting_them() -> None:
    # The count is forgotten as it is read (one report per sentence); `attempts` read as a
    # plain getter while it popped.
    assert hasattr(BatchContext, "take_attempts")
    assert not hasattr(BatchContext, "attempts")

"""Going on without a Prefect API that went away: the first call that finds it unreachable
marks it gone, and no artifact call or log record is sent to it after that; the progress
artifact is updated from a thread of its own. Against the session's real test API, and a
closed port standing for one that was killed."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.batch_report import ProgressArtifact
from tasks.api_reach import REACH, check_reach, muted, quieted, recorded, unreachable


@pytest.fixture(autouse=True)
def reach() -> Iterator[None]:
    REACH.start()
    yield
    REACH.start()


def _closed_port_api() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def test_unreachable_is_a_transport_error_or_the_clients_give_up_not_a_refusal() -> None:
    assert unreachable(httpx.ConnectError("refused"))
    assert unreachable(httpx.ReadTimeout("slow"))
    assert unreachable(RuntimeError("Failed to reach API at http://x/api/"))
    assert not unreachable(RuntimeError("something else"))
    request = httpx.Request("POST", "http://x/api/artifacts/")
    answer = httpx.Response(422, request=request)
    assert not unreachable(httpx.HTTPStatusError("422", request=request, response=answer))


def test_after_the_first_unreachable_call_no_call_is_made_and_one_line_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def gone(n: int) -> int:
        calls.append(n)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    assert recorded("first", gone, 1) is None
    assert recorded("second", gone, 2) is None
    assert recorded("third", lambda: 3) is None  # even one that would have answered

    assert calls == [1]
    assert REACH.gone == "first: ConnectError: [Errno 111] Connection refused"
    said = [r.getMessage() for r in caplog.records if "stopped answering" in r.getMessage()]
    assert len(said) == 1 and "every picture is stored" in said[0]

    REACH.start()  # the next run tries again
    assert recorded("next run", lambda: 4) == 4


def test_a_call_the_api_refuses_is_warned_and_the_api_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused() -> None:
        raise ValueError("bad artifact")

    assert recorded("an artifact", refused) is None
    assert REACH.gone is None
    assert any("an artifact failed" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("prefect_api")
def test_the_health_check_answers_for_a_live_api_and_gives_up_a_dead_one_at_once() -> None:
    assert check_reach() is True
    assert REACH.gone is None
    with temporary_settings({PREFECT_API_URL: _closed_port_api()}):
        assert check_reach(timeout_s=1.0) is False
    assert REACH.gone is not None and "health check" in REACH.gone
    assert check_reach() is False  # known gone: not asked again


def service_failure(service: str) -> logging.LogRecord:
    """A record as Prefect's background services log an item they failed on."""
    return logging.LogRecord(
        "prefect._internal.concurrency", logging.ERROR, __file__, 1,
        "Service %r failed to process item %r", (service, {"event": "x" * 2000}), None,
    )  # fmt: skip


def unsent_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "could not send" in r.getMessage()]


@pytest.mark.usefixtures("prefect_api")
def test_events_prefect_failed_to_send_are_one_line_when_the_api_answers_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not printed as they come (each with the whole event, as a killed server's first sign).
    assert not quieted(service_failure("EventsWorker"))
    assert not quieted(service_failure("EventsWorker"))
    assert quieted(service_failure("ConcurrencySlotAcquisitionWithLeaseService"))  # not ours
    with caplog.at_level(logging.WARNING):
        assert check_reach() is True
        assert check_reach() is True  # said once
    assert unsent_lines(caplog) == [
        "Prefect could not send 2 event(s) of this run to its API; they are missing from its"
        " event feed"
    ]


def test_events_prefect_failed_to_send_to_an_api_found_gone_add_no_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert not quieted(service_failure("EventsWorker"))
    with (
        caplog.at_level(logging.WARNING),
        temporary_settings({PREFECT_API_URL: _closed_port_api()}),
    ):
        assert check_reach(timeout_s=1.0) is False
    assert unsent_lines(caplog) == []  # the one "stopped answering" line says it all
    assert not quieted(service_failure("ConcurrencySlotAcquisitionWithLeaseService"))


def test_no_record_is_shipped_once_the_api_is_gone() -> None:
    record = logging.LogRecord("storyboard", logging.WARNING, __file__, 1, "x", None, None)
    assert muted(record)
    REACH.lost("a call", httpx.ConnectError("refused"))
    assert not muted(record)


@pytest.mark.usefixtures("prefect_api")
def test_the_progress_artifact_sends_the_latest_value_from_its_own_thread() -> None:
    @flow
    def batch() -> UUID:
        artifact_id = create_progress_artifact(progress=0.0, key="reach-progress")
        progress = ProgressArtifact(artifact_id)
        offering = [
            threading.Thread(target=progress.offer, args=(float(n), f"{n}/10")) for n in range(10)
        ]
        for thread in offering:
            thread.start()
        for thread in offering:
            thread.join()
        progress.close()
        progress.offer(55.0, "after close: never sent")
        progress.update(100.0, "10/10")
        return artifact_id

    artifact_id = batch()

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))
        )
    assert [(a.data, a.description) for a in found] == [(100.0, "10/10")]


def test_a_progress_artifact_that_could_not_be_made_sends_nothing() -> None:
    progress = ProgressArtifact(None)
    progress.offer(10.0, "1/10")
    progress.update(100.0, "10/10")
    progress.close()
    assert REACH.gone is None

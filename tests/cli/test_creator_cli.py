"""`storyboard render` and `python -m flows.image_batch`: progress, final table, exit status,
one-line errors; the deployment's parameter schema refusing a bad value when a run is made."""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.utilities.callables import parameter_schema

from flows import cli
from flows import image_batch as image_batch_module
from flows.cli import Progress, render_main
from flows.image_batch import image_batch
from storyboard.scheduler.outcome import Outcome
from tests.support.flows import Project
from tests.support.paths import REPO


def test_module_help_prints_help_and_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        render_main(["--help"], prog=image_batch_module.MODULE_PROG)

    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m flows.image_batch [-h] [--limit N]")
    assert "--dry-run" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "--limit", "0"], "error: argument --limit: --limit must be at least 1, got 0"),
        (["render", "--limit", "x"], "error: argument --limit: --limit must be a whole number"),
        (["render", "../x"], "error: argument project: invalid project id '../x'"),
        (["rendr"], "error: unknown command 'rendr'; did you mean 'render'?"),
    ],
)
def test_bad_render_arguments_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors exit from inside the parser
        code = exit_.code  # type: ignore[assignment]

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def outcome(sentence: str, status: Any = "completed", seed: int | None = 2**63 - 25) -> Outcome:
    return Outcome("p", sentence, status, seconds=0.5, attempts=1, seed=seed, image_file="i.png")


class Report:
    """What the progress view reads of a flows.batch_report.BatchReport."""

    def __init__(self, total: int, lanes: str = "") -> None:
        self.total = total
        self.lanes = (lambda: lanes) if lanes else None


def test_progress_without_a_terminal_prints_one_plain_line_per_sentence() -> None:
    stream = io.StringIO()
    view = Progress(stream, live=False)
    report = Report(2, lanes="default: p/s02")

    view(report, None)
    view(report, outcome("s01"))
    view(report, outcome("s02", "failed"))

    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] p/s01 completed (ETA ")
    assert lines[0].endswith(" s); rendering default: p/s02")
    assert lines[1] == "[2/2, 1 failed] p/s02 failed"
    assert "\x1b[" not in stream.getvalue()  # no bar, no colours in a log file
    assert str(2**63 - 25) in view.table()


def test_progress_on_a_terminal_draws_a_bar_with_done_of_total_and_the_lanes() -> None:
    stream = io.StringIO()
    view = Progress(stream, live=True)
    report = Report(3, lanes="default: p/s02")

    view(report, None)
    view(report, outcome("s01"))
    view.stop()

    shown = stream.getvalue()
    assert "1/3" in shown
    assert "p/s01 completed" in shown
    assert "default: p/s02" in shown
    assert "failed" not in shown  # none has: the column stays empty


def test_progress_on_a_terminal_counts_the_failed_beside_done_of_total() -> None:
    stream = io.StringIO()
    view = Progress(stream, live=True)
    report = Report(3)

    view(report, None)
    view(report, outcome("s01", "failed"))
    view(report, outcome("s02"))
    view.stop()

    assert "2/3 1 failed" in re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", stream.getvalue())


@pytest.mark.usefixtures("prefect_api")
def test_render_runs_the_batch_prints_the_table_and_exits_0(
    demo: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["render", demo.project_id, "--limit", "2"])

    captured = capsys.readouterr()
    assert code == 0, captured
    first, second = demo.store.sentences(demo.project_id)[:2]
    assert f"[2/2] {demo.project_id}/" in captured.err
    assert f"{demo.project_id}/{first.id}   completed   {first.seed}" in captured.out
    assert captured.out.rstrip().endswith("image-batch: Completed: 2 sentence(s): 2 completed")
    assert not second.image_dirty


@pytest.mark.usefixtures("prefect_api")
def test_render_draft_draws_drafts_and_says_what_they_cost(
    demo: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["render", demo.project_id, "--limit", "1", "--draft"])

    captured = capsys.readouterr()
    assert code == 0, captured
    first = demo.store.sentences(demo.project_id)[0]
    assert f"images/drafts/{first.id}.png" in captured.out
    assert "s of it drafts" in captured.out  # the GPU time line
    assert captured.out.rstrip().endswith(
        "image-batch: Completed: draft pass, finals still dirty: 1 sentence(s): 1 completed"
    )
    assert first.image_dirty and first.draft_file == f"images/drafts/{first.id}.png"


@pytest.mark.usefixtures("prefect_api")
def test_render_exits_1_when_a_sentence_failed_with_no_traceback(
    demo: Project, simulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator.sim.faults.fail_matching(lambda graph: True, "out of memory")

    code = cli.main(["render", demo.project_id, "--limit", "1"])

    captured = capsys.readouterr()
    assert code == 1
    assert "image-batch: Failed: 1 of 1 sentence(s) failed (1 failed)" in captured.out
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.usefixtures("prefect_api")
def test_render_of_an_unknown_project_exits_1_naming_the_known_ones(
    demo: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["render", "nope"])

    out = capsys.readouterr().out
    assert code == 1
    assert "image-batch: Failed: unknown project 'nope'" in out
    assert "the known projects are: lighthouse" in out


def test_the_parameter_schema_has_the_id_pattern_and_limit_at_least_1() -> None:
    properties = parameter_schema(image_batch).model_dump()["properties"]

    limit = properties["limit"]["anyOf"][0]
    assert limit == {"type": "integer", "minimum": 1}
    assert properties["project_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@pytest.mark.usefixtures("prefect_api")
def test_a_deployment_refuses_limit_0_when_the_run_is_created() -> None:
    schema = parameter_schema(image_batch).model_dump_for_openapi()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(image_batch)
        deployment_id = client.create_deployment(
            flow_id,
            "schema-check",
            parameter_openapi_schema=schema,
            enforce_parameter_schema=True,
        )
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment_id, parameters={"limit": 0})
        with pytest.raises(PrefectHTTPStatusError) as bad_id:
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"project_id": "../etc"}
            )
        accepted = client.create_flow_run_from_deployment(deployment_id, parameters={"limit": 1})
        client.delete_flow_run(accepted.id)
    assert refused.value.response.status_code == 409
    assert "limit" in refused.value.response.text
    assert bad_id.value.response.status_code == 409


def test_the_storyboard_entry_point_adds_render_to_the_librarys_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["storyboard"] == "flows.cli:main"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "render" in out and "seed-demo" in out


def test_render_against_an_api_that_does_not_answer_is_one_line(
    demo: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        socket_closed_port() as port,
        temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}),
    ):
        code = cli.main(["render", demo.project_id, "--limit", "1"])

    err = capsys.readouterr().err
    assert code == 1
    assert err == (
        f"error: Failed to reach API at http://127.0.0.1:{port}/api/: start that Prefect"
        " server, or unset PREFECT_API_URL to run on the embedded API\n"
    )
    assert demo.store.get_sentence(demo.project_id, "s01").image_dirty


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port

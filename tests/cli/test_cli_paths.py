"""Every path of the `storyboard` command ends in a clear line: typos, bad arguments, a missing
store, bad import columns, export formats, and tables that survive being captured."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from storyboard.cli import build_parser, main
from storyboard.store import Character, Project, SentenceInput, Store
from storyboard.store.demo import DEMO_PROJECT, SENTENCES
from storyboard.store.interchange import column_help
from tests.support.paths import REPO

CONSOLE_SCRIPT = Path(sys.executable).parent / "storyboard"
_AUTHORED = set(SentenceInput.model_fields)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's directory
    data = tmp_path / "data"
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(data))
    return data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """main()'s exit code and output, whether it returned or argparse exited."""
    try:
        code = main(list(argv))
    except SystemExit as exited:
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- commands and arguments ---------------------------------------------------------------


def test_a_misspelt_command_gets_the_closest_one(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "stauts")
    assert code == 2
    assert one_line(err) == "error: unknown command 'stauts'; did you mean 'status'?"
    code, _, err = run(capsys, "sed-demo", "--help")
    assert (code, one_line(err)) == (
        2,
        "error: unknown command 'sed-demo'; did you mean 'seed-demo'?",
    )
    code, _, err = run(capsys, "zzzz")
    assert code == 2 and "the commands are" in one_line(err) and "doctor" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["import", "sentnces", "x.csv"], "unknown kind 'sentnces'; did you mean 'sentences'?"),
        (["export", "zzz", "x.csv"], "use one of projects, characters, sentences"),
        (["sentences"], "the following arguments are required: project"),
        ([], "the following arguments are required: COMMAND"),
        (["status", "--bogus"], "unrecognized arguments: --bogus"),
        (["sentences", "p", "--width", "0"], "'0' is not a column width"),
        (["sentences", "p", "--width", "5000"], "from 10 to 1000"),
        (["sentences", "p", "--width", "wide"], "'wide' is not a column width"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, _, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 2
    assert line.startswith("error: ") and expected in line and "--help" in line


def test_an_upper_layer_adds_commands_through_extra(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[argparse.Namespace] = []

    def register(subparsers: Any) -> None:
        p = subparsers.add_parser("render", help="render a project")
        p.add_argument("project")
        p.set_defaults(handler=lambda args: seen.append(args) or 7)

    assert "render" in build_parser(extra=[register]).format_help()
    assert main(["render", "p1"], extra=[register]) == 7
    assert seen[0].project == "p1"
    _, _, err = run(capsys, "rendr")  # not registered: not suggested
    assert "'render'" not in err
    assert main(["rendr"], extra=[register]) == 2
    assert "did you mean 'render'?" in capsys.readouterr().err


# -- a directory with no store --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["sentences", DEMO_PROJECT],
        ["export", "sentences", "out.csv"],
        ["mark-dirty", DEMO_PROJECT],
        ["doctor"],
    ],
)
def test_read_commands_never_create_a_store(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    line = one_line(err)
    assert code == 1 and out == ""
    assert f"no store at {data_dir / 'storyboard.duckdb'}" in line
    assert "`storyboard init`" in line and "`storyboard seed-demo`" in line
    assert not data_dir.exists()


# -- import columns -----------------------------------------------------------------------


def test_import_help_lists_every_column_of_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "import", "--help")
    assert code == 0
    lines = out.splitlines()
    for kind, model in (
        ("projects", Project),
        ("characters", Character),
        ("sentences", SentenceInput),
    ):
        section = lines[lines.index(f"{kind} columns:") + 1 :]
        section = section[: section.index("")] if "" in section else section
        assert [line.split()[0] for line in section] == list(model.model_fields)
        for line, field in zip(section, model.model_fields.values(), strict=True):
            assert ("required" in line.split()) == field.is_required(), line
    by_name = {line.split()[0]: " ".join(line.split()[1:]) for line in section if line.strip()}
    assert by_name["position"] == "integer 0..2147483647 required"
    assert by_name["character_ids"] == "list of text optional (default empty)"
    assert by_name["seed"] == "integer 0..9223372036854775807 optional (default empty)"


def test_the_readme_lists_the_columns_the_help_prints() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"```\n{column_help()}\n```" in readme


def _sentence_rows(**extra: Any) -> list[dict[str, Any]]:
    return [
        {"id": s.id, "project_id": s.project_id, "position": s.position, "text": s.text}
        | {"image_prompt": s.image_prompt}
        | extra
        for s in SENTENCES[:3]
    ]


def test_a_misspelt_column_is_named_with_the_real_one(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    before = Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT)
    rows = _sentence_rows()
    for row in rows:
        row["posiiton"] = row.pop("position")
    path = tmp_path / "typo.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, _, err = run(capsys, "import", "sentences", str(path))
    assert code == 1
    assert one_line(err) == (f"error: {path}: unknown column 'posiiton'; did you mean 'position'?")
    assert Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT) == before


def test_two_sentences_at_one_position_are_refused(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    before = Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT)
    rows = _sentence_rows(text="edited")
    rows[2]["position"] = rows[0]["position"]
    path = tmp_path / "clash.json"
    path.write_text(json.dumps(rows))
    code, _, err = run(capsys, "import", "sentences", str(path))
    assert code == 1
    assert one_line(err) == (
        f"error: {path}: row 3, field 'position': sentences 's01' (row 1) and 's03' are both at"
        f" position 1 of project '{DEMO_PROJECT}'; give each sentence its own position"
    )
    assert Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT) == before


def test_one_position_in_two_projects_is_fine(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    projects = tmp_path / "projects.json"
    projects.write_text(json.dumps([{"id": "other", "name": "Other"}]))
    assert run(capsys, "import", "projects", str(projects))[0] == 0
    rows = [*_sentence_rows()[:1], _sentence_rows()[0] | {"project_id": "other"}]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(rows))
    code, out, err = run(capsys, "import", "sentences", str(path))
    assert (code, err) == (0, "")
    assert "imported 2 sentences" in out


# -- export formats -----------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return list(pq.read_table(path).to_pylist())
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".json":
        return list(json.loads(path.read_text()))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".json", ".jsonl"])
def test_export_writes_the_format_its_suffix_names_and_imports_again(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    suffix: str,
) -> None:
    run(capsys, "seed-demo")
    source = Store(data_dir / "storyboard.duckdb")
    # A seed above 2**53 and a text with a comma, quotes and a line break must survive.
    source.update_sentence(DEMO_PROJECT, "s02", seed=2**62 + 1, text='a, "b"\nc')
    files = {kind: tmp_path / f"{kind}{suffix}" for kind in ("projects", "characters", "sentences")}
    for kind, path in files.items():
        code, out, _ = run(capsys, "export", kind, str(path))
        assert code == 0 and str(path) in out
    exported = _read(files["sentences"])
    assert [row["id"] for row in exported] == [s.id for s in SENTENCES]
    if suffix == ".parquet":
        assert pq.read_table(files["sentences"]).num_rows == len(SENTENCES)
    else:
        assert not files["sentences"].read_bytes().startswith(b"PAR1")

    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path / "copy"))
    for kind, path in files.items():
        assert run(capsys, "import", kind, str(path))[0] == 0, capsys.readouterr()
    copy = Store(tmp_path / "copy" / "storyboard.duckdb")
    assert copy.projects() == source.projects()
    assert copy.characters(DEMO_PROJECT) == source.characters(DEMO_PROJECT)
    assert [s.model_dump(include=_AUTHORED) for s in copy.sentences(DEMO_PROJECT)] == [
        s.model_dump(include=_AUTHORED) for s in source.sentences(DEMO_PROJECT)
    ]


def test_export_refuses_a_suffix_that_names_no_format(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    target = tmp_path / "sentences.txt"
    code, _, err = run(capsys, "export", "sentences", str(target))
    assert code == 1
    assert one_line(err) == (
        f"error: cannot write {target}: '.txt' names no export format; end the name in one of"
        " .parquet, .pq, .csv, .json, .jsonl, .ndjson"
    )
    assert list(tmp_path.glob("sentences*")) == []


def test_export_of_an_unknown_project_writes_nothing(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    target = tmp_path / "s.csv"
    code, _, err = run(capsys, "export", "sentences", str(target), "--project", "lighthuose")
    assert (code, one_line(err)) == (1, "error: no project 'lighthuose'")
    assert not target.exists()


# -- tables -------------------------------------------------------------------------------


def test_tables_stay_whole_lines_when_captured(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    store = Store(data_dir / "storyboard.duckdb")
    prompt = "[bold]not markup[/bold] " + "long words " * 30
    store.update_sentence(DEMO_PROJECT, "s03", image_prompt=prompt)
    code, out, _ = run(capsys, "sentences", DEMO_PROJECT, "--width", "1000")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 + len(SENTENCES)  # header, rule, a line per row
    assert lines[0].split() == ["pos", "id", "status", "dirty", "rev", "image", "prompt"]
    assert set(lines[1].replace(" ", "")) == {"─"}
    assert prompt.rstrip() in lines[4]

    code, out, _ = run(capsys, "sentences", DEMO_PROJECT, "--width", "10")
    row = out.splitlines()[4]
    assert row.endswith("[bold]not…") and prompt[:9] in row
    # Numbers right-aligned: a one-digit position ends where the header "pos" ends.
    assert out.splitlines()[0].index("pos") + 2 == row.index("3")


def test_a_terminal_gets_one_line_per_row_within_its_width(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    monkeypatch.setenv("COLUMNS", "72")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run(capsys, "sentences", DEMO_PROJECT, "--width", "200")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.splitlines()]
    assert code == 0 and len(lines) == 2 + len(SENTENCES)
    assert max(len(line) for line in lines) <= 72
    assert lines[2].split()[:2] == ["1", "s01"] and lines[2].endswith("…")


def test_doctor_findings_are_a_table(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "seed-demo")
    stray = data_dir / "projects" / DEMO_PROJECT / "images" / "stray.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"\x89PNG")
    code, out, _ = run(capsys, "doctor")
    lines = out.splitlines()
    assert code == 1
    assert lines[0].split() == ["state", "kind", "where", "detail"]
    assert lines[2].split()[:3] == ["found", "orphan-image", str(stray)]


# -- the console script, as a user runs it ------------------------------------------------


def _script(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(CONSOLE_SCRIPT.parent), "STORYBOARD_DATA_DIR": str(tmp_path / "d")}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )


def test_console_script_paths(tmp_path: Path) -> None:
    typo = _script(tmp_path, "stauts")
    assert (typo.returncode, typo.stderr) == (
        2,
        "error: unknown command 'stauts'; did you mean 'status'?\n",
    )
    empty = _script(tmp_path, "status")
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert empty.stderr.startswith(f"error: no store at {tmp_path / 'd' / 'storyboard.duckdb'};")
    assert not (tmp_path / "d").exists()

    assert _script(tmp_path, "seed-demo").returncode == 0
    status = _script(tmp_path, "status")
    assert status.returncode == 0 and status.stderr == ""
    assert status.stdout.splitlines()[2].split() == [
        DEMO_PROJECT, "8", "0", "0", "0", "8", "0", "8", "0.0"
    ]  # fmt: skip

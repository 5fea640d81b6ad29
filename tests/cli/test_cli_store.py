"""The store commands, run through the real `storyboard` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storyboard.cli import CLOSED_PIPE_STATUS, main
from storyboard.settings import load_settings
from storyboard.store import SCHEMA_VERSION, Project, Store
from storyboard.store import store as store_module
from storyboard.store.demo import CHARACTERS, DEMO_PROJECT, SENTENCES
from tests.support.store import sentence as a_sentence


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's directory
    data = tmp_path / "data"
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(data))
    return data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_init_creates_the_store_from_settings(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "init")
    assert code == 0
    assert (data_dir / "storyboard.duckdb").is_file()
    assert f"schema version {SCHEMA_VERSION}" in out


def test_db_path_setting_wins(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STORYBOARD_DB_PATH", str(tmp_path / "elsewhere.duckdb"))
    assert run(capsys, "init")[0] == 0
    assert (tmp_path / "elsewhere.duckdb").is_file()
    assert not (data_dir / "storyboard.duckdb").exists()


def test_seed_demo_status_and_sentences(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "seed-demo")
    assert code == 0 and "8 sentences" in out
    for character in CHARACTERS:
        for relative in character.reference_images:
            reference = data_dir / "projects" / DEMO_PROJECT / relative
            assert reference.read_bytes().startswith(b"\x89PNG")
    assert 6 <= len(SENTENCES) <= 10

    assert run(capsys, "seed-demo")[0] == 0  # seeding again is an upsert
    code, out, _ = run(capsys, "status")
    lines = out.splitlines()
    assert lines[0].split() == [
        "project",
        "pending",
        "generating",
        "completed",
        "failed",
        "dirty",
        "drafts",
        "total",
        "gpu",
        "s",
    ]
    assert lines[2].split() == [DEMO_PROJECT, "8", "0", "0", "0", "8", "0", "8", "0.0"]

    code, out, _ = run(capsys, "sentences", DEMO_PROJECT)
    rows = out.splitlines()[2:]
    assert [r.split()[1] for r in rows] == [s.id for s in SENTENCES]


def test_mark_dirty_and_dirty_listing(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "seed-demo")
    store = Store(data_dir / "storyboard.duckdb")
    for sentence in SENTENCES:
        job = store.start_job(DEMO_PROJECT, sentence.id, run_id="r", attempt=1, stale_after_s=60)
        assert job is not None
        store.complete_job(job.id, image_file="x.png", seed=1, workflow_hash="h", duration_s=1)

    code, out, _ = run(capsys, "mark-dirty", DEMO_PROJECT, "s02", "s05")
    assert code == 0
    assert out.strip() == (
        f"marked 2 sentences of {DEMO_PROJECT} dirty: the next render makes the same graphs"
        " again, so the render cache gives back the same pictures; `storyboard reseed` draws"
        " new ones"
    )
    code, out, _ = run(capsys, "sentences", DEMO_PROJECT, "--dirty")
    assert [r.split()[1] for r in out.splitlines()[2:]] == ["s02", "s05"]
    code, out, _ = run(capsys, "mark-dirty", DEMO_PROJECT)
    assert "marked 8 sentences" in out


def test_export_then_import(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    target = tmp_path / "out" / "sentences.parquet"
    code, out, _ = run(capsys, "export", "sentences", str(target), "--project", DEMO_PROJECT)
    assert code == 0 and "exported 8 sentences" in out
    assert pq.read_table(target).num_rows == 8

    code, out, _ = run(capsys, "import", "sentences", str(target))
    assert (code, out.split("(")[1].strip()) == (0, "0 new, 8 updated)")


def test_one_row_is_counted_in_the_singular(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    target = tmp_path / "projects.json"
    code, out, _ = run(capsys, "export", "projects", str(target))
    assert (code, out.strip()) == (0, f"exported 1 project to {target}")
    code, out, _ = run(capsys, "import", "projects", str(target))
    assert (code, out.strip()) == (0, f"imported 1 project from {target} (0 new, 1 updated)")
    code, out, _ = run(capsys, "mark-dirty", DEMO_PROJECT, "s01")
    assert out.startswith(f"marked 1 sentence of {DEMO_PROJECT} dirty: ")


def test_status_without_projects(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "init")
    code, out, _ = run(capsys, "status")
    assert code == 0 and "no projects yet" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sentences", "nope"], "error: no project 'nope'"),
        (["mark-dirty", "lighthouse", "../x"], "error: invalid sentence id '../x'"),
        (["import", "sentences", "missing.parquet"], "missing.parquet: no such file"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    run(capsys, "seed-demo")
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_bad_import_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "s1", "project_id": "p1", "position": "x"}]))
    env = {"PATH": str(Path(sys.executable).parent), "STORYBOARD_DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run(
        [sys.executable, "-m", "storyboard", "import", "sentences", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: row 1, field 'position': Input should be a valid integer, "
        "unable to parse string as an integer (got 'x') (and 2 more problems)"
    ]


def test_invalid_setting_is_named(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORYBOARD_STORE_LOCK_TIMEOUT_S", "-1")
    code, _, err = run(capsys, "status")
    assert code == 1
    assert "STORYBOARD_STORE_LOCK_TIMEOUT_S" in err


def test_an_image_prompt_no_text_encoder_reads_is_refused_at_import_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "seed-demo")[0] == 0
    before = Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT)
    rows = [
        {
            "id": "s01",
            "project_id": DEMO_PROJECT,
            "position": 1,
            "text": "t",
            "image_prompt": "a lighthouse at dawn",
        },
        {
            "id": "s02",
            "project_id": DEMO_PROJECT,
            "position": 2,
            "text": "t",
            "image_prompt": "rain " * 10_000,
        },  # 50,000 characters
    ]
    sentences = tmp_path / "long.json"
    sentences.write_text(json.dumps(rows))

    code, _, err = run(capsys, "import", "sentences", str(sentences))

    assert code == 1
    assert err.strip().splitlines() == [
        f"error: {sentences}: row 2, field 'image_prompt': the image prompt is 50,000"
        " characters, over the limit of 32,768 (STORYBOARD_MAX_PROMPT_CHARS): FLUX.2's text"
        " encoder reads about 512 tokens, so shorten it"
    ]
    # All or nothing: the first row, which fits, was not written either.
    assert Store(data_dir / "storyboard.duckdb").sentences(DEMO_PROJECT) == before


def test_the_prompt_limit_is_a_setting(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "seed-demo")[0] == 0
    monkeypatch.setenv("STORYBOARD_MAX_PROMPT_CHARS", "100")
    settings = load_settings()
    store = Store(settings.database, max_prompt_chars=settings.max_prompt_chars)
    with pytest.raises(Exception, match=r"^sentence 's01': the image prompt is 101 characters"):
        store.update_sentence(DEMO_PROJECT, "s01", image_prompt="x" * 101)
    assert store.get_sentence(DEMO_PROJECT, "s01").image_prompt != "x" * 101


def test_a_listing_cut_short_by_its_reader_ends_quietly(tmp_path: Path) -> None:
    """`storyboard sentences p1 | head -1` over more than a pipe holds: one line, no error."""
    Store(tmp_path / "d" / "storyboard.duckdb").upsert(
        projects=[Project(id="p1", name="Project one")],
        sentences=[a_sentence(f"s{i}", i) for i in range(1, 3001)],
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "STORYBOARD_DATA_DIR": str(tmp_path / "d"),
    }
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c",
         f"'{sys.executable}' -m storyboard sentences p1 | head -1"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert result.returncode == CLOSED_PIPE_STATUS  # what a shell reports for SIGPIPE


def test_a_listing_streams_a_page_at_a_time_aligned_with_one_header(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(store_module, "PAGE_ROWS", 3)  # the demo's 8 rows: three pages
    run(capsys, "seed-demo")
    code, out, _ = run(capsys, "sentences", DEMO_PROJECT)
    lines = out.splitlines()

    assert code == 0
    assert [line.split()[0] for line in lines[:1]] == ["pos"]  # one header, one rule
    rows = lines[2:]
    assert [row.split()[1] for row in rows] == [s.id for s in SENTENCES]
    starts = {row.index(row.split()[1]) for row in rows}
    assert len(starts) == 1, rows  # the id column lines up across pages

    code, out, _ = run(capsys, "sentences", DEMO_PROJECT, "--limit", "4")
    assert [row.split()[1] for row in out.splitlines()[2:]] == [s.id for s in SENTENCES[:4]]
    with pytest.raises(SystemExit) as usage:
        main(["sentences", DEMO_PROJECT, "--limit", "0"])
    assert usage.value.code == 2
    assert "'0' is not a row count" in capsys.readouterr().err


def test_status_shows_gpu_seconds_and_costs_every_attempt_drafts_and_failed_ones_apart(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "seed-demo")
    store = Store(data_dir / "storyboard.duckdb")

    def attempt(
        sentence_id: str, number: int, render_s: float, failed: bool = False, draft: bool = False
    ) -> None:
        job = store.start_job(
            DEMO_PROJECT, sentence_id, run_id="r", attempt=number, stale_after_s=60, draft=draft
        )
        assert job is not None
        if failed:
            store.fail_job(job.id, "sampler broke", final=False, render_s=render_s)
        else:
            folder = "images/drafts" if draft else "images"
            assert store.complete_job(
                job.id,
                image_file=f"{folder}/{sentence_id}.png",
                seed=1,
                workflow_hash=f"h-{sentence_id}-{draft}",
                duration_s=render_s,
                render_s=render_s,
            )

    attempt("s01", 1, 2.0, draft=True)
    attempt("s01", 1, 12.5)
    attempt("s02", 1, 3.0, failed=True)
    attempt("s02", 2, 10.0)

    code, out, _ = run(capsys, "status")
    [header, _, row] = out.splitlines()
    assert code == 0 and header.split()[-4:] == ["drafts", "total", "gpu", "s"]
    assert row.split()[0] == DEMO_PROJECT and row.split()[-1] == "27.5"
    assert row.split()[-3] == "1"  # s01's draft is of its current prompt

    monkeypatch.setenv("STORYBOARD_GPU_HOUR_PRICE", "3.60")
    code, out, _ = run(capsys, "status", "--costs", DEMO_PROJECT)
    assert out.splitlines()[0].split() == [
        "sentence", "attempts", "gpu", "s", "draft", "gpu", "s", "failed", "gpu", "s", "cost"
    ]  # fmt: skip
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [
        ["s01", "2", "14.5", "2.0", "0.0", "0.01"],
        ["s02", "2", "13.0", "0.0", "3.0", "0.01"],
        ["total", "4", "27.5", "2.0", "3.0", "0.03"],
    ]
    code, out, _ = run(capsys, "status")
    assert out.splitlines()[2].split()[-2:] == ["27.5", "0.03"]
    # As a person says it: the project first, then what to show of it.
    assert (
        run(capsys, "status", DEMO_PROJECT, "--costs")[1].splitlines()[2:]
        == (run(capsys, "status", "--costs", DEMO_PROJECT)[1].splitlines()[2:])
    )
    code, _, err = run(capsys, "status", "--costs")
    assert code == 2 and err == (
        "error: --costs needs a project: `storyboard status PROJECT --costs`\n"
    )
    store.upsert_projects([Project(id="other", name="Another storyboard")])
    code, out, _ = run(capsys, "status", DEMO_PROJECT)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[2:]] == [DEMO_PROJECT]
    code, _, err = run(capsys, "status", "lighthous")
    assert code == 1 and "'lighthous'" in err and "Traceback" not in err

"""Bad input refused before any Prefect run: store imports and edits, the CLI, the path
helpers. Each refusal names the thing and the fix, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storyboard import ids
from storyboard.cli import main
from storyboard.errors import ImportDataError, InvalidIdError, StoreError
from storyboard.store import Project, SentenceInput, Store
from storyboard.store.upserts import MAX_PROMPT_CHARS

# ../, /, absolute, NUL, over-long, Cyrillic "р" look-alike, fullwidth "ｐ" look-alike
BAD_IDS = ["../etc", "a/b", "/etc/passwd", "a\x00b", "x" * 65, "\u0440roject", "\uff50roject"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "storyboard.duckdb")
    store.upsert(
        projects=[Project(id="p", name="P")],
        sentences=[
            SentenceInput(id="s1", project_id="p", position=0, text="t", image_prompt="a harbour")
        ],
    )
    return store


def write_json(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def sentence_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": "s2",
        "project_id": "p",
        "position": 1,
        "text": "t",
        "image_prompt": "a lighthouse",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_an_empty_or_blank_prompt_is_refused_on_import(
    store: Store, tmp_path: Path, prompt: str
) -> None:
    rows = [
        sentence_row(id="s2", position=1),
        sentence_row(id="s3", position=2, image_prompt=prompt),
    ]
    path = write_json(tmp_path / "sentences.json", rows)
    with pytest.raises(ImportDataError, match=r"row 2, field 'image_prompt'"):
        store.import_file("sentences", path)
    assert [s.id for s in store.sentences("p")] == ["s1"]  # the good row 1 is not written either


def test_a_blank_prompt_is_refused_as_an_edit(store: Store) -> None:
    before = store.get_sentence("p", "s1")
    with pytest.raises(StoreError, match=r"image_prompt.*empty or only whitespace"):
        store.update_sentence("p", "s1", image_prompt="  ")
    assert store.get_sentence("p", "s1") == before


def test_a_prompt_at_the_limit_and_hostile_characters_are_stored_exactly(store: Store) -> None:
    hostile = 'say "cheese" {x} %s $HOME \\n\nline\ttab\x00nul 😀 שלום مرحبا ‮rtl‬'
    big = ("a long, detailed scene description; " * 3000)[:MAX_PROMPT_CHARS]
    store.update_sentence("p", "s1", image_prompt=hostile)
    assert store.get_sentence("p", "s1").image_prompt == hostile
    store.update_sentence("p", "s1", image_prompt=big)
    assert store.get_sentence("p", "s1").image_prompt == big

    with pytest.raises(ImportDataError, match=r"over the limit of 32,768"):
        store.update_sentence("p", "s1", image_prompt=big + "!")
    assert store.get_sentence("p", "s1").image_prompt == big


@pytest.mark.parametrize("bad", BAD_IDS)
def test_unsafe_ids_are_refused_by_import_and_nothing_is_written(
    store: Store, tmp_path: Path, bad: str
) -> None:
    sentences = write_json(tmp_path / "s.json", [sentence_row(), sentence_row(id=bad, position=2)])
    with pytest.raises(ImportDataError, match=r"row 2, field 'id'.*invalid sentence id"):
        store.import_file("sentences", sentences)
    projects = write_json(tmp_path / "p.json", [{"id": bad, "name": "Bad"}])
    with pytest.raises(ImportDataError, match=r"row 1, field 'id'.*invalid project id"):
        store.import_file("projects", projects)
    assert [p.id for p in store.projects()] == ["p"]
    assert [s.id for s in store.sentences("p")] == ["s1"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_unsafe_ids_are_refused_by_the_store_and_path_helpers(
    store: Store, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(InvalidIdError, match="invalid project id"):
        store.mark_dirty(bad)
    with pytest.raises(InvalidIdError, match="invalid sentence id"):
        store.get_sentence("p", bad)
    with pytest.raises(InvalidIdError, match="use 1-64 ASCII letters"):
        ids.image_path(tmp_path, "p", bad)
    assert not (tmp_path / "projects").exists()


@pytest.mark.parametrize("bad", ["../etc", "/etc/passwd", "x" * 65, "\u0440roject"])
def test_unsafe_ids_are_refused_by_the_cli_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path))
    assert main(["mark-dirty", bad]) == 1
    assert main(["sentences", bad]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: invalid project id") for line in err)
    assert main(["mark-dirty", "p", bad]) == 1
    assert "invalid sentence id" in capsys.readouterr().err
    assert not (tmp_path / "projects").exists()


def test_a_reference_path_leaving_the_project_is_refused_on_import(
    store: Store, tmp_path: Path
) -> None:
    for path in ["../other/secret.png", "/etc/passwd", "refs/../../x.png"]:
        rows = [{"id": "c", "project_id": "p", "name": "C", "reference_images": [path]}]
        with pytest.raises(ImportDataError, match="must be a relative path inside the project"):
            store.import_file("characters", write_json(tmp_path / "c.json", rows))
    assert store.characters("p") == []

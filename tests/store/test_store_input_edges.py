"""Import files at the edges: what spreadsheets write (a byte order mark, a very long cell) imports;
what no row may hold (a position past 32 bits, deep nesting, a NUL in a path) is one line naming
the file, row and field, with nothing written. Real files in tmp_path, a real DuckDB file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storyboard.cli import main
from storyboard.errors import ImportDataError, StoreError
from storyboard.store import Store
from storyboard.store.interchange import CSV_FIELD_LIMIT
from tests.support.store import seeded_store

HEADER = ["id", "project_id", "position", "text", "image_prompt", "character_ids"]
DEEP = 100_000  # far past the interpreter's recursion limit


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "n1",
        "project_id": "p1",
        "position": 7,
        "text": "New.",
        "image_prompt": "a pier at dawn",
        "character_ids": "ana",
    }
    row.update(changes)
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]], encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _refused(store: Store, path: Path, pattern: str, kind: str = "sentences") -> str:
    before = [store.sentences("p1"), store.characters("p1")]
    with pytest.raises(ImportDataError, match=pattern) as caught:
        store.import_file(kind, path)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < 300
    assert [store.sentences("p1"), store.characters("p1")] == before
    return message


def test_a_csv_with_a_utf8_byte_order_mark_imports(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = _write_csv(tmp_path / "excel.csv", [_row()], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfid,")

    assert store.import_file("sentences", path).inserted == 1
    assert store.get_sentence("p1", "n1").character_ids == ["ana"]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_json_with_a_byte_order_mark_imports(tmp_path: Path, suffix: str) -> None:
    store = seeded_store(tmp_path)
    body = json.dumps([_row()]) if suffix == "json" else json.dumps(_row())
    path = tmp_path / f"rows.{suffix}"
    path.write_text(body, encoding="utf-8-sig")
    assert store.import_file("sentences", path).inserted == 1


def test_a_csv_cell_over_128_kib_imports_exactly(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    # 330 KB, past the csv module's 128 KiB default; the sentence's text has no encoder limit
    text = "a harbour, " * 30_000
    path = _write_csv(tmp_path / "long.csv", [_row(id="n0", position=6), _row(text=text)])

    assert store.import_file("sentences", path).inserted == 2
    assert store.get_sentence("p1", "n1").text == text


def test_a_csv_cell_over_the_cap_is_one_line_naming_the_row(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    huge = "x" * (CSV_FIELD_LIMIT + 1)
    path = _write_csv(tmp_path / "huge.csv", [_row(id="n0", position=6), _row(text=huge)])
    _refused(store, path, r"row 2: a cell is larger than the 16 MiB CSV cell limit")


@pytest.mark.parametrize("position", [2**31, 2**32, 2**40, 2**63])
def test_a_position_past_32_bits_is_refused_naming_row_and_field(
    tmp_path: Path, position: int
) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "far.json"
    path.write_text(json.dumps([_row(id="n0", position=1), _row(position=position)]))
    _refused(store, path, r"row 2, field 'position': Input should be less than 2147483648")


def test_a_position_past_32_bits_in_parquet_is_refused(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "far.parquet"
    table = pa.table(
        {
            "id": ["n1"],
            "project_id": ["p1"],
            "position": pa.array([2**40], pa.int64()),
            "text": ["t"],
            "image_prompt": ["a pier"],
        }
    )
    pq.write_table(table, path)
    _refused(store, path, r"row 1, field 'position'")


def test_the_largest_32_bit_position_is_stored(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "edge.json"
    path.write_text(json.dumps([_row(position=2**31 - 1)]))
    store.import_file("sentences", path)
    assert store.get_sentence("p1", "n1").position == 2**31 - 1


def test_an_edit_to_a_position_past_32_bits_is_refused(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(StoreError, match=r"field 'position'.*less than 2147483648"):
        store.update_sentence("p1", "s1", position=2**32)
    assert store.get_sentence("p1", "s1").position == 1


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_deeply_nested_json_is_one_line(tmp_path: Path, suffix: str) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / f"deep.{suffix}"
    path.write_text("[" * DEEP + "]" * DEEP)
    _refused(store, path, r"is not a readable JSON (lines )?file: it is nested too deeply")


def test_a_deeply_nested_list_in_a_csv_cell_is_one_line(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = _write_csv(tmp_path / "deep.csv", [_row(character_ids="[" * DEEP + "]" * DEEP)])
    _refused(store, path, r"row 1, field 'character_ids': .*nested too deeply; give a flat list")


def test_a_huge_bad_value_is_quoted_briefly(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "list.json"
    path.write_text(json.dumps([_row(text=["word"] * 100_000)]))
    message = _refused(store, path, r"row 1, field 'text': Input should be a valid string")
    assert message.endswith("...)")


@pytest.mark.parametrize(
    "images", [["refs/ana.png", "refs/a\x00b.png"], "refs/a\x00b.png;refs/ana.png"]
)
def test_a_nul_in_a_reference_path_is_refused_at_import(tmp_path: Path, images: object) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "characters.json"
    rows = [{"id": "cat", "project_id": "p1", "name": "Cat", "reference_images": images}]
    path.write_text(json.dumps(rows))
    _refused(
        store,
        path,
        r"row 1, field 'reference_images\.\d': .*may not contain a NUL character; remove it",
        kind="characters",
    )


def test_a_directory_is_refused_not_read_as_an_empty_dataset(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    folder = tmp_path / "rows.parquet"
    folder.mkdir()
    _refused(store, folder, r"is a directory; give the file to import")


def test_a_csv_column_named_twice_is_refused(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "twice.csv"
    path.write_text(",".join([*HEADER, "image_prompt"]) + "\nn1,p1,7,t,a pier,,a cliff\n")
    _refused(store, path, r"column 'image_prompt' appears twice in the header; keep one")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[" * DEEP + "]" * DEEP, "is not a readable JSON file: it is nested too deeply"),
        (json.dumps([_row(position=2**32)]), "row 1, field 'position': Input should be less"),
    ],
    ids=["deep", "position"],
)
def test_the_cli_import_prints_one_line_and_exits_1(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    body: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(tmp_path / "data"))
    seeded_store(tmp_path / "data").path.rename(tmp_path / "data" / "storyboard.duckdb")
    path = tmp_path / "bad.json"
    path.write_text(body)

    assert main(["import", "sentences", str(path)]) == 1

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}") and expected in err[0]


def test_the_console_script_imports_a_bom_csv_and_refuses_deep_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seeded_store(data).path.rename(data / "storyboard.duckdb")
    good = _write_csv(tmp_path / "excel.csv", [_row()], encoding="utf-8-sig")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * DEEP + "]" * DEEP)
    env = {"PATH": str(Path(sys.executable).parent), "STORYBOARD_DATA_DIR": str(data)}
    script = (
        "import sys; from storyboard.cli import main; "
        "codes = [main(['import', 'sentences', path]) for path in sys.argv[1:]]; "
        "print(codes)"
    )

    result = subprocess.run(
        [sys.executable, "-c", script, str(good), str(deep)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )

    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[-1] == "[0, 1]"
    assert result.stderr.strip().splitlines() == [
        f"error: {deep} is not a readable JSON file: it is nested too deeply"
    ]

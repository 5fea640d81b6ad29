"""Imports (Parquet, CSV, JSON) are validated and all-or-nothing; exports round-trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storyboard.errors import ImportDataError, StoreError
from storyboard.store import Store
from tests.support.store import seeded_store


def _rows(count: int = 3, **override: Any) -> list[dict[str, Any]]:
    rows = [
        {
            "id": f"n{i}",
            "project_id": "p1",
            "position": 10 + i,
            "text": f"New sentence {i}.",
            "image_prompt": f"a lighthouse in the rain, view {i}",
            "character_ids": ["ana"] if i % 2 else [],
            "seed": 100 + i,
        }
        for i in range(1, count + 1)
    ]
    rows[-1].update(override)
    return rows


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _snapshot(store: Store) -> list[object]:
    return [store.status_counts(), store.sentences("p1"), store.characters("p1"), store.projects()]


def test_import_parquet_inserts_then_upserts(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = _write_parquet(tmp_path / "new.parquet", _rows())

    first = store.import_file("sentences", path)
    assert (first.inserted, first.updated) == (3, 0)
    n1 = store.get_sentence("p1", "n1")
    assert (n1.character_ids, n1.seed, n1.image_revision) == (["ana"], 101, 1)

    changed = _rows()
    changed[0]["image_prompt"] = "a lighthouse in the snow"
    changed[1]["text"] = "Only the words changed."
    second = store.import_file("sentences", _write_parquet(tmp_path / "again.parquet", changed))

    assert (second.inserted, second.updated) == (0, 3)
    assert store.get_sentence("p1", "n1").image_revision == 2
    assert store.get_sentence("p1", "n2").image_revision == 1
    assert store.get_sentence("p1", "n2").text == "Only the words changed."


def test_import_csv_and_json_and_jsonl(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    csv_path = tmp_path / "s.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            ["id", "project_id", "position", "text", "image_prompt", "character_ids", "seed"],
        )
        writer.writeheader()
        writer.writerow(
            {
                "id": "c1",
                "project_id": "p1",
                "position": "4",
                "text": "Hi, there.",
                "image_prompt": "a pier",
                "character_ids": "ana;ben",
                "seed": "",
            }
        )
    (tmp_path / "s.json").write_text(json.dumps(_rows(1)))
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(2)[1:]) + "\n")

    assert store.import_file("sentences", csv_path).inserted == 1
    assert store.import_file("sentences", tmp_path / "s.json").inserted == 1
    assert store.import_file("sentences", tmp_path / "s.jsonl").inserted == 1
    c1 = store.get_sentence("p1", "c1")
    assert (c1.position, c1.character_ids, c1.seed, c1.text) == (
        4,
        ["ana", "ben"],
        None,
        "Hi, there.",
    )
    assert {s.id for s in store.sentences("p1")} >= {"c1", "n1", "n2"}


def test_import_projects_and_characters(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.duckdb")
    (tmp_path / "p.json").write_text(
        json.dumps([{"id": "film", "name": "Film", "lora_strength": 0.7}])
    )
    (tmp_path / "c.json").write_text(
        json.dumps(
            [
                {
                    "id": "hero",
                    "project_id": "film",
                    "name": "Hero",
                    "reference_images": ["refs/hero.png"],
                }
            ]
        )
    )
    store.import_file("projects", tmp_path / "p.json")
    store.import_file("characters", tmp_path / "c.json")
    assert store.get_project("film").lora_strength == 0.7
    assert store.characters_for("film", ["hero"])[0].reference_images == ["refs/hero.png"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{k: v for k, v in r.items() if k != "image_prompt"} for r in _rows()],
            r"row 1, field 'image_prompt': Field required",
        ),
        (_rows(position="third"), r"row 3, field 'position': .*valid integer.*'third'"),
        (_rows(id="n1"), r"row 3, field 'id': duplicate id 'n1' \(first at row 1\)"),
        (_rows(id="../x"), r"row 3, field 'id': .*invalid sentence id '\.\./x'"),
        (_rows(project_id="p1/../../etc"), r"row 3, field 'project_id': .*invalid project id"),
        (_rows(character_ids=["zed"]), r"row 3, field 'character_ids': unknown character 'zed'"),
        (_rows(project_id="p9"), r"row 3, field 'project_id': unknown project 'p9'"),
        (_rows(colour="red"), r"unknown column 'colour' \(row 3\); the sentences columns are id, "),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "duplicate-id",
        "unsafe-id",
        "unsafe-project",
        "unknown-character",
        "unknown-project",
        "unknown-column",
    ],
)
def test_bad_import_names_row_and_field_and_writes_nothing(
    tmp_path: Path, rows: list[dict[str, Any]], message: str
) -> None:
    store = seeded_store(tmp_path)
    store.import_file("sentences", _write_parquet(tmp_path / "ok.parquet", _rows(2)))
    before = _snapshot(store)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**rows[0], "text": "edited"}, *rows[1:]]))

    with pytest.raises(ImportDataError, match=message) as caught:
        store.import_file("sentences", bad)

    assert str(bad) in str(caught.value)
    assert _snapshot(store) == before


def test_wrong_parquet_column_type_is_reported(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    rows = _rows()
    for row, position in zip(rows, ["1", "2", "third"], strict=True):
        row["position"] = position  # a string column where an integer belongs
    path = _write_parquet(tmp_path / "s.parquet", rows)
    with pytest.raises(ImportDataError, match=r"row 3, field 'position': .*valid integer"):
        store.import_file("sentences", path)
    with pytest.raises(ImportDataError, match=r"row 3, field 'seed': .*greater than or equal to 0"):
        store.import_file("sentences", _write_parquet(tmp_path / "n.parquet", _rows(seed=-5)))
    assert [s.id for s in store.sentences("p1")] == ["s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("fake.parquet", b"id,project_id\ns1,p1\n", "is not a readable Parquet file"),
        ("broken.json", b'[{"id": ', "is not a readable JSON file"),
        ("object.json", b'{"id": "s1"}', "expected a list of objects"),
        ("binary.csv", b"\xff\xfe\x00garbage", "is not a readable CSV file"),
        ("data.xlsx", b"PK", "cannot tell the format"),
    ],
)
def test_unreadable_files_are_refused(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportDataError, match=message):
        store.import_file("sentences", path)
    with pytest.raises(ImportDataError, match="no such file"):
        store.import_file("sentences", tmp_path / "missing.parquet")


def test_unsafe_reference_image_path_is_refused(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "eve",
                    "project_id": "p1",
                    "name": "Eve",
                    "reference_images": ["../../secret.png"],
                }
            ]
        )
    )
    with pytest.raises(ImportDataError, match=r"row 1, field 'reference_images.0'.*relative path"):
        store.import_file("characters", path)


def test_parquet_round_trip(tmp_path: Path) -> None:
    source = seeded_store(tmp_path / "a", sentences=4)
    source.update_sentence("p1", "s2", character_ids=["ana", "ben"], seed=9, negative_prompt="fog")
    exported = {}
    for kind in ("projects", "characters", "sentences"):
        exported[kind] = tmp_path / "out" / f"{kind}.parquet"
        assert source.export(kind, exported[kind]) > 0

    target = Store(tmp_path / "b" / "store.duckdb")
    for kind in ("projects", "characters", "sentences"):
        target.import_file(kind, exported[kind])

    authored = {
        "id",
        "project_id",
        "position",
        "text",
        "image_prompt",
        "negative_prompt",
        "character_ids",
        "lora_name",
        "lora_strength",
        "seed",
    }
    assert target.projects() == source.projects()
    assert target.characters("p1") == source.characters("p1")
    assert [s.model_dump(include=authored) for s in target.sentences("p1")] == [
        s.model_dump(include=authored) for s in source.sentences("p1")
    ]
    table = pq.read_table(exported["sentences"])
    assert table.schema.field("character_ids").type == pa.list_(pa.string())
    assert table.num_rows == 4


def test_export_one_project_and_replace_atomically(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    target = tmp_path / "s.parquet"
    target.write_bytes(b"old")
    assert store.export("sentences", target, project_id="p1") == 3
    assert pq.read_table(target).num_rows == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    blocked = tmp_path / "dir-in-the-way.parquet"
    blocked.mkdir()
    with pytest.raises(StoreError, match="cannot write"):
        store.export("sentences", blocked)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_tables_a_file_holds_have_their_own_name(tmp_path: Path) -> None:
    # KINDS means the doctor's finding kinds; the store's name for its three tables is TABLES.
    import storyboard.store as store_package
    from storyboard.doctor import KINDS

    assert store_package.TABLES == ("projects", "characters", "sentences")
    assert not hasattr(store_package, "KINDS")
    assert not set(KINDS) & set(store_package.TABLES)
    with pytest.raises(ImportDataError, match="unknown kind 'findings': use one of projects"):
        seeded_store(tmp_path).import_file("findings", tmp_path / "x.csv")  # type: ignore[arg-type]

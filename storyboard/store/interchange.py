"""Reading import files and writing exports (Parquet, CSV, JSON, JSON lines).

An import file holds one kind of row: projects, characters or sentences.
Every row is validated with pydantic before anything is written; the first
problem is reported with its row number (1 = first data row) and field.
Columns the store manages itself (status, revision, timestamps, ...) are
accepted and ignored, so an export can be imported again; any other unknown
column is refused naming the closest real one (`columns`), which catches a
misspelt column name. Two sentences of one project at one position in one
file are refused, naming both ids.

An export is written in the format its suffix names (`FORMATS`); any other
suffix is refused. CSV cells hold lists as JSON text, which an import reads back.

Text files are UTF-8, with or without the byte order mark spreadsheet
programs write. One CSV cell may hold up to `CSV_FIELD_LIMIT` (16 MiB; the
csv module's own default is 128 KiB). Every unreadable or invalid file ends in
one ImportDataError of one line naming the file, and the row and field where
there is one, never in a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from storyboard.atomic import write_atomic
from storyboard.errors import ImportDataError, StoreError, UnsafePathError
from storyboard.store.columns import check_columns, describe_columns
from storyboard.store.models import Character, Project, Sentence, SentenceInput

# The three tables an import or export file holds rows of (`kind` in the CLI and ImportResult).
Table = Literal["projects", "characters", "sentences"]
TABLES: tuple[Table, ...] = ("projects", "characters", "sentences")
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_INPUT_MODELS: dict[Table, type[BaseModel]] = {
    "projects": Project,
    "characters": Character,
    "sentences": SentenceInput,
}
_MANAGED = frozenset(Sentence.model_fields) - frozenset(SentenceInput.model_fields)
CSV_FIELD_LIMIT = 16 * 2**20
# How much of a refused value an error message quotes.
_SHOWN = 80

_TEXT = pa.string()
_SCHEMAS: dict[Table, pa.Schema] = {
    "projects": pa.schema(
        [("id", _TEXT), ("name", _TEXT), ("lora_name", _TEXT), ("lora_strength", pa.float64())]
    ),
    "characters": pa.schema(
        [
            ("id", _TEXT),
            ("project_id", _TEXT),
            ("name", _TEXT),
            ("reference_images", pa.list_(_TEXT)),
            ("lora_name", _TEXT),
            ("lora_strength", pa.float64()),
        ]
    ),
    "sentences": pa.schema(
        [
            ("id", _TEXT),
            ("project_id", _TEXT),
            ("position", pa.int32()),
            ("text", _TEXT),
            ("image_prompt", _TEXT),
            ("negative_prompt", _TEXT),
            ("character_ids", pa.list_(_TEXT)),
            ("lora_name", _TEXT),
            ("lora_strength", pa.float64()),
            ("seed", pa.int64()),
            ("image_file", _TEXT),
            ("image_dirty", pa.bool_()),
            ("status", _TEXT),
            ("last_error", _TEXT),
            ("image_revision", pa.int32()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            ("updated_at", pa.timestamp("us", tz="UTC")),
            ("draft_file", _TEXT),
            ("draft_revision", pa.int32()),
        ]
    ),
}


def format_of(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise ImportDataError(f"unknown format {fmt!r}: use parquet, csv, json or jsonl")
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ImportDataError(
            f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r}; "
            "name it .parquet, .csv, .json or .jsonl, or pass the format"
        ) from None


def one_line(text: str) -> str:
    """`text` with its line breaks folded, for an error the CLI prints on one line."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def read_rows(path: Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """The rows of a file as dicts; an unreadable file raises ImportDataError."""
    kind = format_of(path, fmt)
    names = {"parquet": "Parquet", "csv": "CSV", "json": "JSON", "jsonl": "JSON lines"}
    if path.is_dir():
        # pyarrow would read a directory as an (often empty) dataset.
        raise ImportDataError(f"{path} is a directory; give the file to import")
    try:
        if kind == "parquet":
            rows: Any = pq.read_table(path).to_pylist()
        elif kind == "csv":
            rows = _read_csv(path)
        elif kind == "json":
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        else:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
    except FileNotFoundError:
        raise ImportDataError(f"{path}: no such file") from None
    except RecursionError:
        raise ImportDataError(
            f"{path} is not a readable {names[kind]} file: it is nested too deeply"
        ) from None
    except (OSError, ValueError, csv.Error, pa.ArrowException) as exc:
        raise ImportDataError(
            one_line(f"{path} is not a readable {names[kind]} file: {exc}")
        ) from exc
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ImportDataError(f"{path}: expected a list of objects, one per row")
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    # The limit is process-wide state of the csv module; we only ever set our own bound.
    csv.field_size_limit(CSV_FIELD_LIMIT)
    rows: list[dict[str, Any]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, strict=True)
        try:
            header = reader.fieldnames or []
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ImportDataError(
                    f"{path}: column {repeated[0]!r} appears twice in the header; keep one"
                )
            rows.extend(reader)
        except csv.Error as exc:
            if "field limit" not in str(exc):
                raise
            raise ImportDataError(
                f"{path}: row {len(rows) + 1}: a cell is larger than the"
                f" {CSV_FIELD_LIMIT // 2**20} MiB CSV cell limit; shorten it,"
                " or import Parquet or JSON"
            ) from None
    return rows


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "a value nested too deeply"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def describe(exc: ValidationError) -> str:
    """The first problem of a validation error as "field 'x': message (got ...)"."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "?"
    got = f" (got {_shown(error['input'])})" if error["type"] != "missing" else ""
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"field '{field}': {error['msg']}{got}{more}"


def column_help() -> str:
    """The columns of each kind, with types and which are required, for `import --help`."""
    return describe_columns(_INPUT_MODELS.items())


def validate_rows(kind: Table, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Validate every row, refusing unknown columns, duplicate ids and (for sentences)
    two sentences of one project at one position; nothing is written here."""
    model = _INPUT_MODELS[kind]
    check_columns(kind, rows, model.model_fields, _MANAGED)
    valid: list[Any] = []
    first_seen: dict[tuple[str, ...], int] = {}
    for number, row in enumerate(rows, start=1):
        if None in row:
            raise ImportDataError(f"row {number}: more values than columns")
        data = {k: v for k, v in row.items() if k not in _MANAGED}
        try:
            item = model.model_validate(data)
        except ValidationError as exc:
            raise ImportDataError(f"row {number}, {describe(exc)}") from exc
        key = (getattr(item, "project_id", ""), item.id)  # type: ignore[attr-defined]
        if key in first_seen:
            raise ImportDataError(
                f"row {number}, field 'id': duplicate id {item.id!r}"  # type: ignore[attr-defined]
                f" (first at row {first_seen[key]})"
            )
        first_seen[key] = number
        valid.append(item)
    if kind == "sentences":
        _refuse_shared_positions(valid)
    return valid


def _refuse_shared_positions(sentences: Sequence[SentenceInput]) -> None:
    # Position is the storyboard order; two sentences at one place have no order to keep.
    holder: dict[tuple[str, int], tuple[int, str]] = {}
    for number, sentence in enumerate(sentences, start=1):
        key = (sentence.project_id, sentence.position)
        if key in holder:
            first_row, first_id = holder[key]
            raise ImportDataError(
                f"row {number}, field 'position': sentences {first_id!r} (row {first_row}) and"
                f" {sentence.id!r} are both at position {sentence.position} of project"
                f" {sentence.project_id!r}; give each sentence its own position"
            )
        holder[key] = (number, sentence.id)


def load(kind: Table, path: Path, fmt: str | None = None) -> list[Any]:
    if kind not in TABLES:
        raise ImportDataError(f"unknown kind {kind!r}: use one of {', '.join(TABLES)}")
    try:
        return validate_rows(kind, read_rows(path, fmt))
    except ImportDataError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ImportDataError(one_line(f"{path}: {exc}")) from exc


def export_format(path: Path) -> str:
    """The format an export's suffix names; any other suffix is refused in one line."""
    try:
        return FORMATS[Path(path).suffix.lower()]
    except KeyError:
        raise StoreError(
            f"cannot write {path}: {Path(path).suffix or 'no suffix'!r} names no export format;"
            f" end the name in one of {', '.join(FORMATS)}"
        ) from None


def write_rows(kind: Table, rows: Sequence[BaseModel], path: Path) -> None:
    """Write rows to `path` in the format its suffix names, all-or-nothing (storyboard.atomic):
    a reader never sees half a file."""
    path = Path(path)
    fmt = export_format(path)
    try:
        data = _encode(kind, rows, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path.parent, (path.name,), data)
    except (OSError, UnsafePathError, pa.ArrowException) as exc:
        raise StoreError(one_line(f"cannot write {path}: {exc}")) from exc


def _encode(kind: Table, rows: Sequence[BaseModel], fmt: str) -> bytes:
    names = _SCHEMAS[kind].names
    if fmt == "parquet":
        table = pa.Table.from_pylist([row.model_dump() for row in rows], schema=_SCHEMAS[kind])
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return bytes(sink.getvalue().to_pybytes())
    dumps = [row.model_dump(mode="json") for row in rows]
    records = [{n: d.get(n) for n in names} for d in dumps]
    if fmt == "json":
        return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode()
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows({n: _csv_cell(v) for n, v in r.items()} for r in records)
    return text.getvalue().encode()


def _csv_cell(value: Any) -> str:
    # Strings as they are; an empty cell reads back as "not set"; lists as JSON text.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

"""The columns an import file of each kind may carry, described from the pydantic models.

`describe_columns` feeds `storyboard import --help` (and the README's copy of it), so
the help cannot drift from what `interchange` accepts; `check_columns` names a
misspelt column with the closest real one before any row is validated.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel

from storyboard.errors import ImportDataError

_TYPE_NAMES = {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}


class Column(NamedTuple):
    name: str
    type: str  # e.g. "integer 0..2147483647", "list of text"
    required: bool
    default: str  # "" when required


def _type_name(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf")
    if options:
        # Optional fields are `X | None`: an empty cell or a missing value means "not set".
        return " or ".join(_type_name(o) for o in options if o.get("type") != "null")
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(schema.get('items', {}))}"
    name = str(_TYPE_NAMES.get(kind, kind))
    low = schema.get("minimum")
    high = schema.get("maximum")
    if "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - 1
    if low is not None or high is not None:
        name += f" {_number(low)}..{_number(high)}"
    if schema.get("minLength"):
        name = f"non-empty {name}"
    return name


def _number(value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def columns(model: type[BaseModel]) -> list[Column]:
    """The model's fields as import columns, in the model's order."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    found = []
    for name, prop in schema["properties"].items():
        is_required = name in required
        default = "" if is_required else _default_text(prop)
        found.append(Column(name, _type_name(prop), is_required, default))
    return found


def _default_text(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return "empty"  # a default factory: an empty list
    value = prop["default"]
    return "empty" if value is None else _number(value)


def describe_columns(kinds: Iterable[tuple[str, type[BaseModel]]]) -> str:
    """Plain text, one line per column, grouped by kind (argparse keeps it as written)."""
    lines = []
    for kind, model in kinds:
        lines.append(f"{kind} columns:")
        rows = columns(model)
        width = max(len(c.name) for c in rows)
        type_width = max(len(c.type) for c in rows)
        for c in rows:
            need = "required" if c.required else f"optional (default {c.default})"
            lines.append(f"  {c.name:<{width}}  {c.type:<{type_width}}  {need}")
        lines.append("")
    return "\n".join(lines).rstrip()


def check_columns(
    kind: str, rows: Sequence[dict[str, Any]], known: Iterable[str], ignored: Iterable[str]
) -> None:
    """Refuse a column that is neither `known` nor `ignored`, naming the closest known one."""
    known = list(known)
    allowed = set(known) | set(ignored)
    for number, row in enumerate(rows, start=1):
        for name in row:
            if name is None or name in allowed:
                continue  # None: a CSV row with more values than columns, reported per row
            where = "" if number == 1 else f" (row {number})"
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else f"the {kind} columns are {', '.join(known)}"
            )
            raise ImportDataError(f"unknown column {name!r}{where}; {hint}")

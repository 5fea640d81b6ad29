"""Store commands: init, import, export, sentences, mark-dirty, status, seed-demo.

Where the store lives comes only from the settings (STORYBOARD_DATA_DIR,
STORYBOARD_DB_PATH, `.env`), never from command-line options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storyboard.settings import Settings, load_settings
from storyboard.store import SCHEMA_VERSION, SENTENCE_STATUSES, TABLES, Store
from storyboard.store.demo import seed_demo
from storyboard.store.interchange import FORMATS


def _open() -> tuple[Settings, Store]:
    settings = load_settings()
    return settings, Store(settings.database, lock_timeout_s=settings.store_lock_timeout_s)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(r[i], int) for r in rows) and bool(rows) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _init(args: argparse.Namespace) -> int:
    _, store = _open()
    print(f"store ready: {store.path} (schema version {SCHEMA_VERSION})")
    return 0


def _import(args: argparse.Namespace) -> int:
    _, store = _open()
    result = store.import_file(args.kind, Path(args.path), fmt=args.format)
    print(
        f"imported {result.total} {args.kind} from {args.path} "
        f"({result.inserted} new, {result.updated} updated)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    _, store = _open()
    count = store.export(args.kind, Path(args.path), project_id=args.project)
    print(f"exported {count} {args.kind} to {args.path}")
    return 0


def _sentences(args: argparse.Namespace) -> int:
    _, store = _open()
    store.get_project(args.project)
    rows = store.dirty_sentences(args.project) if args.dirty else store.sentences(args.project)
    table = [
        [
            s.position,
            s.id,
            s.status,
            "yes" if s.image_dirty else "no",
            s.image_revision,
            s.image_file or "-",
            _shorten(s.image_prompt, args.width),
        ]
        for s in rows
    ]
    headers = ["pos", "id", "status", "dirty", "rev", "image", "prompt"]
    print(format_table(headers, table))
    return 0


def _mark_dirty(args: argparse.Namespace) -> int:
    _, store = _open()
    count = store.mark_dirty(args.project, args.sentences or None)
    print(f"marked {count} sentence{'s' if count != 1 else ''} of {args.project} dirty")
    return 0


def _status(args: argparse.Namespace) -> int:
    _, store = _open()
    counts = store.status_counts()
    if not counts:
        print("no projects yet: import some, or run `storyboard seed-demo`")
        return 0
    columns = [*SENTENCE_STATUSES, "dirty", "total"]
    rows = [[project, *(c[name] for name in columns)] for project, c in counts.items()]
    print(format_table(["project", *columns], rows))
    return 0


def _seed_demo(args: argparse.Namespace) -> int:
    settings, store = _open()
    project = seed_demo(store, settings.data_dir)
    sentences = store.sentences(project.id)
    print(
        f"seeded demo project {project.id!r} ({project.name}): {len(sentences)} sentences, "
        f"{len(store.characters(project.id))} characters, in {store.path}"
    )
    return 0


def register(subparsers: Any) -> None:
    add = subparsers.add_parser
    p = add("init", help="create the store (or bring its schema up to date)")
    p.set_defaults(handler=_init)

    formats = sorted(set(FORMATS.values()))
    p = add("import", help="upsert projects, characters or sentences from a file (all or nothing)")
    p.add_argument("kind", choices=TABLES)
    p.add_argument("path", help="a .parquet, .csv, .json or .jsonl file")
    p.add_argument("--format", choices=formats, help="file format (default: from the suffix)")
    p.set_defaults(handler=_import)

    p = add("export", help="write projects, characters or sentences to a Parquet file")
    p.add_argument("kind", choices=TABLES)
    p.add_argument("path", help="the .parquet file to write")
    p.add_argument("--project", help="only this project's rows")
    p.set_defaults(handler=_export)

    p = add("sentences", help="list a project's sentences")
    p.add_argument("project")
    p.add_argument("--dirty", action="store_true", help="only sentences that need a new picture")
    p.add_argument("--width", type=int, default=60, help="prompt column width (default 60)")
    p.set_defaults(handler=_sentences)

    p = add("mark-dirty", help="ask for new pictures for a project's sentences")
    p.add_argument("project")
    p.add_argument("sentences", nargs="*", help="sentence ids (default: all of the project)")
    p.set_defaults(handler=_mark_dirty)

    p = add("status", help="sentence counts by status, per project")
    p.set_defaults(handler=_status)

    p = add("seed-demo", help="add the small demo storyboard to the store")
    p.set_defaults(handler=_seed_demo)

"""Store commands: init, import, export, sentences, mark-dirty, status, seed-demo.

Where the store lives comes only from the settings (STORYBOARD_DATA_DIR,
STORYBOARD_DB_PATH, `.env`), never from command-line options. Only `init`,
`import` and `seed-demo` create a store; the others, on a path with no store,
say so and name the command that makes one. Tables are drawn with rich, at
full width when the output is not a terminal so captured lines never wrap.
"""

from __future__ import annotations

import argparse
import difflib
import io
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from storyboard.errors import NotFoundError
from storyboard.ids import validate_id
from storyboard.settings import Settings, load_settings
from storyboard.store import SCHEMA_VERSION, SENTENCE_STATUSES, TABLES, GpuTime, Store
from storyboard.store.demo import seed_demo
from storyboard.store.interchange import FORMATS, column_help

# `sentences --width`: below this a prompt is unreadable; above it a line is.
WIDTH_RANGE = range(10, 1001)
# Wide enough that rich never wraps a row of a file or a pipe.
_UNWRAPPED = 10_000
# Between two columns: each one's padding and the (blank) divider.
_GAP = 3


def _open() -> tuple[Settings, Store]:
    settings = load_settings()
    return settings, Store(
        settings.database,
        lock_timeout_s=settings.store_lock_timeout_s,
        max_prompt_chars=settings.max_prompt_chars,
    )


def open_existing() -> tuple[Settings, Store]:
    """The store, for a command that only reads it (or edits what is in it): never creates one."""
    settings = load_settings()
    if not settings.database.is_file():
        raise NotFoundError(
            f"no store at {settings.database}; create one with `storyboard init` (empty) or "
            "`storyboard seed-demo` (the demo), or point STORYBOARD_DATA_DIR (or"
            " STORYBOARD_DB_PATH) at yours"
        )
    return settings, Store(
        settings.database,
        lock_timeout_s=settings.store_lock_timeout_s,
        max_prompt_chars=settings.max_prompt_chars,
    )


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A header, a rule and one line per row (rich); numbers right-aligned, cells taken as text."""
    cells = [[Text("" if v is None else str(v)) for v in row] for row in rows]
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if tty else _UNWRAPPED
    natural = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    # One line per row in a terminal too: the last column (the long text) is cut to what the
    # others leave; rich, left to shrink, would squeeze short columns away first.
    rest = width - sum(natural[:-1]) - _GAP * (len(headers) - 1)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, header in enumerate(headers):
        numeric = bool(rows) and all(isinstance(r[i], int) for r in rows)
        table.add_column(
            header,
            justify="right" if numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=max(rest, len(header)) if i == len(headers) - 1 else None,
        )
    for row in cells:
        table.add_row(*row)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=tty,
        color_system="auto" if tty else None,
        highlight=False,
        emoji=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def _init(args: argparse.Namespace) -> int:
    _, store = _open()
    print(f"store ready: {store.path} (schema version {SCHEMA_VERSION})")
    return 0


def _counted(kind: str, count: int) -> str:
    """`kind` (a table: projects, characters, sentences) as `count` of them reads."""
    return kind.removesuffix("s") if count == 1 else kind


def _import(args: argparse.Namespace) -> int:
    _, store = _open()
    result = store.import_file(args.kind, Path(args.path), fmt=args.format)
    print(
        f"imported {result.total} {_counted(args.kind, result.total)} from {args.path} "
        f"({result.inserted} new, {result.updated} updated)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.project is not None:
        validate_id(args.project, "project id")
    _, store = open_existing()
    if args.project is not None:
        store.get_project(args.project)  # a typo'd project would write an empty file
    count = store.export(args.kind, Path(args.path), project_id=args.project)
    print(f"exported {count} {_counted(args.kind, count)} to {args.path}")
    return 0


# The sentence listing's columns: header, right-aligned, the store column sizing it (None:
# the header's width, or "yes"/"no"), the prompt last.
_LISTING = (
    ("pos", True, "position"), ("id", False, "id"), ("status", False, "status"),
    ("dirty", False, None), ("rev", True, "image_revision"), ("image", False, "image_file"),
    ("prompt", False, None),
)  # fmt: skip


def _sentences(args: argparse.Namespace) -> int:
    """The listing streams: a page of rows at a time, its columns sized from the store's
    widest values first, so the first line comes at once, lines up with the last, and memory
    stays flat whatever the count. Formatted by hand: rich took ~0.5 ms a row."""
    validate_id(args.project, "project id")
    _, store = open_existing()
    store.get_project(args.project)
    widest = store.sentence_widths(args.project, dirty=args.dirty)
    headers = [name for name, _, _ in _LISTING]
    widths = [max(len(name), widest.get(column or "", 0)) for name, _, column in _LISTING[:-1]]
    prompt_width = args.width
    if sys.stdout.isatty():  # one line per row: the prompt gets what the others leave
        rest = shutil.get_terminal_size().columns - sum(widths) - _GAP * len(widths)
        prompt_width = max(min(prompt_width, rest), len("prompt"))
    print(_listing_line(headers, widths))
    print("\N{BOX DRAWINGS LIGHT HORIZONTAL}" * (sum(widths) + _GAP * len(widths) + prompt_width))
    left = args.limit
    for page in store.sentence_pages(args.project, dirty=args.dirty):
        rows = page if left is None else page[:left]
        lines = [
            _listing_line(
                [
                    str(s.position),
                    s.id,
                    s.status,
                    "yes" if s.image_dirty else "no",
                    str(s.image_revision),
                    s.image_file or "-",
                    _shorten(s.image_prompt, prompt_width),
                ],
                widths,
            )
            for s in rows
        ]
        print("\n".join(lines))
        if left is not None:
            left -= len(rows)
            if left == 0:
                break
    return 0


def _listing_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    aligned = [
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, (_, right, _) in zip(cells, widths, _LISTING, strict=False)
    ]
    return (" " * _GAP).join([*aligned, cells[-1]]).rstrip()


def _mark_dirty(args: argparse.Namespace) -> int:
    # A bad id is named before a missing store: it is wrong whichever store is meant.
    validate_id(args.project, "project id")
    for sentence_id in args.sentences:
        validate_id(sentence_id, "sentence id")
    _, store = open_existing()
    count = store.mark_dirty(args.project, args.sentences or None)
    print(
        f"marked {count} {_counted('sentences', count)} of {args.project} dirty: the next"
        " render makes the same graphs again, so the render cache gives back the same"
        " pictures; `storyboard reseed` draws new ones"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    settings, store = open_existing()
    price = settings.gpu_hour_price
    if args.costs is not None:
        project = args.costs or args.project
        if not project:
            print("error: --costs needs a project: `storyboard status PROJECT --costs`",
                  file=sys.stderr)  # fmt: skip
            return 2
        return _costs(store, project, price)
    counts = store.status_counts()
    if args.project is not None:
        validate_id(args.project, "project id")
        store.get_project(args.project)  # an unknown one is named, with the known ones
        counts = {args.project: counts[args.project]}
    if not counts:
        print("no projects yet: import some, or run `storyboard seed-demo`")
        return 0
    gpu = store.gpu_seconds()
    columns = [*SENTENCE_STATUSES, "dirty", "drafts", "total"]
    headers = ["project", *columns, "gpu s", *(["cost"] if price is not None else [])]
    rows = [
        [project, *(c[name] for name in columns), *_spent(gpu.get(project), price)]
        for project, c in counts.items()
    ]
    print(format_table(headers, rows))
    return 0


def _spent(time: GpuTime | None, price: float | None) -> list[str]:
    """GPU seconds (and their cost, with a price per GPU hour) as table cells."""
    time = time or GpuTime(0, 0.0, 0.0)
    cells = [f"{time.seconds:.1f}"]
    if price is not None:
        cells.append(f"{time.cost(price):.2f}")
    return cells


def _costs(store: Store, project_id: str, price: float | None) -> int:
    """Per sentence: its attempts' GPU seconds, the drafts' and the failed ones' apart (all
    three included in the total: a draft and a failed attempt cost GPU time too)."""
    validate_id(project_id, "project id")
    store.get_project(project_id)
    found = store.gpu_seconds_by_sentence(project_id)
    total = GpuTime(
        sum(t.attempts for t in found.values()),
        sum(t.seconds for t in found.values()),
        sum(t.failed_seconds for t in found.values()),
        sum(t.draft_seconds for t in found.values()),
    )

    def row(name: str, time: GpuTime) -> list[object]:
        seconds, *cost = _spent(time, price)
        drafts, failed = f"{time.draft_seconds:.1f}", f"{time.failed_seconds:.1f}"
        return [name, time.attempts, seconds, drafts, failed, *cost]

    headers = ["sentence", "attempts", "gpu s", "draft gpu s", "failed gpu s"]
    headers += ["cost"] if price is not None else []
    rows = [row(sid, t) for sid, t in found.items()] + [row("total", total)]
    print(format_table(headers, rows))
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


def _kind(text: str) -> str:
    if text in TABLES:
        return text
    close = difflib.get_close_matches(text, TABLES, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(TABLES)}"
    raise argparse.ArgumentTypeError(f"unknown kind {text!r}; {hint}")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a row count: give a whole number, 1 or more"
        )
    return value


def _width(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value not in WIDTH_RANGE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a column width: give a whole number from {WIDTH_RANGE.start}"
            f" to {WIDTH_RANGE.stop - 1}"
        )
    return value


def register(subparsers: Any) -> None:
    add = subparsers.add_parser
    p = add("init", help="create the store (or bring its schema up to date)")
    p.set_defaults(handler=_init)

    formats = sorted(set(FORMATS.values()))
    p = add(
        "import",
        help="upsert projects, characters or sentences from a file (all or nothing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"{column_help()}\n\n"
            "Store-managed columns of an export (status, image_file, ...) are ignored, so an\n"
            'export imports again. Lists in CSV: JSON text (["a", "b"]) or a;b. Two sentences of\n'
            "one project at one position in one file are refused."
        ),
    )
    p.add_argument("kind", type=_kind, metavar="KIND", help=", ".join(TABLES))
    p.add_argument("path", help="a .parquet, .csv, .json or .jsonl file")
    p.add_argument("--format", choices=formats, help="file format (default: from the suffix)")
    p.set_defaults(handler=_import)

    suffixes = ", ".join(FORMATS)
    p = add("export", help="write projects, characters or sentences to a file")
    p.add_argument("kind", type=_kind, metavar="KIND", help=", ".join(TABLES))
    p.add_argument("path", help=f"the file to write; its suffix names the format ({suffixes})")
    p.add_argument("--project", help="only this project's rows")
    p.set_defaults(handler=_export)

    p = add("sentences", help="list a project's sentences")
    p.add_argument("project")
    p.add_argument("--dirty", action="store_true", help="only sentences that need a new picture")
    p.add_argument("--limit", type=_count, help="at most this many rows")
    p.add_argument(
        "--width",
        type=_width,
        default=60,
        help=f"prompt column width, {WIDTH_RANGE.start} to {WIDTH_RANGE.stop - 1} (default 60)",
    )
    p.set_defaults(handler=_sentences)

    p = add(
        "mark-dirty",
        help="render a project's sentences again (the same seed: the cached pictures come"
        " back; `reseed` for new ones)",
    )
    p.add_argument("project")
    p.add_argument("sentences", nargs="*", help="sentence ids (default: all of the project)")
    p.set_defaults(handler=_mark_dirty)

    p = add(
        "status",
        help="sentence counts by status and GPU seconds, per project"
        " (cost too with STORYBOARD_GPU_HOUR_PRICE)",
    )
    p.add_argument("project", nargs="?", help="only this project (default: every project)")
    # `status PROJECT --costs` and `status --costs PROJECT` both read as a person says it.
    p.add_argument(
        "--costs",
        nargs="?",
        const="",
        metavar="PROJECT",
        help="GPU seconds per sentence of the project, every attempt, the drafts' and the"
        " failed ones' apart",
    )
    p.set_defaults(handler=_status)

    p = add("seed-demo", help="add the small demo storyboard to the store")
    p.set_defaults(handler=_seed_demo)

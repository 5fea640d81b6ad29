"""Picture commands: reseed, contact-sheet.

`reseed PROJECT [IDS...]` draws new seeds (storyboard.seeds) for the named sentences, or all
of the project's, and marks them dirty, so the next batch renders new compositions.
`contact-sheet PROJECT` (re)draws `data/projects/{project}/contact-sheet.png`. Both use an
existing store only (never create one); where it lives comes from the settings.
"""

from __future__ import annotations

import argparse
from typing import Any

from storyboard.commands.store import format_table, open_existing
from storyboard.contact_sheet import write_contact_sheet


def _reseed(args: argparse.Namespace) -> int:
    _, store = open_existing()
    seeds = store.reseed(args.project, args.sentences or None)
    count = len(seeds)
    print(
        f"drew new seeds for {count} sentence{'s' if count != 1 else ''} of {args.project}; "
        "they are dirty and render at the next batch"
    )
    if seeds:
        # As text: a seed above 2**53 must be shown exactly.
        print(format_table(["sentence", "seed"], [[k, str(v)] for k, v in seeds.items()]))
    return 0


def _contact_sheet(args: argparse.Namespace) -> int:
    settings, store = open_existing()
    path = write_contact_sheet(
        store,
        settings.data_dir,
        args.project,
        frame=settings.frame_size,
        max_bytes=settings.max_download_bytes,
        max_pixels=settings.max_image_pixels,
    )
    count = len(store.sentences(args.project))
    print(f"wrote {path} ({count} sentence{'s' if count != 1 else ''})")
    return 0


def register(subparsers: Any) -> None:
    add = subparsers.add_parser
    p = add("reseed", help="draw new seeds for a project's sentences and mark them dirty")
    p.add_argument("project")
    p.add_argument("sentences", nargs="*", help="sentence ids (default: all of the project)")
    p.set_defaults(handler=_reseed)

    p = add(
        "contact-sheet",
        help="draw data/projects/PROJECT/contact-sheet.png: every picture in storyboard order",
    )
    p.add_argument("project")
    p.set_defaults(handler=_contact_sheet)

"""`storyboard doctor [--repair]`: what killed runs left behind in the store and data directory.

The `gpu` concurrency slot lives in Prefect, which this package does not import; check it
with `python -m flows.doctor_gpu [--repair]`. On a path with no store it says so
instead of creating one.
"""

from __future__ import annotations

import argparse
from typing import Any

from storyboard.commands.store import format_table, open_existing
from storyboard.doctor import examine


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _doctor(args: argparse.Namespace) -> int:
    settings, store = open_existing()
    stale_after_s = (
        args.stale_after if args.stale_after is not None else 2 * settings.image_timeout_s
    )
    findings = examine(
        store,
        settings.data_dir,
        stale_after_s=stale_after_s,
        repair=args.repair,
        lease_s=settings.run_lease_s,
    )
    rows = []
    for finding in findings:
        where = "/".join(p for p in (finding.project_id, finding.sentence_id) if p)
        if finding.path is not None and finding.sentence_id is None:
            where = str(finding.path)
        rows.append(
            ["repaired" if finding.repaired else "found", finding.kind, where, finding.detail]
        )
    if rows:
        print(format_table(["state", "kind", "where", "detail"], rows))
    unrepaired = [f for f in findings if not f.repaired]
    if not findings:
        print(f"healthy: no stale jobs or stray files (stale after {stale_after_s:g} s)")
    elif unrepaired:
        print(f"{len(unrepaired)} problem(s); run `storyboard doctor --repair` to fix them")
    else:
        print(f"{len(findings)} problem(s) repaired")
    return 1 if unrepaired else 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="find (and with --repair fix) what crashed runs left behind",
        description=(
            "Report stale image jobs and `generating` sentences, image files no sentence "
            "records, and sentences whose image file is missing; --repair fixes them. Exit "
            "status 1 while problems remain. The Prefect `gpu` slot: python -m flows.doctor_gpu"
        ),
    )
    parser.add_argument("--repair", action="store_true", help="fix what is found")
    parser.add_argument(
        "--stale-after",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="a job running longer than this is orphaned (default: 2 x STORYBOARD_IMAGE_TIMEOUT_S)",
    )
    parser.set_defaults(handler=_doctor)

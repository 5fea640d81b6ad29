"""The Prefect half of the doctor: a `gpu` slot held by no live run.

    python -m flows.doctor_gpu            # report (exit 1 while a slot is held by a dead run)
    python -m flows.doctor_gpu --repair   # free it

The lane's limit (`tag:gpu`, 1 slot) is taken by each `generate-image` task run for the
duration of one render. A process killed while rendering keeps its slot: on a Prefect
server until its lease expires (about a minute), in ephemeral mode for ever. A holder is
dead when its task run is no longer Running, or has been Running longer than
`stale_after_s` (default: 2 x the image timeout -- no live render lasts that long). Counted
slots that no lease accounts for (ephemeral mode after a kill) are dead too.

Repair frees the slots only when no live run holds the lane: it never takes a slot away
from a render in progress. In ephemeral mode this process cannot see the leases of other
processes: run it when no batch is running.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound

from flows.gpu_limit import LANE_LIMIT
from storyboard.lane import DEFAULT_LIMIT_TAG
from storyboard.settings import load_settings


@dataclass
class SlotReport:
    tag: str
    exists: bool
    limit: int = 0
    counted: int = 0
    live: list[UUID] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)  # holder descriptions
    repaired: bool = False

    @property
    def orphaned(self) -> int:
        return max(self.counted - len(self.live), 0)

    @property
    def healthy(self) -> bool:
        return self.exists and (self.orphaned == 0 or self.repaired)

    def lines(self) -> list[str]:
        if not self.exists:
            return [
                f"no concurrency limit for tag {self.tag!r}: renders would run unlimited; "
                "--repair creates it (limit 1)" + (" (created)" if self.repaired else "")
            ]
        lines = [
            f"tag {self.tag!r}: limit {self.limit}, {self.counted} slot(s) taken, "
            f"{len(self.live)} by live run(s)"
        ]
        lines += [f"  dead holder: {d}" for d in self.dead]
        if self.orphaned and self.repaired:
            lines.append(f"freed {self.orphaned} slot(s) held by no live run")
        elif self.orphaned and self.live:
            lines.append("a live run holds the lane: repair waits until it ends")
        elif self.orphaned:
            lines.append(f"{self.orphaned} slot(s) held by no live run; --repair frees them")
        return lines


def _holder_is_live(
    client: SyncPrefectClient, task_run_id: UUID, cutoff: datetime
) -> tuple[bool, str]:
    try:
        run = client.read_task_run(task_run_id)
    except ObjectNotFound:
        return False, f"task run {task_run_id} (no longer exists)"
    state = run.state
    name = f"task run {run.name} ({task_run_id})"
    if state is None or not state.is_running():
        return False, f"{name} is {state.type.value if state else 'without state'}"
    since = state.timestamp
    if since is not None and since.astimezone(UTC) < cutoff:
        return False, f"{name} Running since {since:%Y-%m-%d %H:%M:%S} UTC (its process died)"
    return True, name


def examine_gpu_limit(
    tag: str = DEFAULT_LIMIT_TAG, *, stale_after_s: float, repair: bool = False
) -> SlotReport:
    """Find (and with `repair` free) slots of the lane's limit held by no live run."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(f"tag:{tag}")
        except ObjectNotFound:
            report = SlotReport(tag, exists=False)
            if repair:
                client.create_concurrency_limit(tag=tag, concurrency_limit=LANE_LIMIT)
                report.repaired = True
            return report
        report = SlotReport(tag, exists=True, limit=limit.limit, counted=limit.active_slots)
        for holder in client.read_concurrency_limit_by_tag(tag).active_slots:
            live, description = _holder_is_live(client, holder, cutoff)
            if live:
                report.live.append(holder)
            else:
                report.dead.append(description)
        if repair and report.orphaned and not report.live:
            # Revoke the dead leases first, so their expiry cannot free a slot twice.
            client.reset_concurrency_limit_by_tag(tag)
            client.update_global_concurrency_limit(
                f"tag:{tag}", GlobalConcurrencyLimitUpdate(active_slots=0)
            )
            report.repaired = True
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.doctor_gpu",
        description="Find (and with --repair free) a GPU lane slot held by no live run.",
    )
    parser.add_argument("--repair", action="store_true", help="free slots of dead runs")
    parser.add_argument("--tag", default=DEFAULT_LIMIT_TAG, help="the lane's concurrency tag")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a holder Running longer than this is dead (default: 2 x the image timeout)",
    )
    args = parser.parse_args(argv)
    stale_after_s = args.stale_after
    if stale_after_s is None:
        stale_after_s = 2 * load_settings().image_timeout_s
    report = examine_gpu_limit(args.tag, stale_after_s=stale_after_s, repair=args.repair)
    print("\n".join(report.lines()))
    return 0 if report.healthy else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

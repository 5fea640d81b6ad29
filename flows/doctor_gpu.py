"""The Prefect half of the doctor: a `gpu` slot held by no live run.

    python -m flows.doctor_gpu            # report (exit 1 while a slot is held by a dead run)
    python -m flows.doctor_gpu --repair   # free it

The lane's limit (`tag:gpu`, 1 slot) is held by each feeding flow run (`image-batch`,
`generate-image`) as a lease of type flow_run for the whole feed (flows.lane_feed); no task of
ours is tagged `gpu`, so the only task-run holder is someone else's `gpu`-tagged task, for its
duration. Which holders are live:

- a feeder on this machine: its lane lock (storyboard.lane_lock) is held. The kernel frees
  that lock when its process dies, so it is the truth on this machine, in every mode: held
  means live; a free lock whose record names a flow run means that run's process has ended.
- on a Prefect server, a feeder elsewhere: Prefect's tag API lists task-run holders only, so
  the doctor reads Running and Pending runs of the feeding flows instead. Its Prefect state
  proves nothing (a server restart leaves a killed run Running); evidence does: this
  machine's lane lock or run lock (storyboard.run_lock) free, or its lease in the store
  ended or older than STORYBOARD_RUN_LEASE_S, and the run is dead; `--repair` marks it
  Crashed. One with no evidence either way is live (it may hold the slot or wait for it).
  On the ephemeral API no other machine can feed, so the lane lock alone decides there.
- a task-run holder: live while its task run is Running, for at most `stale_after_s`
  (default: 2 x the image timeout -- no live render lasts that long).

Counted slots that no live holder accounts for (a killed run in ephemeral mode, a Prefect
server restart that lost its leases) are dead. Repair frees the slots only when no live run
holds or waits for the lane: it never takes a slot away from a batch in progress.
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
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from flows.gpu_limit import FEEDER_FLOWS, LANE_LIMIT, REPAIR_COMMAND, is_ephemeral
from storyboard.errors import StoryboardError
from storyboard.lane import DEFAULT_LIMIT_TAG, Lane, lanes_from_settings
from storyboard.lane_lock import probe
from storyboard.run_lock import LEASE_S, Holder, holder
from storyboard.settings import load_settings
from storyboard.store import Store


@dataclass
class SlotReport:
    tag: str
    exists: bool
    limit: int = 0
    counted: int = 0
    live: list[str] = field(default_factory=list)  # live holder descriptions
    dead: list[str] = field(default_factory=list)  # dead holder descriptions
    dead_runs: list[UUID] = field(default_factory=list)  # feeder runs shown dead, still Running
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
            f"{len(self.live)} live holder(s)"
        ]
        lines += [f"  live: {d}" for d in self.live]
        lines += [f"  dead holder: {d}" for d in self.dead]
        if self.orphaned and self.repaired:
            lines.append(f"freed {self.orphaned} slot(s) held by no live run")
        elif self.counted and self.live:
            lines.append("a live run holds or waits for the lane: nothing to repair")
        elif self.orphaned:
            lines.append(f"{self.orphaned} slot(s) held by no live run; --repair frees them")
        return lines


def _task_holder_is_live(
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


def feeder_runs(client: SyncPrefectClient) -> list[tuple[UUID, str, str]]:
    """(id, name, state) of every Running or Pending run of a flow that feeds a lane."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(FEEDER_FLOWS))),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
            )
        ),
    )
    return [(r.id, r.name, (r.state.name if r.state else None) or "?") for r in runs]


def run_evidence(run_id: str, store: Store | None, lease_s: float) -> tuple[bool | None, str]:
    """Whether flow run `run_id` is live by what this machine and the store know: True
    (its run lock is held here), False (its lock free, or its lease ended or expired), None
    (no evidence); and what tells."""
    found = holder(run_id)
    if found is not Holder.UNKNOWN:
        live = found is Holder.LIVE
        return live, f"its run lock on this machine is {'held' if live else 'free'}"
    lease = store.lease(run_id) if store is not None else None
    if lease is None:
        return None, "on another machine, or ended without telling"
    if lease.ended_at is not None:
        return False, f"it ended at {lease.ended_at:%Y-%m-%d %H:%M:%S} UTC (its lease says)"
    age = (datetime.now(UTC) - lease.renewed_at).total_seconds()
    where = f"pid {lease.pid} on {lease.host}"
    if age > lease_s:
        return False, f"{where} last renewed its lease {age:.0f} s ago (lease {lease_s:g} s)"
    return True, f"{where} renewed its lease {age:.0f} s ago"


def _examine_holders(
    client: SyncPrefectClient,
    report: SlotReport,
    tag: str,
    lanes: Sequence[Lane],
    cutoff: datetime,
    store: Store | None,
    lease_s: float,
    own: str | None = None,
) -> None:
    ended: set[str] = set()  # flow runs whose process on this machine has ended
    feeding: set[str] = set()
    for lane in lanes:
        if lane.limit_tag != tag:
            continue
        state = probe(lane.comfyui_url)
        if state.held and state.holder is not None and state.holder.run_id == own:
            continue  # the asking run itself, which waits for the slot
        if state.held:
            who = state.holder.describe() if state.holder else "a process"
            report.live.append(f"a batch feeds lane {lane.name!r} on this machine ({who})")
            if state.holder and state.holder.run_id:
                feeding.add(state.holder.run_id)
        elif state.holder and state.holder.run_id:
            ended.add(state.holder.run_id)
    for task_run in client.read_concurrency_limit_by_tag(tag).active_slots:
        running, description = _task_holder_is_live(client, task_run, cutoff)
        (report.live if running else report.dead).append(description)
    if is_ephemeral():
        return  # no other machine shares this API: the lane locks said everything
    for run_id, name, state_name in feeder_runs(client):
        if str(run_id) in feeding or str(run_id) == own:
            continue
        description = f"flow run {name} ({run_id}) is {state_name}"
        if str(run_id) in ended:
            report.dead.append(f"{description}, but its process on this machine has ended")
            report.dead_runs.append(run_id)
            continue
        evidence, why = run_evidence(str(run_id), store, lease_s)
        if evidence is False:
            report.dead.append(f"{description}, but {why}")
            report.dead_runs.append(run_id)
        else:
            report.live.append(f"{description} ({why})")


def examine_gpu_limit(
    tag: str = DEFAULT_LIMIT_TAG,
    *,
    stale_after_s: float,
    repair: bool = False,
    lanes: Sequence[Lane] | None = None,
    store: Store | None = None,
    lease_s: float = LEASE_S,
    own: str | None = None,
) -> SlotReport:
    """Find (and with `repair` free) slots of the lane's limit held by no live run; with
    `repair`, feeder runs shown dead are marked Crashed.

    `lanes` (default: those of the settings) are the lanes whose lane locks are looked at;
    `store`, where runs' leases are (none: no lease evidence); `own`, the flow run asking,
    which holds the lane's lock and waits for its slot: not a live holder."""
    if lanes is None:
        lanes = lanes_from_settings(load_settings())
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
        _examine_holders(client, report, tag, lanes, cutoff, store, lease_s, own)
        if repair:
            for run_id in report.dead_runs:
                client.set_flow_run_state(
                    run_id, Crashed(message=f"{REPAIR_COMMAND}: its process is gone"), force=True
                )
        if repair and report.orphaned and not report.live:
            # Revoke the dead leases first, so their expiry cannot free a slot twice.
            client.reset_concurrency_limit_by_tag(tag)
            client.update_global_concurrency_limit(
                f"tag:{tag}", GlobalConcurrencyLimitUpdate(active_slots=0)
            )
            report.repaired = True
        return report


def free_dead_holders(
    lane: Lane, run_id: str, *, store: Store, stale_after_s: float, lease_s: float
) -> list[str]:
    """For flow run `run_id`, which holds `lane`'s lock and finds its slot taken: free the
    slot when every holder is proven dead (its process on this machine gone, or its lease in
    the store ended or expired), marking a dead run Crashed, as `--repair` does; the dead
    holders freed (none: a live run holds or waits for it, or nothing was taken). Without
    this, a killed run's slot stays taken until its lease expires on the server."""
    report = examine_gpu_limit(
        lane.limit_tag,
        stale_after_s=stale_after_s,
        repair=True,
        lanes=[lane],
        store=store,
        lease_s=lease_s,
        own=run_id,
    )
    if not (report.repaired and report.orphaned):
        return []
    return report.dead or [f"{report.orphaned} slot(s) counted with no holder (a server restart)"]


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
        help="a task-run holder Running longer than this is dead (default: 2 x the image timeout)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        stale_after_s = args.stale_after
        if stale_after_s is None:
            stale_after_s = 2 * settings.image_timeout_s
        # The store is read for runs' leases only where there is one (never created here).
        store = (
            Store(settings.database, lock_timeout_s=settings.store_lock_timeout_s)
            if settings.database.is_file()
            else None
        )
        report = examine_gpu_limit(
            args.tag,
            stale_after_s=stale_after_s,
            repair=args.repair,
            store=store,
            lease_s=settings.run_lease_s,
        )
    except StoryboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.healthy else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The guard of a GPU lane: one feeding process per ComfyUI server, in every Prefect mode.

Two locks, taken in this order and held for the whole feed (`hold_lane` waits for them;
`try_hold_lane`, for a batch over several lanes, takes them only if both are free):

1. the lane lock (storyboard.lane_lock): an OS `flock` keyed by the server's URL, for this
   machine. The kernel frees it when its holder dies, and nobody can take it from a live
   holder. Whatever the Prefect mode, a second batch on this machine waits for it.
2. the Prefect concurrency limit `tag:gpu` (limit 1, held as a lease of the flow run): the
   guard across machines on a Prefect server, and what a `gpu`-tagged task waits on.

A tag without a limit runs unlimited, silently, so every batch makes sure its lane's limit
exists (`create_concurrency_limit` upserts: idempotent).

A slot held by a process that was killed:
- on a Prefect server the slot is a lease the process kept renewing; the server frees it
  about 70 s after the renewals stop. A server *restart* loses its leases (they live in its
  memory) but keeps the slot count, which nothing would free. So a batch that holds the lane
  lock and finds the slot taken asks the doctor's evidence first (`hold_lane`'s `free_dead`:
  a holder's process gone from this machine, or its lease in the store ended or expired, and
  no live run holding or waiting for the lane) and frees a dead holder's slot at once. A
  live or unknown holder is waited for, within STORYBOARD_QUEUE_TIMEOUT_S (the bound of any
  wait in front of the GPU), then the run fails naming `python -m flows.doctor_gpu --repair`.
- on the ephemeral API (no server; what the demo uses) the leases live in the memory of a
  temporary server that died with its process, while the count lives on in the SQLite file
  under PREFECT_HOME. Such a process cannot see the leases of another, so a count is an
  orphan only if no live process feeds the lane: the batch repairs the count only while it
  holds the lane lock, when no other live feeder on this machine can hold a slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.sync import concurrency
from prefect.settings import get_current_settings

from flows.cancel_watch import CancelRequested
from storyboard.errors import LaneBusyError
from storyboard.lane import Lane
from storyboard.lane_lock import LaneHolder, LaneLock
from storyboard.pipeline import error_text
from tasks.api_reach import REACH, unreachable
from tasks.progress import warn

LANE_LIMIT = 1
# The flows whose runs hold a lane (through `feed_lane`); the doctor looks for their runs.
FEEDER_FLOWS = ("image-batch", "generate-image")
REPAIR_COMMAND = "python -m flows.doctor_gpu --repair"
# How long `try_hold_lane` waits for a slot it saw free: the API's own retries (a busy SQLite
# answers 503 and the client backs off 2 s) must fit, or a free lane would look taken.
SLOT_TRY_S = 15.0
# Giving a lane's slot back takes milliseconds from an API that answers; one that went away
# is not waited for longer (the lease ends on the server by itself).
RELEASE_WAIT_S = 10.0
# How often a batch waiting for a taken slot says so (and how to free a dead holder's).
WAIT_LINE_S = 10.0
LIMITS_PAGE = 200  # the most limits one read of the API returns (its default page)

Logger = logging.Logger | logging.LoggerAdapter[Any]


def is_ephemeral() -> bool:
    return get_current_settings().api.url is None


def ensure_lane_limits(tags: Sequence[str], logger: Logger) -> None:
    """Create (or reset to 1) each tag's limit, writing only those missing or changed: one
    read for every lane rather than an upsert each (a write, which a busy SQLite queues)."""
    with get_client(sync_client=True) as client:
        limits = tag_limits(client)
        for tag in dict.fromkeys(tags):
            found = limits.get(tag)
            if found is None or found.limit != LANE_LIMIT or not found.active:
                client.create_concurrency_limit(tag=tag, concurrency_limit=LANE_LIMIT)


def tag_limits(client: SyncPrefectClient) -> dict[str, GlobalConcurrencyLimitResponse]:
    """Every tag's limit (`tag:{tag}`) on the server, by tag, read a page at a time."""
    found: dict[str, GlobalConcurrencyLimitResponse] = {}
    offset = 0
    while True:
        page = client.read_global_concurrency_limits(limit=LIMITS_PAGE, offset=offset)
        for limit in page:
            if limit.name.startswith("tag:"):
                found[limit.name.removeprefix("tag:")] = limit
        if len(page) < LIMITS_PAGE:
            return found
        offset += len(page)


def free_orphaned_slots(tag: str, logger: Logger, client: SyncPrefectClient | None = None) -> int:
    """Ephemeral mode, with the lane lock held: give back every counted slot no lease of this
    process's API accounts for (they were taken by processes that died). Returns how many."""
    with contextlib.nullcontext(client) if client else get_client(sync_client=True) as api:
        # Count first, holders second: a slot taken in between shows up as a holder, never as
        # an orphan.
        counted = api.read_global_concurrency_limit_by_name(f"tag:{tag}").active_slots
        holders = api.read_concurrency_limit_by_tag(tag).active_slots
        orphaned = counted - len(holders)
        if orphaned > 0:
            logger.warning(
                "the %r limit had %d slot(s) held by no live run (a killed process); freed",
                tag,
                orphaned,
            )
            api.update_global_concurrency_limit(
                f"tag:{tag}", GlobalConcurrencyLimitUpdate(active_slots=len(holders))
            )
        return max(orphaned, 0)


@contextmanager
def _take_slots(
    tags: Sequence[str], run_id: str, *, timeout_s: float, lease_s: float
) -> Iterator[None]:
    """One slot of each tag's limit, as one lease held by flow run `run_id`: TimeoutError
    when they stay taken for `timeout_s`.

    A renewal that fails does not end the batch (Prefect's strict default would inject a
    CancelledError into it a few seconds after its API went away): the lane's OS lock still
    guards this machine, and the lease ends on the server. Giving the slots back never waits
    long for an API that went away (`_give_back`)."""
    taken = concurrency(
        names=[f"tag:{tag}" for tag in tags],
        occupy=1,
        timeout_seconds=timeout_s,
        lease_duration=lease_s,
        strict=True,
        holder=ConcurrencyLeaseHolder(type="flow_run", id=uuid.UUID(run_id)),
        raise_on_lease_renewal_failure=False,
    )
    taken.__enter__()
    try:
        yield
    finally:
        _give_back(taken, tags)


def _give_back(taken: AbstractContextManager[None], tags: Sequence[str]) -> None:
    """Release the slots from a thread of our own, waiting RELEASE_WAIT_S at most (none once
    the API is known gone): a release to an API that went away waits out the client's retries
    and then raises, where the batch has nothing left to lose by going on."""
    failed: list[BaseException] = []

    def let_go() -> None:
        try:
            taken.__exit__(None, None, None)
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=let_go, name="give-back-lane-slots", daemon=True)
    thread.start()
    thread.join(0.0 if REACH.gone is not None else RELEASE_WAIT_S)
    if failed and unreachable(failed[0]):
        REACH.lost(f"giving back the {', '.join(tags)} slot(s)", failed[0])
    elif failed:
        warn(f"giving back the {', '.join(tags)} slot(s) failed: {error_text(failed[0])}")


@contextmanager
def hold_lane(
    lane: Lane,
    run_id: str,
    *,
    wait_s: float,
    lease_s: float,
    logger: Logger,
    cancelled: threading.Event | None = None,
    free_dead: Callable[[], list[str]] | None = None,
) -> Iterator[None]:
    """Hold `lane` for this flow run: its lane lock, then its Prefect slot (a lease of
    `lease_s`, renewed), each waited for within one total `wait_s`; LaneBusyError naming the
    way out when that runs out, CancelRequested once `cancelled` is set while it waits.

    On a Prefect server, a slot found taken once the lane lock is held is handed to
    `free_dead` (flows.doctor_gpu.free_dead_holders), which frees it when its holder is
    proven dead and returns what it freed: a killed batch's slot is taken over at once
    rather than when its lease expires."""
    deadline = time.monotonic() + wait_s

    def waiting(holder: LaneHolder | None) -> None:
        who = holder.describe() if holder else "another process"
        logger.info("lane %r is fed by another batch on this machine (%s); waiting", lane.name, who)

    logger.info("waiting for lane %r (ComfyUI at %s)", lane.name, lane.comfyui_url)
    with LaneLock(lane.comfyui_url, run_id, wait_s=wait_s, on_wait=waiting), ExitStack() as slot:
        if is_ephemeral():
            free_orphaned_slots(lane.limit_tag, logger)
        elif free_dead is not None and slot_taken(lane.limit_tag):
            for dead in free_dead():
                logger.warning("lane %r: freed its slot, held by a dead run: %s", lane.name, dead)
        try:
            _wait_for_slot(
                slot,
                lane,
                run_id,
                deadline=deadline,
                lease_s=lease_s,
                logger=logger,
                cancelled=cancelled,
            )
        except TimeoutError as exc:
            raise LaneBusyError(
                f"the {lane.limit_tag!r} slot of lane {lane.name!r} stayed taken for"
                f" {wait_s:g} s (STORYBOARD_QUEUE_TIMEOUT_S) while no batch on this machine fed"
                " the lane: a batch on another machine holds it, or a Prefect server restart"
                f" left it behind. `python -m flows.doctor_gpu` tells which; `{REPAIR_COMMAND}`"
                " frees a dead one. No sentence was rendered; they stay dirty."
            ) from exc
        logger.info("holding lane %r", lane.name)
        yield


def _wait_for_slot(
    slot: ExitStack,
    lane: Lane,
    run_id: str,
    *,
    deadline: float,
    lease_s: float,
    logger: Logger,
    cancelled: threading.Event | None,
) -> None:
    """Take the lane's slot into `slot`, saying every WAIT_LINE_S what it waits for and
    which command frees a dead holder's; TimeoutError at `deadline`; CancelRequested once
    `cancelled` is set (looked at between tries). A try is not shorter than WAIT_LINE_S: one
    that times out on our side while the server grants it leaves a lease we hold ourselves
    (seen with 2 s tries on a loaded machine)."""
    began = time.monotonic()
    while True:
        left = deadline - time.monotonic()
        try:
            slot.enter_context(
                _take_slots(
                    [lane.limit_tag],
                    run_id,
                    timeout_s=max(min(left, WAIT_LINE_S), 0.0),
                    lease_s=lease_s,
                )
            )
            return
        except TimeoutError:
            if left <= WAIT_LINE_S:
                raise
        if cancelled is not None and cancelled.is_set():
            raise CancelRequested
        logger.warning(
            "lane %r: still waiting for its %r slot, held by a run that is not on this machine"
            " or did not end cleanly (%.0f s so far, up to %.0f s more); `python -m"
            " flows.doctor_gpu` tells whether it is live, `%s` frees a dead one",
            lane.name,
            lane.limit_tag,
            time.monotonic() - began,
            max(deadline - time.monotonic(), 0.0),
            REPAIR_COMMAND,
        )


def slot_taken(tag: str) -> bool:
    """Whether another run holds the lane's slot now (one read, no wait)."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(f"tag:{tag}")
    return limit.active_slots >= limit.limit


def try_hold_lanes(
    lanes: Sequence[Lane],
    run_id: str,
    *,
    lease_s: float,
    logger: Logger,
    free_dead: Callable[[Lane], list[str]] | None = None,
) -> tuple[ExitStack, list[Lane]]:
    """`try_hold_lane` for many lanes at once: the free ones of `lanes` (their locks and
    slots) held until the returned stack is closed, and which those are. On a Prefect
    server a lane locked here whose slot is taken is handed to `free_dead` first, as in
    `hold_lane`: a dead run's slot is taken over, not skipped until its lease ends.

    Their slots are taken together, as one lease of the run: one write and one renewal
    for the whole farm, where a lease each made a batch's start grow by ~0.1 s per lane
    on the SQLite of the ephemeral API. A slot taken by another run between our read and
    the write fails the whole lease (the server grants all of it or none); the lanes are
    then tried one by one."""
    locks: dict[str, ExitStack] = {}
    held = ExitStack()
    free: list[Lane] = []
    try:
        for lane in lanes:
            lock = ExitStack()
            with contextlib.suppress(LaneBusyError):
                lock.enter_context(LaneLock(lane.comfyui_url, run_id, wait_s=0.0))
                locks[lane.name] = lock
        locked = [lane for lane in lanes if lane.name in locks]
        limits: dict[str, GlobalConcurrencyLimitResponse] = {}
        if locked:
            with get_client(sync_client=True) as client:
                limits = tag_limits(client)
                # With the lane lock held nobody else on this machine takes its slot, so an
                # uncounted one has no orphan to free: holders are asked only where a slot is
                # counted (two reads a lane at every start, 80 ms for eight, otherwise).
                counted = [lane for lane in locked if _counted(limits.get(lane.limit_tag))]
                if counted and is_ephemeral():
                    for lane in counted:
                        free_orphaned_slots(lane.limit_tag, logger, client)
                    limits = tag_limits(client)
                full = [lane for lane in locked if not _has_room(limits.get(lane.limit_tag))]
                if full and free_dead is not None and not is_ephemeral():
                    for lane in full:
                        for dead in free_dead(lane):
                            logger.warning(
                                "lane %r: freed its slot, held by a dead run: %s", lane.name, dead
                            )
                    limits = tag_limits(client)
        free = [lane for lane in locked if _has_room(limits.get(lane.limit_tag))]
        for lane in free:  # a lane whose slot another run holds lets go of its lock at once
            held.enter_context(locks.pop(lane.name))
        for lock in locks.values():
            lock.close()
        if not free:
            return held, []
        held.enter_context(
            _take_slots(
                [lane.limit_tag for lane in free], run_id, timeout_s=SLOT_TRY_S, lease_s=lease_s
            )
        )
    except TimeoutError:
        held.close()
        return _hold_one_by_one(free, run_id, lease_s=lease_s, logger=logger)
    except BaseException:
        held.close()
        for lock in locks.values():
            lock.close()
        raise
    for lane in free:
        logger.info("holding lane %r (ComfyUI at %s)", lane.name, lane.comfyui_url)
    return held, free


def _has_room(limit: GlobalConcurrencyLimitResponse | None) -> bool:
    return limit is not None and limit.active_slots < limit.limit


def _counted(limit: GlobalConcurrencyLimitResponse | None) -> bool:
    return limit is not None and limit.active_slots > 0


def _hold_one_by_one(
    lanes: Sequence[Lane], run_id: str, *, lease_s: float, logger: Logger
) -> tuple[ExitStack, list[Lane]]:
    held = ExitStack()
    taken = []
    for lane in lanes:
        one = try_hold_lane(lane, run_id, lease_s=lease_s, logger=logger)
        if one is not None:
            held.enter_context(one)
            taken.append(lane)
    return held, taken


def try_hold_lane(lane: Lane, run_id: str, *, lease_s: float, logger: Logger) -> ExitStack | None:
    """`hold_lane` without waiting: the lane's lock and slot, held until the returned stack
    is closed, or None (nothing held) when another run has either. A batch over several
    lanes skips such a lane and tries it again while it runs."""
    held = ExitStack()
    try:
        held.enter_context(LaneLock(lane.comfyui_url, run_id, wait_s=0.0))
        if is_ephemeral():
            free_orphaned_slots(lane.limit_tag, logger)
        if slot_taken(lane.limit_tag):
            held.close()
            return None
        held.enter_context(
            _take_slots([lane.limit_tag], run_id, timeout_s=SLOT_TRY_S, lease_s=lease_s)
        )
    except (LaneBusyError, TimeoutError):
        held.close()
        return None
    except BaseException:
        held.close()
        raise
    logger.info("holding lane %r (ComfyUI at %s)", lane.name, lane.comfyui_url)
    return held

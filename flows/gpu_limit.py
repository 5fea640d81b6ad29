"""The Prefect concurrency limit that guards a GPU lane, and its recovery after a killed run.

A tag without a limit runs unlimited, silently, so every batch makes sure its lane's limit
exists (`create_concurrency_limit` upserts: idempotent).

A slot held by a process that was killed:
- on a Prefect server the slot is a lease the process keeps renewing; the server's lease
  service frees it about 70 s after the renewals stop. Nothing to do.
- on the ephemeral API (no server; what the demo uses) the leases live in the memory of the
  temporary server that died with the process, while the slot count lives on in the SQLite
  database under PREFECT_HOME: the next run would wait forever. So, in ephemeral mode only,
  a batch gives back every counted slot that no lease accounts for. (Two ephemeral processes
  do not see each other's leases; run concurrent batches against a server.)
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.settings import get_current_settings

LANE_LIMIT = 1

Logger = logging.Logger | logging.LoggerAdapter[Any]


def is_ephemeral() -> bool:
    return get_current_settings().api.url is None


def ensure_lane_limit(tag: str, logger: Logger) -> None:
    """Create (or reset to 1) the tag limit; in ephemeral mode free slots of dead processes."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=LANE_LIMIT)
        if not is_ephemeral():
            return
        # Count first, holders second: a slot taken in between shows up as a holder, never as
        # an orphan.
        counted = client.read_global_concurrency_limit_by_name(f"tag:{tag}").active_slots
        holders = client.read_concurrency_limit_by_tag(tag).active_slots
        if counted > len(holders):
            logger.warning(
                "the %r limit had %d slot(s) held by no live run (a killed process); freed",
                tag,
                counted - len(holders),
            )
            client.update_global_concurrency_limit(
                f"tag:{tag}", GlobalConcurrencyLimitUpdate(active_slots=len(holders))
            )

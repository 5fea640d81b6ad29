"""A cancel from Prefect (the UI's Cancel button, `prefect flow-run cancel`) for the run this
process is executing.

Prefect delivers a cancel by killing the process of a run a worker or a runner started; a run
started any other way (`storyboard render` against a server, a flow called from Python) is only
marked Cancelling, and went on rendering every sentence. So each of our runs watches its own
state: a thread asks the API every CANCEL_POLL_S, and once the run is Cancelling (or already
Cancelled) it says so once and calls `on_cancel`, which stops the run the way a Ctrl-C does
(prompts off the servers, claimed sentences released still dirty). The run then ends Cancelled.
A run killed by its worker meanwhile ends the same way, through its SIGTERM.

One GET every CANCEL_POLL_S per run, not per lane: a cancel takes effect within a few seconds,
and a farm's idle cost stays far under its bar (SCALING.md).

A process that runs flow runs on threads (the warm runner) stops them the same way when it
is stopped itself: `stop_all(reason)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from tasks.api_reach import REACH, unreachable
from tasks.progress import warn

CANCEL_POLL_S = 3.0
STOPPED_BY = (StateType.CANCELLING, StateType.CANCELLED)
FROM_PREFECT = "cancelled from Prefect"

_watching: set[CancelWatch] = set()
_watching_lock = threading.Lock()


def stop_all(reason: str) -> int:
    """Stop every run of this process that a CancelWatch watches, as a cancel would;
    `reason` ends up in their messages. How many were stopped."""
    with _watching_lock:
        watches = list(_watching)
    return sum(watch.stop(reason) for watch in watches)


class CancelRequested(BaseException):
    """Raised in the flow's thread once its run was cancelled from Prefect. A BaseException,
    as KeyboardInterrupt is: no `except Exception` on the way may take it for a failure."""


class CancelWatch:
    def __init__(
        self,
        flow_run_id: str,
        on_cancel: Callable[[], None],
        *,
        poll_s: float = CANCEL_POLL_S,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.requested = threading.Event()
        self.reason = FROM_PREFECT
        self._on_cancel = on_cancel
        self._poll_s = poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)

    def __enter__(self) -> CancelWatch:
        with _watching_lock:
            _watching.add(self)
        self._thread.start()
        return self

    def stop(self, reason: str) -> bool:
        """Stop the run (once, whoever asks first): False when it was already asked, or
        has ended."""
        with _watching_lock:
            if self.requested.is_set() or self._done.is_set():
                return False
            self.reason = reason
            self.requested.set()
        warn(f"{reason}: stopping; its unfinished sentences stay dirty")
        self._on_cancel()
        return True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with _watching_lock:
            self._done.set()
            _watching.discard(self)

    def _run(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._done.wait(self._poll_s):
                if REACH.gone is not None:
                    return  # no API: nobody can cancel this run there
                try:
                    run = client.read_flow_run(UUID(self.flow_run_id))
                except Exception as exc:
                    if unreachable(exc):
                        REACH.lost("watching the run for a cancel", exc)
                        return
                    continue  # a bad answer once: ask again next time
                if run.state is not None and run.state.type in STOPPED_BY:
                    self.stop(FROM_PREFECT)  # not if the run ended meanwhile
                    return

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
        self._on_cancel = on_cancel
        self._poll_s = poll_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)

    def __enter__(self) -> CancelWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()

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
                    if self._done.is_set():
                        return  # the run ended meanwhile: nothing left to stop
                    warn("cancelled from Prefect: stopping; its unfinished sentences stay dirty")
                    self.requested.set()
                    self._on_cancel()
                    return

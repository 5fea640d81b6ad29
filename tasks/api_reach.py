"""Whether this process still reaches its Prefect API, and going on without it when not.

A batch records its progress, tables and pictures in Prefect, but the store and the files are
the truth. A Prefect server that dies mid-batch (killed, restarted for long, its machine gone)
must cost the batch nothing but those records. Yet each call to it waits out the client's
retries (about a minute) and ends in a traceback, and Prefect's own log and event workers
try every record again at exit: a batch whose last picture came at 110 s ended at 521 s,
with no results table and exit status 1.

So the first call that finds the API unreachable marks it gone (`REACH.lost`), says so in
one line, and from then on: artifact calls are skipped (`recorded`), our log records stop
going to the API (`muted`), and `storyboard render` ends as soon as the batch has (flows.cli).
A new run in the same process (the warm runner, a worker) starts believing in it again
(`REACH.start`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from prefect.client.orchestration import get_client

from storyboard.pipeline import error_text
from tasks.progress import warn

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long the end of a batch waits for the API's health answer.
HEALTH_WAIT_S = 3.0


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the API cannot be reached (not that it refused what we sent)."""
    if isinstance(exc, httpx.TransportError):  # refused, reset, timed out, DNS
        return True
    # Prefect's client says so in a RuntimeError once its retries are spent.
    return isinstance(exc, RuntimeError) and str(exc).startswith("Failed to reach API")


class ApiReach:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gone: str | None = None
        self._unsent = 0  # events Prefect failed to send while the API was not known gone

    @property
    def gone(self) -> str | None:
        """Why the API was given up for this run; None while it answers."""
        return self._gone

    def start(self) -> None:
        with self._lock:
            self._gone, self._unsent = None, 0

    def unsent(self) -> None:
        """Prefect's event sender failed on an event: a server killed a moment ago does that
        first, before any call of ours finds it gone. Counted, not said: the health check at
        the end tells which it was (`answered`)."""
        with self._lock:
            self._unsent += 1

    def answered(self) -> None:
        """The API answered the health check: events it did not take are said in one line."""
        with self._lock:
            unsent, self._unsent = self._unsent, 0
        if unsent:
            warn(
                f"Prefect could not send {unsent} event(s) of this run to its API; they are"
                " missing from its event feed"
            )

    def lost(self, what: str, exc: BaseException) -> None:
        """`what` found the API unreachable: say so once; later calls are skipped."""
        with self._lock:
            if self._gone is not None:
                return
            self._gone = f"{what}: {error_text(exc)}"
        warn(
            f"the Prefect API stopped answering ({self._gone}); the batch goes on without"
            " it: every picture is stored and recorded in the store as usual, but this run's"
            " progress, results and pictures will not show in Prefect"
        )


REACH = ApiReach()


def recorded(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(...)` to the Prefect API, best effort: None with a warning when it fails, and not
    called at all once the API is gone."""
    if REACH.gone is not None:
        return None
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        if unreachable(exc):
            REACH.lost(what, exc)
        else:
            warn(f"{what} failed, going on without it: {error_text(exc)}")
        return None


def check_reach(timeout_s: float = HEALTH_WAIT_S) -> bool:
    """Ask the API's health with a short timeout of our own (the client's retries would take
    a minute to say the same); False, and the API marked gone, when it does not answer."""
    if REACH.gone is not None:
        return False
    try:
        url = str(get_client(sync_client=True).api_url).rstrip("/")
        httpx.get(f"{url}/health", timeout=timeout_s).raise_for_status()
    except Exception as exc:
        if unreachable(exc) or isinstance(exc, httpx.HTTPStatusError):
            REACH.lost("the API's health check", exc)
            return False
        raise
    REACH.answered()
    return True


def muted(record: logging.LogRecord) -> bool:
    """A log filter for Prefect's API log handler: nothing is sent once the API is gone (each
    record would be tried again at exit, and printed as an error when it fails)."""
    return REACH.gone is None


# How Prefect's background services log an item they failed on (its traceback only at DEBUG).
_SERVICE_FAILED = "Service %r failed to process item %r"


def quieted(record: logging.LogRecord) -> bool:
    """A log filter for Prefect's loggers that complain of its API: nothing once the API is
    gone, and an event its sender failed on is counted (`ApiReach.unsent`), not printed with
    the whole event: a killed server makes that the first sign, before any call of ours."""
    if REACH.gone is not None:
        return False
    args = record.args if isinstance(record.args, tuple) else ()
    if record.msg == _SERVICE_FAILED and args[:1] == ("EventsWorker",):
        REACH.unsent()
        return False
    return True

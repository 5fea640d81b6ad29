"""The library's log records in the run's logs in the Prefect UI.

The library (`storyboard.*`) logs with the standard logging module and never imports prefect;
while a flow runs, `library_logs_to_run(flow_run_id)` hands its records of WARNING and above to
Prefect's API log handler, which files each under the flow or task run it was logged in. The
lane's own event-loop thread (storyboard.comfyui: a dropped WebSocket, a resubmitted prompt)
logs outside any run context: its records go to the one flow run of this process then running,
and are dropped while several run (they could belong to any; Prefect would warn about each).

Prefect's engine logs "Finished in state Completed()" at INFO for every task run: three per
picture, more than the lines a person reads about it, and each one formatted, written to the
terminal and shipped to the API. While one of our flows runs, those records are dropped
(`CompletedTaskFilter`); a task that ends in any other state still logs its line, and the task's
state stays in the UI. A task that fails with one of our own errors logs its one line without
Prefect's traceback (`KnownFailureFilter`).

Once the API is found gone (tasks.api_reach), no record is shipped to it any more (each would
be tried again at exit and printed as an error), and Prefect's own complaints about it, one per
event or lease it cannot send, are dropped. An event Prefect's sender fails on is counted
rather than printed whole: a server killed a moment ago makes that the first sign, and the
health check at the end says which it was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from storyboard.errors import StoryboardError
from tasks.api_reach import REACH, muted, quieted

LIBRARY_LOGGER = "storyboard"
# Where Prefect says, record after record, that its API does not answer (an event not sent,
# a lease not renewed): silenced once the batch has said so in its one line.
API_RETRY_LOGGERS = (
    "prefect._internal.concurrency",
    "prefect.events.clients",
    "prefect.concurrency",
)
TASK_RUN_LOGGER = "prefect.task_runs"

_lock = threading.Lock()
_runs: list[str] = []


class _RunHandler(APILogHandler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        if FlowRunContext.get() is not None or TaskRunContext.get() is not None:
            return super().filter(record)
        with _lock:
            runs = list(_runs)
        if len(runs) != 1:
            return False
        record.flow_run_id = runs[0]
        return super().filter(record)


_handler = _RunHandler()


class CompletedTaskFilter(logging.Filter):
    """Drops the engine's INFO line for a task run that completed; keeps every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith("Finished in state Completed(")
        )


_completed = CompletedTaskFilter()


class KnownFailureFilter(logging.Filter):
    """Keeps the engine's line for a task run that failed with one of our own errors (a
    StoryboardError: a server's answer, a refused input), without its traceback: the line
    already names the error and its message, the state keeps it, and thirty lines of
    Prefect's frames tell a person nothing more. Anything else (a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, StoryboardError):
            record.exc_info, record.exc_text = None, None
        return True


_known_failure = KnownFailureFilter()


def _api_handlers() -> list[APILogHandler]:
    """Every handler that ships records to the API: ours, and Prefect's own."""
    names = ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
    found = [h for name in names for h in logging.getLogger(name).handlers]
    return [_handler, *(h for h in found if isinstance(h, APILogHandler))]


@contextmanager
def library_logs_to_run(flow_run_id: str) -> Iterator[None]:
    """Attach the handler and the completed-task filter while any flow of this process runs
    (counted, so two flows in threads neither duplicate nor cut each other's records)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    task_runs = logging.getLogger(TASK_RUN_LOGGER)
    with _lock:
        if not _runs:
            REACH.start()  # a run believes in its API until a call finds it gone
            logger.addHandler(_handler)
            task_runs.addFilter(_completed)
            task_runs.addFilter(_known_failure)
            for handler in _api_handlers():
                if muted not in handler.filters:
                    handler.addFilter(muted)
            for name in API_RETRY_LOGGERS:
                if quieted not in logging.getLogger(name).filters:
                    logging.getLogger(name).addFilter(quieted)
        _runs.append(flow_run_id)
    try:
        yield
    finally:
        with _lock:
            _runs.remove(flow_run_id)
            if not _runs:
                logger.removeHandler(_handler)
                task_runs.removeFilter(_completed)
                task_runs.removeFilter(_known_failure)

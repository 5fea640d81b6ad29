"""The library's log records in the run's logs in the Prefect UI.

The library (`storyboard.*`) logs with the standard logging module and never imports prefect;
while a flow runs, `library_logs_to_run()` hands its records of WARNING and above to Prefect's
API log handler, which files each under the flow or task run it was logged in. Records logged
outside any run (another thread of the process, a test's simulator) are left alone: Prefect
would warn about each of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

LIBRARY_LOGGER = "storyboard"


def _in_a_run(record: logging.LogRecord) -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class _RunHandler(APILogHandler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.addFilter(_in_a_run)


_lock = threading.Lock()
_users = 0
_handler = _RunHandler()


@contextmanager
def library_logs_to_run() -> Iterator[None]:
    """Attach the handler for as long as any flow of this process runs (counted, so two
    flows in threads neither duplicate nor cut each other's records)."""
    global _users
    logger = logging.getLogger(LIBRARY_LOGGER)
    with _lock:
        if _users == 0:
            logger.addHandler(_handler)
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                logger.removeHandler(_handler)

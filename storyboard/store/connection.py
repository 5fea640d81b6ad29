"""One DuckDB transaction at a time, waiting out another process's lock.

Only one process can hold a DuckDB file open (a second one, even read-only,
gets "Could not set lock on file"), so nothing keeps the file open: each
transaction opens it, runs, commits and closes. A lock conflict, or a
write-write conflict between two threads of this process, becomes
StoreLockedError; like every retry loop, the lock wait asks
`errors.is_retryable` about it and sleeps `storyboard.backoff.default_backoff`
(its fast, local scale) between tries, within `lock_timeout_s` in total.
Anything else DuckDB raises is a StoreError, never retried here.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from storyboard.backoff import Backoff, default_backoff
from storyboard.errors import StoreError, StoreLockedError, is_retryable

T = TypeVar("T")
Connection = duckdb.DuckDBPyConnection

__all__ = ["Connection", "Database"]


def _is_contention(exc: duckdb.Error) -> bool:
    message = str(exc).lower()
    if isinstance(exc, duckdb.IOException):
        return re.search(r"\block\b", message) is not None  # not "could not read block"
    return isinstance(exc, duckdb.TransactionException) and "conflict" in message


class Database:
    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff = default_backoff,
    ) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self._sleep = sleep
        self._backoff = backoff

    def run(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in one transaction; foreign errors become StoreError."""
        attempt, waited, start = 0, 0.0, time.monotonic()
        while True:
            try:
                return self._once(op)
            except duckdb.Error as exc:
                error = self._error(exc)
                if not is_retryable(error):
                    raise error from exc
                attempt += 1
                delay = self._backoff(attempt)
                out_of_time = time.monotonic() - start + delay > self.lock_timeout_s
                if waited + delay > self.lock_timeout_s or out_of_time:
                    raise error from exc
                self._sleep(delay)
                waited += delay

    def _once(self, op: Callable[[Connection], T]) -> T:
        con = duckdb.connect(str(self.path))
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                result = op(con)
                con.execute("COMMIT")
            except BaseException:
                # A failed COMMIT has already rolled back; keep the original error.
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            return result
        finally:
            con.close()

    def _error(self, exc: duckdb.Error) -> StoreError:
        """Our error for what DuckDB raised: StoreLockedError (retryable) for contention."""
        if not _is_contention(exc):
            return StoreError(f"database error in {self.path}: {exc}")
        holder = re.search(r"PID (\d+)", str(exc))
        by = f" by process {holder.group(1)}" if holder else ""
        return StoreLockedError(
            f"the store {self.path} is still locked{by} after {self.lock_timeout_s:g} s: another "
            "storyboard command or a DuckDB client keeps it open; close it and retry, or raise "
            "STORYBOARD_STORE_LOCK_TIMEOUT_S"
        )

"""One DuckDB transaction at a time, waiting out another process's lock.

Only one process can hold a DuckDB file open (a second one, even read-only,
gets "Could not set lock on file"), so nothing keeps the file open: each
transaction opens it, runs, commits and closes. A lock conflict, or a
write-write conflict between two threads of this process, is retried with
bounded exponential backoff; past the budget it becomes StoreLockedError.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from storyboard.errors import StoreError, StoreLockedError

T = TypeVar("T")
Connection = duckdb.DuckDBPyConnection


def default_backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (0-based): doubling from 5 ms, capped, jittered.

    The jitter keeps two processes that collided from colliding again in step.
    """
    return min(0.005 * 2.0**attempt, 0.25) * random.uniform(0.5, 1.0)


def is_contention(exc: duckdb.Error) -> bool:
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
        backoff: Callable[[int], float] = default_backoff,
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
                if not is_contention(exc):
                    raise StoreError(f"database error in {self.path}: {exc}") from exc
                delay = self._backoff(attempt)
                attempt += 1
                out_of_time = time.monotonic() - start + delay > self.lock_timeout_s
                if waited + delay > self.lock_timeout_s or out_of_time:
                    raise StoreLockedError(self._locked_message(exc)) from exc
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

    def _locked_message(self, exc: duckdb.Error) -> str:
        holder = re.search(r"PID (\d+)", str(exc))
        by = f" by process {holder.group(1)}" if holder else ""
        return (
            f"the store {self.path} is still locked{by} after {self.lock_timeout_s:g} s: another "
            "storyboard command or a DuckDB client keeps it open; close it and retry, or raise "
            "STORYBOARD_STORE_LOCK_TIMEOUT_S"
        )

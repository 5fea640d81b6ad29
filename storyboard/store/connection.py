"""One DuckDB transaction at a time, waiting out another process's lock.

Only one process can hold a DuckDB file open (a second one, even read-only,
gets "Could not set lock on file"), and opening it costs ~25-35 ms, most of a
store call. By default each transaction opens the file, runs, commits and
closes. With `keep_open_s` (a batch) the file stays open between transactions
that follow each other within that idle time, each transaction on its own
cursor, and a background thread closes it when idle that long, and in any
case after `max_hold_s` in a row (reopened by the next transaction). A
process that meets the lock leaves a marker file beside the store
(`<store>.waiting`, its pid, refreshed on every retry); a process keeping the
file open lets go within `CLOSER_POLL_S` of seeing a fresh one from another
process and stays away for `WAITER_PAUSE_S`, longer than the waiter's
longest backoff, so the CLI stays usable during a batch. A DuckDB client that
does not retry (the duckdb shell) can still meet the lock while a batch runs.

A lock conflict, or a write-write conflict between two threads of this
process, becomes StoreLockedError; like every retry loop, the lock wait asks
`errors.is_retryable` about it and sleeps `storyboard.backoff.default_backoff`
(its fast, local scale) between tries, within `lock_timeout_s` in total.
Anything else DuckDB raises is a StoreError, never retried here.

A kept connection is closed when the interpreter exits (`atexit`), before Python stops its
daemon threads: the closer thread stopped inside DuckDB's close would abort the process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from storyboard.backoff import Backoff, default_backoff
from storyboard.errors import StoreError, StoreLockedError, is_retryable

T = TypeVar("T")
Connection = duckdb.DuckDBPyConnection

__all__ = ["BATCH_KEEP_OPEN_S", "BATCH_MAX_HOLD_S", "Connection", "Database"]


def _is_contention(exc: duckdb.Error) -> bool:
    message = str(exc).lower()
    if isinstance(exc, duckdb.IOException):
        return re.search(r"\block\b", message) is not None  # not "could not read block"
    return isinstance(exc, duckdb.TransactionException) and "conflict" in message


# What a batch keeps the file open with: one open per burst of store calls instead of per call,
# short enough that the CLI never waits long (and it makes a kept file let go at once).
BATCH_KEEP_OPEN_S = 0.5
BATCH_MAX_HOLD_S = 2.0
# After seeing a waiter, stay away longer than its longest backoff (0.25 s) so it gets in.
WAITER_PAUSE_S = 0.3
# How often the closer looks for idleness, a waiter and the hold limit while the file is kept.
CLOSER_POLL_S = 0.05
# A waiter refreshes its marker on every retry (at most ~0.25 s apart): an older one was
# left by a process that has stopped waiting.
WAITER_FRESH_S = 1.0


# Databases that may keep a connection open, closed at exit (module docstring).
_KEEPING: weakref.WeakSet[Database] = weakref.WeakSet()


@atexit.register
def _close_kept_at_exit() -> None:
    for database in list(_KEEPING):
        database.close()
        closer = database._closer
        if closer is not None:
            closer.join(timeout=1.0)


class Database:
    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff = default_backoff,
        keep_open_s: float = 0.0,
        max_hold_s: float = BATCH_MAX_HOLD_S,
    ) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.keep_open_s = keep_open_s
        self.max_hold_s = max_hold_s
        self.waiter_marker = path.with_name(path.name + ".waiting")
        self._sleep = sleep
        self._backoff = backoff
        self._lock = threading.Lock()
        self._kept: Connection | None = None
        self._kept_since = 0.0
        self._last_used = 0.0
        self._users = 0  # transactions running on cursors of the kept connection
        self._retiring = False  # close the kept connection once its last user is done
        self._closed_until = 0.0  # no kept connection before this (another process's turn)
        self._closer: threading.Thread | None = None

    def run(self, op: Callable[[Connection], T]) -> T:
        """Run `op` in one transaction; foreign errors become StoreError."""
        attempt, waited, start = 0, 0.0, time.monotonic()
        announced = False
        while True:
            try:
                result = self._once(op)
            except duckdb.Error as exc:
                error = self._error(exc)
                if not is_retryable(error):
                    raise error from exc
                attempt += 1
                delay = self._backoff(attempt)
                out_of_time = time.monotonic() - start + delay > self.lock_timeout_s
                if waited + delay > self.lock_timeout_s or out_of_time:
                    self._stop_waiting(announced)
                    raise error from exc
                if isinstance(exc, duckdb.IOException):  # another process, not another thread
                    self._announce_waiting()
                    announced = True
                self._sleep(delay)
                waited += delay
            else:
                self._stop_waiting(announced)
                return result

    def close(self) -> None:
        """Let go of the file now (a kept connection closes once its transactions end)."""
        with self._lock:
            if self._kept is not None:
                self._retire(time.monotonic(), pause=False)

    @property
    def held(self) -> bool:
        """Whether this object keeps the file open between transactions right now."""
        return self._kept is not None

    def _once(self, op: Callable[[Connection], T]) -> T:
        con, kept = self._connect()
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
            if kept:
                self._done()

    # -- keeping the file open -------------------------------------------------------------

    def _connect(self) -> tuple[Connection, bool]:
        """A cursor of the kept connection (True), or a connection of its own (False)."""
        if self.keep_open_s <= 0:
            return duckdb.connect(str(self.path)), False
        with self._lock:
            now = time.monotonic()
            if self._kept is not None and self._someone_waits():
                self._retire(now, pause=True)
            elif self._kept is not None and now - self._kept_since > self.max_hold_s:
                self._retire(now, pause=False)
            if self._kept is None and now >= self._closed_until and not self._someone_waits():
                self._kept = duckdb.connect(str(self.path))
                self._kept_since = now
                self._retiring = False
                self._start_closer()
            if self._kept is not None and not self._retiring:
                self._users += 1
                return self._kept.cursor(), True
        # Cheap while a kept connection is still open in this process (DuckDB shares it).
        return duckdb.connect(str(self.path)), False

    def _done(self) -> None:
        with self._lock:
            self._users -= 1
            self._last_used = time.monotonic()
            if self._retiring and self._users == 0:
                self._close_kept()

    def _retire(self, now: float, *, pause: bool) -> None:
        if pause:
            self._closed_until = now + WAITER_PAUSE_S
        self._retiring = True
        if self._users == 0:
            self._close_kept()

    def _close_kept(self) -> None:
        if self._kept is not None:
            with contextlib.suppress(duckdb.Error):
                self._kept.close()
        self._kept = None
        self._retiring = False

    def _start_closer(self) -> None:
        _KEEPING.add(self)
        if self._closer is None or not self._closer.is_alive():
            self._closer = threading.Thread(
                target=self._close_when_idle, name=f"store-closer:{self.path.name}", daemon=True
            )
            self._closer.start()

    def _close_when_idle(self) -> None:
        """Between transactions: close when idle, when another process waits, or when held
        for `max_hold_s`; a busy file is retired and closes when its last user is done."""
        while True:
            with self._lock:
                if self._kept is None:
                    return
                now = time.monotonic()
                if self._someone_waits():
                    self._retire(now, pause=True)
                elif now - self._kept_since > self.max_hold_s:
                    self._retire(now, pause=False)
                elif self._users == 0 and now - self._last_used >= self.keep_open_s:
                    self._close_kept()
                if self._kept is None:
                    return
            time.sleep(CLOSER_POLL_S)

    # -- the waiter marker -----------------------------------------------------------------

    def _someone_waits(self) -> bool:
        """A fresh marker left by another process (this one's own does not count)."""
        try:
            if time.time() - self.waiter_marker.stat().st_mtime >= WAITER_FRESH_S:
                return False
            return self.waiter_marker.read_text() != str(os.getpid())
        except OSError:
            return False

    def _announce_waiting(self) -> None:
        # Best effort: a read-only folder only means the holder will not let go early.
        with contextlib.suppress(OSError):
            self.waiter_marker.write_text(str(os.getpid()))

    def _stop_waiting(self, announced: bool) -> None:
        if announced:
            with contextlib.suppress(OSError):
                os.remove(self.waiter_marker)

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

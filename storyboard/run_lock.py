"""Proof that a run holding image jobs is alive: one OS lock per run on this machine.

A run that claims sentences (a batch, an on-demand render) holds an exclusive `flock` on a
file named after its run id for as long as it may hold a claim. The kernel releases the lock
the moment the process dies, however it dies (SIGKILL, the OOM killer), and a run that ends
removes the file after releasing its jobs. So for a run id found on a `running` job:

- its file is locked: the run is alive, on this machine, and its claims stand;
- its file is there but free: its process died, or ended without being able to release them
  (a full disk). `release_dead_runs` releases them at once (no attempt spent) and removes
  the file, instead of waiting for the image timeout (`Store.reset_stale`);
- no file: the run is not on this machine (another host, another user, a cleaned temp
  folder). Its lease in the store tells: a run renews it a few times per `lease_s` while it
  holds the lock, so one whose lease is older than that has stopped, wherever it ran, and
  its claims are taken over too. A run with neither (from before these locks) is left to
  its age, the image timeout.

The files live beside the lane locks (storyboard.lane_lock.lock_directory): per user, in the
system's temporary folder, so two data directories of one user share them (run ids are
unique) and nothing is written into the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import TracebackType

from storyboard.errors import StoreError
from storyboard.lane_lock import lock_directory, try_lock
from storyboard.store import Store

log = logging.getLogger(__name__)

# How long a run waits for its own lock while a taker releases a dead process's claims.
TAKE_WAIT_S = 10.0
POLL_S = 0.05
LEASE_S = 60.0  # STORYBOARD_RUN_LEASE_S's default
# Renewals per lease: a few may fail (a busy store) before the lease runs out.
RENEWALS = 4


class Holder(Enum):
    LIVE = "live"
    DEAD = "dead"
    UNKNOWN = "unknown"  # not a run of this machine (or from before run locks)


def lock_path(run_id: str) -> Path:
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]
    return lock_directory() / f"run-{digest}.lock"


def _open(path: Path, create: bool) -> int:
    # Close-on-exec: a child (the ephemeral Prefect API) must not keep a dead run alive.
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    return os.open(path, flags, 0o600)


def _linked(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (a taker may have removed it meanwhile)."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def _locked_if_dead(run_id: str) -> Iterator[Holder]:
    """The holder of `run_id`; while the body runs on a DEAD one, its lock is ours, so a
    process resuming the same run waits, and nobody else takes it over at once."""
    path = lock_path(run_id)
    try:
        fd = _open(path, create=False)
    except FileNotFoundError:
        yield Holder.UNKNOWN
        return
    try:
        if not try_lock(fd):
            yield Holder.LIVE
        elif not _linked(fd, path):  # taken over and removed between our open and lock
            yield Holder.UNKNOWN
        else:
            yield Holder.DEAD
    finally:
        os.close(fd)


def holder(run_id: str) -> Holder:
    """Whether the process of `run_id` is alive on this machine (never blocks)."""
    with _locked_if_dead(run_id) as found:
        return found


class RunLock:
    """`with RunLock(run_id) as lock:` this process is the live holder of `run_id`'s claims.

    Taken before the run's first claim; `lock.released()` once the run has released its
    last one. Its file is removed on exit only then: a run that could not release its claims
    (a full disk) leaves it, free, so the next run sees them as a dead run's and takes them
    over. Waits up to `wait_s` while a taker releases a dead process's claims of the same
    run (a resumed run), then raises StoreError: a live process holds it.
    """

    def __init__(
        self,
        run_id: str,
        *,
        store: Store | None = None,
        lease_s: float = LEASE_S,
        wait_s: float = TAKE_WAIT_S,
    ) -> None:
        if not run_id:
            raise StoreError("a run lock needs a run id, got an empty one")
        self.run_id = run_id
        self.path = lock_path(run_id)
        self.store = store
        self.lease_s = lease_s
        self.wait_s = wait_s
        self._fd: int | None = None
        self._released = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        deadline = time.monotonic() + self.wait_s
        while True:
            fd = _open(self.path, create=True)
            try:
                if try_lock(fd) and _linked(fd, self.path):
                    record = {"pid": os.getpid(), "run_id": self.run_id, "since": time.time()}
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(record).encode(), 0)
                    self._fd, fd = fd, -1
                    self._start_lease()
                    return self
            finally:
                if fd >= 0:
                    os.close(fd)
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"run {self.run_id} is already running in another live process on this"
                    " machine; one process per run"
                )
            # A fixed short poll: the taker holds it for one store call.
            time.sleep(POLL_S)

    def _start_lease(self) -> None:
        if self.store is None:
            return
        try:
            self._renew()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._renewer = threading.Thread(
            target=self._keep_renewing, name=f"run-lease-{self.run_id[:8]}", daemon=True
        )
        self._renewer.start()

    def _renew(self) -> None:
        assert self.store is not None
        self.store.renew_lease(self.run_id, host=socket.gethostname(), pid=os.getpid())

    def _keep_renewing(self) -> None:
        # A fixed interval, not the backoff: each renewal must land within the lease.
        while not self._stop.wait(self.lease_s / RENEWALS):
            try:
                self._renew()
            except StoreError as exc:
                log.warning("run %s: could not renew its lease (%s)", self.run_id, exc)

    def released(self) -> None:
        """The run holds no claim any more: its file and its lease go on exit."""
        self._released = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._released and self.store is not None:
            # Left in place, it would only expire: the claims are released already.
            with contextlib.suppress(StoreError):
                self.store.end_lease(self.run_id)
        if self._released:
            # Removed while still locked: a prober never finds it free and takes it for dead.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(fd)


def dead_runs(run_ids: Iterable[str]) -> list[str]:
    """The runs among `run_ids` whose process on this machine is gone, in order."""
    return [run_id for run_id in sorted(set(run_ids)) if holder(run_id) is Holder.DEAD]


@dataclass(frozen=True)
class Takeover:
    """The running jobs of one dead run, released."""

    run_id: str
    released: int


def release_dead_runs(
    store: Store, *, own: str | None = None, lease_s: float | None = None
) -> list[Takeover]:
    """Release every running job whose run died on this machine or, with `lease_s`, whose
    lease is older than that (a run on another machine that stopped): no attempt spent,
    their sentences go back to pending, still dirty. Removes the dead run's lock file and
    lease. `own`: this run, never touched."""
    running = {job.run_id for job in store.running_jobs() if job.run_id != own}
    expired = set(store.expired_leases(lease_s)) - {own} if lease_s is not None else set()
    taken: list[Takeover] = []
    for run_id in sorted(running | expired):
        found = _release(store, run_id, unknown=run_id in expired)
        if found is not None:
            taken.append(found)
    return taken


def release_ended_run(store: Store, run_id: str) -> Takeover | None:
    """Release the claims of `run_id`, whose process is known to have ended (a watcher saw
    it go): None when a live process holds its lock again (the run was resumed)."""
    return _release(store, run_id, unknown=True)


def _release(store: Store, run_id: str, *, unknown: bool) -> Takeover | None:
    """Release `run_id`'s claims unless its holder lives; `unknown`: also when no lock of
    it is on this machine."""
    with _locked_if_dead(run_id) as found:
        if found is Holder.LIVE or (found is Holder.UNKNOWN and not unknown):
            return None
        released = store.release_run(run_id)
        with contextlib.suppress(FileNotFoundError):
            lock_path(run_id).unlink()
    store.end_lease(run_id)
    return Takeover(run_id, released)

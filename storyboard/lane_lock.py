"""The OS-level guard of a GPU lane: one feeding process per ComfyUI server on this machine.

A batch holds an exclusive `flock` on a file named after the lane's normalised ComfyUI URL
for as long as it feeds the lane. Why an OS lock and not a row in the store or a Prefect
lease alone:

- the kernel releases it the moment the holder dies, however it dies (SIGKILL, OOM), so a
  killed batch never keeps the lane and nothing has to expire or be repaired;
- a live holder cannot lose it: no other process can take or free it, whatever it believes
  about leases it cannot see (two processes on Prefect's ephemeral API share the slot count
  in SQLite but not each other's leases);
- the file lives in a per-user directory of the system's temporary folder, not in the data
  dir or PREFECT_HOME, so two batches of two data dirs (or two Prefect homes) feeding one
  server still exclude each other.

It guards one machine. Across machines the Prefect concurrency limit on a Prefect server
stays the guard; batches take both. The holder writes who it is (pid, flow run, since) into
the file so a waiting batch and the doctor can name it; the kernel's lock, not that text,
decides who holds the lane.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from storyboard.errors import ConfigError, LaneBusyError

# Between two tries of a held lock: short enough that the next batch starts right after the
# holder ends, long enough to cost nothing while it waits for hours. A fixed interval, not
# the backoff: a holder can end at any moment of a wait of hours, and a growing delay would
# leave the GPU idle for up to its cap each time; a try is one non-blocking flock call.
POLL_S = 0.2
# Names that reach the same server on this machine.
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_url(url: str) -> str:
    """One spelling per server: case, default port, loopback name and trailing slash ignored."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK:
        host = "127.0.0.1"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def lock_directory() -> Path:
    """The per-user folder of lane locks (created 0700; refused if someone else owns it)."""
    path = Path(tempfile.gettempdir()) / f"storyboard-lanes-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"{path} is not a directory of this user (a link or another user's); remove it so"
            " lane locks can be created there"
        )
    return path


def lock_path(url: str) -> Path:
    digest = hashlib.sha256(normalise_url(url).encode()).hexdigest()[:32]
    return lock_directory() / f"{digest}.lock"


@dataclass(frozen=True)
class LaneHolder:
    """Who holds (or last held) a lane, as its holder wrote it."""

    pid: int | None
    run_id: str | None
    since: float | None

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.since)) if self.since else "?"
        return f"pid {self.pid or '?'}, flow run {self.run_id or '?'}, since {since}"


def _open(url: str) -> int:
    # Close-on-exec: a child (the ephemeral Prefect API server) must not inherit the lock, or
    # it would keep a killed batch's lane. No-follow: the lock file is never a planted link.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return os.open(lock_path(url), flags, 0o600)


def try_lock(fd: int) -> bool:
    """An exclusive flock on `fd` if nobody holds one (never blocks); False if held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _read_holder(fd: int) -> LaneHolder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None  # being rewritten, or not ours: the lock still decides
    if not isinstance(data, dict):
        return None
    pid, run_id, since = data.get("pid"), data.get("run_id"), data.get("since")
    return LaneHolder(
        pid if isinstance(pid, int) else None,
        run_id if isinstance(run_id, str) else None,
        float(since) if isinstance(since, int | float) else None,
    )


@dataclass(frozen=True)
class LaneState:
    """What `probe` saw: whether a live process holds the lane, and who holds or held it."""

    held: bool
    holder: LaneHolder | None


def probe(url: str) -> LaneState:
    """Whether a live process on this machine feeds the lane of `url` (never blocks)."""
    fd = _open(url)
    try:
        if try_lock(fd):
            # Free: the recorded holder (if any) has ended or died.
            holder = _read_holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return LaneState(held=False, holder=holder)
        return LaneState(held=True, holder=_read_holder(fd))
    finally:
        os.close(fd)


class LaneLock:
    """`with LaneLock(url, run_id, wait_s=...)`: hold the lane of `url` on this machine.

    Waits at most `wait_s` for a live holder to end (calling `on_wait` once with it), then
    raises LaneBusyError naming the holder. Released on exit, or by the kernel if we die.
    """

    def __init__(
        self,
        url: str,
        run_id: str,
        *,
        wait_s: float,
        on_wait: Callable[[LaneHolder | None], object] | None = None,
    ) -> None:
        self.url = url
        self.run_id = run_id
        self.wait_s = wait_s
        self.on_wait = on_wait
        self._fd: int | None = None

    def __enter__(self) -> LaneLock:
        fd = _open(self.url)
        try:
            self._wait(fd)
            record = {"pid": os.getpid(), "run_id": self.run_id, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _wait(self, fd: int) -> None:
        deadline = time.monotonic() + self.wait_s
        told = False
        while not try_lock(fd):
            holder = _read_holder(fd)
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "a process that did not say who it is"
                raise LaneBusyError(
                    f"the GPU lane of ComfyUI at {self.url} stayed held by another batch on"
                    f" this machine ({who}) for {self.wait_s:g} s"
                    " (STORYBOARD_QUEUE_TIMEOUT_S); let it finish or stop it, then run"
                    " again. No sentence was rendered; they stay dirty."
                )
            if not told and self.on_wait is not None:
                self.on_wait(holder)
                told = True
            time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # The record stays: with the lock free it names the last holder, which ended.
            os.close(fd)  # closing the only descriptor releases the flock

"""The embedded (ephemeral) Prefect API of `storyboard render`, kept out of the way of Ctrl-C.

With no PREFECT_API_URL, Prefect starts its API in a uvicorn child process
(`SubprocessASGIServer`) in our process group. A terminal's Ctrl-C goes to the whole group:
the API would stop on the same key press, before the batch has given back its jobs and
reported its end, and every call to it would then fail or be retried for minutes.

So the child is started with SIGINT blocked. A blocked signal is never delivered, and the
mask is inherited across fork and exec (ignoring SIGINT would not last: uvicorn installs its
own handler). It stays in our group for everything else, so a SIGTERM, SIGHUP or SIGQUIT sent
to the group still reaches it, and Prefect stops it when we exit (its `atexit`: SIGTERM, then
SIGKILL after 5 s).

A process killed with SIGKILL (the OOM killer, `kill -9`) runs no `atexit`: its API would
stay running for good. So a small watchdog process starts beside it, also deaf to Ctrl-C,
that waits for us to end, however we end, and then stops the API the same way (through
pidfds: a pid reused meanwhile is never signalled). It is not started where pidfds are
missing (not Linux); there the API outlives a SIGKILL as before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from prefect.server.api.server import SubprocessASGIServer

# The watchdog: argv = our pid, the API's pid, seconds from SIGTERM to SIGKILL. Standard
# library only, so it starts in milliseconds; it holds pidfds of both, so neither pid can be
# reused under it.
WATCHDOG = """
import os, select, signal, sys
parent, api = (os.pidfd_open(int(pid)) for pid in sys.argv[1:3])
select.select([parent], [], [])
try:
    signal.pidfd_send_signal(api, signal.SIGTERM)
    if not select.select([api], [], [], float(sys.argv[3]))[0]:
        signal.pidfd_send_signal(api, signal.SIGKILL)
except ProcessLookupError:
    pass
"""
STOP_S = 5.0  # as Prefect's own stop: SIGTERM, then SIGKILL


def watch(api_pid: int) -> subprocess.Popen[bytes] | None:
    """Start the watchdog that stops process `api_pid` once this process has ended."""
    if not hasattr(os, "pidfd_open"):
        return None
    return subprocess.Popen(
        [sys.executable, "-I", "-c", WATCHDOG, str(os.getpid()), str(api_pid), str(STOP_S)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class EmbeddedAPI(SubprocessASGIServer):
    """Prefect's embedded API server, deaf to Ctrl-C; stopped by us, not by the terminal,
    and by its watchdog when we are killed."""

    watchdog: subprocess.Popen[bytes] | None = None

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Only this thread's mask, only while it forks: a Ctrl-C meanwhile goes to another of
        # our threads, and Python raises it in the main thread as usual.
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = super()._run_uvicorn_command()
            self._end_watchdog()  # of an earlier start: its API is gone
            self.watchdog = watch(process.pid)
            return process
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def _end_watchdog(self) -> None:
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()

    def stop(self) -> None:
        process = self.server_process
        try:
            super().stop()
            self._end_watchdog()  # we stopped the API ourselves
        except BaseException:
            # A second Ctrl-C or a SIGTERM while it shuts down: it cannot hear Ctrl-C, so
            # leaving it here would leave it running for good.
            if process is not None and process.poll() is None:
                process.kill()
            raise


def use_embedded_api() -> None:
    """Make the embedded API, once Prefect starts one in this process, an `EmbeddedAPI`.

    Prefect asks `SubprocessASGIServer()` for it, which returns the instance registered for
    no port: creating ours first registers it there (subclass and base share that registry).
    One already there (a test harness's server, or one already started) is left as it is.
    """
    if None not in SubprocessASGIServer._instances:
        EmbeddedAPI()

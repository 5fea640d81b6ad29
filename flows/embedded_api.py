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
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from prefect.server.api.server import SubprocessASGIServer


class EmbeddedAPI(SubprocessASGIServer):
    """Prefect's embedded API server, deaf to Ctrl-C; stopped by us, not by the terminal."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # Only this thread's mask, only while it forks: a Ctrl-C meanwhile goes to another of
        # our threads, and Python raises it in the main thread as usual.
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super()._run_uvicorn_command()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def stop(self) -> None:
        process = self.server_process
        try:
            super().stop()
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

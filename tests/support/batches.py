"""Batches as the user starts them, for the lane guard and doctor tests: `python -m
flows.image_batch` in its own process, on the embedded default (Prefect's ephemeral API, one
PREFECT_HOME shared by every process of a test, as on a user's machine) or on the test API.

Helpers, no tests; each process runs in its own session so a test can kill it
(and what it started) and its console log lands in a file the test reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.support.paths import REPO
from tests.support.prefect_db import QUIET_PREFECT

BOOT_S = 120.0  # an embedded API migrating a fresh SQLite file on a busy 2-core machine


def embedded_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This process's STORYBOARD_* settings, on Prefect's ephemeral API in `prefect_home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        **QUIET_PREFECT,
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(int(BOOT_S)),
        **extra,
    )
    return env


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def said(self, fragment: str) -> bool:
        return fragment in self.text()

    def when(self, fragment: str) -> datetime:
        """The console timestamp of the first log line carrying `fragment`."""
        for line in self.text().splitlines():
            found = re.match(r"(\d\d:\d\d:\d\d\.\d+) \|", line)
            if found and fragment in line:
                return datetime.strptime(found.group(1), "%H:%M:%S.%f")
        raise AssertionError(f"no log line with {fragment!r}:\n{self.text()}")

    def finish(self, timeout_s: float = BOOT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"pid {self.pid} did not end:\n{self.text()}") from None

    def kill_group(self) -> None:
        """Whatever is left of it (its embedded API server too)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)


def start(args: list[str], env: dict[str, str], log: Path) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(popen, log)


# The flow itself, not `python -m flows.image_batch`: that command draws a progress bar and
# keeps Prefect's console to warnings, while these tests read the guard's INFO lines. Its
# embedded API is the command's (flows.embedded_api: deaf to Ctrl-C, stopped by a watchdog).
BATCH = (
    "import sys; from flows.embedded_api import use_embedded_api; use_embedded_api();"
    " from flows.image_batch import image_batch;"
    " sys.exit(0 if image_batch(return_state=True).is_completed() else 1)"
)


def start_batch(env: dict[str, str], log: Path) -> Process:
    return start(["-c", BATCH], env, log)


def wait_until(
    condition: Callable[[], bool], what: str, *, timeout_s: float = BOOT_S, alive: Process
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if alive.popen.poll() is not None:
            raise AssertionError(f"{what}: pid {alive.pid} ended first:\n{alive.text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{alive.text()}")
        time.sleep(0.05)

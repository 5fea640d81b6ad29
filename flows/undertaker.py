"""What a run leaves behind when its process is killed, cleared the moment it dies.

A run killed with SIGKILL (the OOM killer, `kill -9`, and Prefect's own worker, which kills
the flow-run processes it started when it is stopped with Ctrl-C or SIGTERM) runs no
`finally`: its claimed sentences stay `running` in the store until the next run takes them
over, and its flow run stays Running in the UI for good. So each run that claims sentences
starts a small process beside it, the undertaker, that waits for the run's process to end
(a pidfd: a pid reused meanwhile is never mistaken for it):

- a run that ended cleanly stands it down first (its claims are released already);
- otherwise it wakes, takes the run's prompts off its ComfyUI servers (they would render
  for nobody, ahead of the next run's), releases the run's claims (no attempt spent, still
  dirty: storyboard.run_lock.release_ended_run) and, with a Prefect server to tell, marks
  the flow run Crashed, naming what it released. An embedded API dies with the run: nothing
  to mark. Each step is tried whatever the one before did.

While it waits it is the standard library only, a few MB, deaf to Ctrl-C, SIGTERM and
SIGHUP (sent to a whole process group, they are for the run, which releases its claims
itself). Not started where pidfds are missing (not Linux): there the next run takes the
claims over, as before.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from uuid import UUID

ABANDON_TIMEOUT_S = 10.0
DEAF_TO = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

# argv: the run's pid, then what the woken undertaker is given (`main`'s arguments).
WAITER = """
import os, select, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
run = os.pidfd_open(int(sys.argv[1]))
select.select([run], [], [])
os.execv(sys.executable, [sys.executable, "-m", "flows.undertaker", *sys.argv[2:]])
"""


class Undertaker:
    """`with Undertaker(run_id, database, api_url, clients) as undertaker:` a process stands
    by to clear `run_id`'s claims and prompts if this process dies; `undertaker.released()`
    once the run has released its claims itself, so the exit stands it down. Left standing
    (a release the store refused), it tries again when this process ends.

    `clients`: lane name to the ComfyUI client id the run posts its prompts as."""

    def __init__(
        self,
        run_id: str,
        database: Path,
        api_url: str | None,
        clients: Mapping[str, str],
    ) -> None:
        self.run_id, self.database, self.api_url = run_id, database, api_url
        self.clients = dict(clients)
        self.process: subprocess.Popen[bytes] | None = None
        self._released = False

    def __enter__(self) -> Undertaker:
        if hasattr(os, "pidfd_open"):
            argv = [str(os.getpid()), self.run_id, str(self.database)]
            if self.api_url:
                argv += ["--api-url", self.api_url]
            for lane, client_id in self.clients.items():
                argv += ["--client", f"{lane}={client_id}"]
            # Deaf from its first instant: the mask is inherited, then the waiter ignores them.
            before = signal.pthread_sigmask(signal.SIG_BLOCK, DEAF_TO)
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-I", "-c", WAITER, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return self

    def released(self) -> None:
        self._released = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self.process = self.process, None
        if process is not None and self._released:
            process.kill()
            process.wait()


def bury(run_id: str, database: Path, api_url: str | None, clients: Mapping[str, str]) -> list[str]:
    """Clear what run `run_id` left: its prompts on each lane (`clients`: lane name to client
    id), its claims, its flow run's state on the server at `api_url`. What was done, a line
    per step; a step that failed says so and the next is tried."""
    done = [_attempt("prompts", lambda: _abandon_prompts(clients))]
    taken = _attempt("claims", lambda: _release_claims(run_id, database))
    done.append(taken)
    if api_url and not taken.startswith("resumed"):  # its process did end, however it went
        done.append(_attempt("flow run", lambda: _mark_crashed(run_id, api_url, taken)))
    return [f"run {run_id}: {line}" for line in done]


def _attempt(what: str, step: Callable[[], str]) -> str:
    try:
        return step()
    except Exception as exc:  # the next step still runs; the next run takes over the rest
        return f"{what}: not cleared ({type(exc).__name__}: {exc})"


def _abandon_prompts(clients: Mapping[str, str]) -> str:
    from storyboard.comfyui import ComfyUIClient
    from storyboard.lane import lanes_from_settings
    from storyboard.settings import load_settings

    lanes = {lane.name: lane for lane in lanes_from_settings(load_settings())}

    async def abandon() -> list[str]:
        stopped: list[str] = []
        for name, client_id in clients.items():
            lane = lanes.get(name)
            if lane is None:
                continue
            async with ComfyUIClient(
                lane.comfyui_url, request_timeout_s=ABANDON_TIMEOUT_S, headers=lane.headers
            ) as client:
                stopped += await client.abandon(client_id)
        return stopped

    return f"took {len(asyncio.run(abandon()))} prompt(s) off its servers"


def _release_claims(run_id: str, database: Path) -> str:
    from storyboard.run_lock import release_ended_run
    from storyboard.store import Store

    taken = release_ended_run(Store(database), run_id)
    if taken is None:
        return "resumed by a live process; its claims are left to it"
    return f"released {taken.released} claim(s), still dirty"


def _mark_crashed(run_id: str, api_url: str, released: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Crashed

    message = (
        "its process was killed while it ran (SIGKILL: `kill -9`, the OOM killer, or its"
        f" worker stopping); {released}"
    )
    with SyncPrefectClient(api_url, httpx_settings={"timeout": ABANDON_TIMEOUT_S}) as client:
        flow_run = client.read_flow_run(UUID(run_id))
        if flow_run.state is not None and flow_run.state.is_final():
            return f"its flow run had ended {flow_run.state.type.value}"
        client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)
    return "its flow run marked Crashed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.undertaker")
    parser.add_argument("run_id")
    parser.add_argument("database", type=Path)
    parser.add_argument("--api-url")
    parser.add_argument("--client", action="append", default=[], help="LANE=CLIENT_ID")
    args = parser.parse_args(argv)
    clients = dict(pair.split("=", 1) for pair in args.client)
    lines = bury(args.run_id, args.database, args.api_url, clients)
    print("\n".join(lines))
    return 1 if any("not cleared" in line for line in lines) else 0


if __name__ == "__main__":  # pragma: no cover
    for deaf in DEAF_TO:
        signal.signal(deaf, signal.SIG_IGN)
    raise SystemExit(main())

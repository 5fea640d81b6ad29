"""Warm on-demand renders: the on-demand deployment's flow runs, run in this long-lived process.

A worker starts a new process for every flow run it takes. For one picture a creator asked
for, that start is most of the wait: measured 4.7 s on an idle machine and 8.2 s beside a
4-lane batch on 2 cores (2.7 s of it importing), between the run's PENDING and its RUNNING.
This runner stays up with the flow imported and runs each `generate-image/on-demand` run on
a thread of its own:

- every `poll_s` it asks the server for the deployment's scheduled runs that are due;
- it claims each as a worker does, by proposing PENDING: the server accepts one proposer,
  so a worker polling the same queue never runs it a second time;
- it runs it with Prefect's flow engine (`run_flow`): its states, task runs, logs and
  artifacts show in the UI as a worker's run would;
- at most `most` at a time, by default what the work pool allows on-demand runs (two per
  lane, flows.setup; an on-demand run holds no lane: flows.generate_image_flow); a due run
  beyond that is taken at a later poll;
- on SIGTERM or Ctrl-C it claims nothing more and stops the runs it holds as a cancel
  does (flows.cancel_watch.stop_all): within seconds their prompts leave the server, their
  sentences are released still dirty and they end Cancelled. One still running after
  STOP_WAIT_S is marked crashed, so no run stays RUNNING with nothing behind it.

    python -m flows.warm_runner [--deployment generate-image/on-demand] [--poll-s 0.5] [--most N]

The on-demand deployment has a work queue of its own (`on-demand`, prefect.yaml), so a worker
started with `--work-queue default` leaves those runs to this runner; a plain
`prefect worker start --pool gpu` also takes them, cold, when it polls first.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from types import FrameType
from typing import Any
from uuid import UUID

import httpx
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import FlowRunResponse
from prefect.exceptions import Abort, ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.logging import get_logger
from prefect.states import Crashed, Pending
from prefect.utilities.engine import propose_state_sync

from flows.cancel_watch import stop_all
from flows.setup import ON_DEMAND_PER_LANE
from storyboard.lane import lanes_from_settings
from storyboard.settings import load_settings

DEPLOYMENT = "generate-image/on-demand"
POLL_S = 0.5
STOP_WAIT_S = 60.0
STOPPED = "stopped with the warm runner"

# Prefect's logger: shown at INFO by Prefect's own logging setup, as the worker's lines are.
log = get_logger("warm_runner")


class DeploymentMissingError(RuntimeError):
    """The deployment to serve does not exist on this Prefect server."""


class WarmRunner:
    """Runs the due flow runs of one deployment in this process, `most` at a time."""

    def __init__(
        self,
        flow: Flow[..., Any],
        client: SyncPrefectClient,
        deployment: str = DEPLOYMENT,
        *,
        most: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be at least 1, got {most}")
        self._flow, self._client, self._clock = flow, client, clock
        self._most = most
        try:
            self.deployment_id: UUID = client.read_deployment_by_name(deployment).id
        except ObjectNotFound:
            raise DeploymentMissingError(
                f"no deployment {deployment!r} on {client.api_url}: create it with "
                "`python -m flows.setup`"
            ) from None
        self.deployment = deployment
        self._pool = ThreadPoolExecutor(max_workers=most, thread_name_prefix="warm-run")
        self._running: dict[UUID, Future[Any]] = {}
        self._lock = threading.Lock()

    def due(self) -> list[FlowRunResponse]:
        """The deployment's scheduled runs whose time has come, oldest first."""
        return self._client.get_scheduled_flow_runs_for_deployments(
            [self.deployment_id], scheduled_before=self._clock()
        )

    def claim(self, run: FlowRunResponse) -> bool:
        """Propose PENDING for `run`: True when this runner got it, False when another
        (a worker, a second runner) did, or it is no longer scheduled."""
        try:
            state = propose_state_sync(self._client, Pending(), flow_run_id=run.id)
        except Abort as exc:
            log.info("flow run %s taken elsewhere: %s", run.name, exc)
            return False
        return state.is_pending()

    def poll(self) -> list[UUID]:
        """Claim and start what is due, as far as there is room; the runs started."""
        started = []
        for run in self.due():
            if self.free() == 0:
                break
            if not self.claim(run):  # a claimed run is no longer due: never one of ours
                continue
            self._start(run)
            started.append(run.id)
        return started

    def free(self) -> int:
        with self._lock:
            return self._most - len(self._running)

    def running(self) -> list[UUID]:
        with self._lock:
            return list(self._running)

    def _start(self, run: FlowRunResponse) -> None:
        claimed = self._client.read_flow_run(run.id)  # its PENDING state, for the engine
        log.info("running flow run %s (%s) here, warm", claimed.name, claimed.id)
        with self._lock:
            future = self._pool.submit(self._execute, claimed)
            self._running[run.id] = future
        future.add_done_callback(lambda _: self._forget(run.id))

    def _execute(self, run: FlowRun) -> Any:
        # return_type="state": a failed render is the run's Failed state, not an exception.
        return run_flow(self._flow, flow_run=run, return_type="state")

    def _forget(self, run_id: UUID) -> None:
        with self._lock:
            self._running.pop(run_id, None)

    def close(self, wait_s: float = STOP_WAIT_S) -> list[UUID]:
        """Wait up to `wait_s` for the runs held; mark what is still running crashed (its
        thread cannot be stopped from outside). The runs so marked."""
        with self._lock:
            futures = dict(self._running)
        _, left = wait(futures.values(), timeout=wait_s)
        crashed = [run_id for run_id, future in futures.items() if future in left]
        for run_id in crashed:
            message = f"the warm runner stopped while it ran ({wait_s:g} s given to finish)"
            propose_state_sync(self._client, Crashed(message=message), run_id, force=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return crashed


def serve(runner: WarmRunner, stop: threading.Event, poll_s: float = POLL_S) -> None:
    """Poll until `stop` is set; a failed poll (the server restarting) is logged and retried
    at the next one, as a worker does."""
    log.info(
        "serving %s warm: polling every %g s, at most %d at a time",
        runner.deployment,
        poll_s,
        runner.free(),
    )
    while not stop.is_set():
        try:
            runner.poll()
        except Exception as exc:  # the next poll tries again; the runs held carry on
            log.warning("poll of %s failed: %s", runner.deployment, exc)
        stop.wait(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.warm_runner",
        description="Run the on-demand deployment's flow runs in this process, warm.",
    )
    parser.add_argument("--deployment", default=DEPLOYMENT, help="flow-name/deployment-name")
    parser.add_argument("--poll-s", type=float, default=POLL_S, help="seconds between polls")
    parser.add_argument("--most", type=int, help="runs at once (default: two per lane)")
    args = parser.parse_args(argv)
    if args.poll_s <= 0 or (args.most is not None and args.most < 1):
        parser.error("--poll-s must be positive and --most at least 1")
    from flows.generate_image_flow import generate_image_flow

    most = args.most or ON_DEMAND_PER_LANE * len(lanes_from_settings(load_settings()))

    with get_client(sync_client=True) as client:
        try:
            runner = WarmRunner(generate_image_flow, client, args.deployment, most=most)
        except DeploymentMissingError as exc:
            print(f"error: {exc}")
            return 2
        except httpx.TransportError as exc:
            print(
                f"error: the Prefect API at {client.api_url} did not answer ({exc}); start it"
                " (`prefect server start`) or point PREFECT_API_URL at it"
            )
            return 2
        stop = threading.Event()

        def stopping(signum: int, _: FrameType | None) -> None:
            log.info("%s: no new runs; stopping the ones running", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            serve(runner, stop, args.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            stop_all(STOPPED)  # they end Cancelled within seconds, their claims released
            crashed = runner.close()
            if crashed:
                log.warning("marked crashed: %s", ", ".join(map(str, crashed)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

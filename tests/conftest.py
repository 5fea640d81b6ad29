"""Test-wide isolation: no test reads the user's configuration or Prefect home."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.prefect_db import QUIET_PREFECT, harness_databases, migrated_template, seed_home
from tests.support.processes import ProcessTree

if TYPE_CHECKING:
    from storyboard.simulator import SimulatorThread
    from tests.support.flows import Project

# Set before anything imports prefect, so no test touches ~/.prefect or phones home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="storyboard-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.update(QUIET_PREFECT)
# Every process a test starts inherits this mark (tests build child environments from
# os.environ), so one that outlives the session is found even after it was re-parented.
SESSION_MARK = "SB_TEST_SESSION"  # no STORYBOARD_ prefix: tests strip those from child envs
os.environ[SESSION_MARK] = uuid.uuid4().hex
for _name in list(os.environ):
    if _name.startswith("STORYBOARD_") or _name in (
        "COMFYUI_URL",
        "COMFYUI_WS_URL",
    ):
        del os.environ[_name]


# Started in the background by a shell without job control (`make test &` in a script), the
# suite inherits SIGINT ignored, and an ignored signal survives exec: every batch a test starts
# would be deaf to the Ctrl-C the signal tests send it, as no foreground job of a terminal is.
# A handler of our own is reset to the default in each child instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: the parts are of what runs
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One part per parallel worker, each its share of the slow tests first, then its share of
    the rest.

    pytest-xdist hands each worker one contiguous part of this order, and a worker that runs
    out steals from the end of another's part (`--dist worksteal`): the slow tests, dealt
    round-robin, start at once on every worker, and the quick ones left at the ends even out
    the finish. (Sorted slow-first instead, one worker got a part of nothing but slow tests
    and ran two minutes after the others had finished.)
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    items[:] = [item for k in range(workers) for item in (*slow[k::workers], *rest[k::workers])]


_TEMPLATE_MAKER = pytest.StashKey[threading.Thread]()


@pytest.hookimpl(trylast=True)  # after pytest's own, which makes the temporary folders' factory
def pytest_configure(config: pytest.Config) -> None:
    """On pytest-xdist's controller: start making the session's migrated Prefect database
    (`prefect_db`) while the workers start and collect.

    Made by the first worker to ask, the slow tests each worker starts with would all wait on
    it, with one core idle for its ~15 s. The folder is the one the workers' temporary folders
    share; `_tmp_path_factory` is the factory xdist itself asks for it.
    """
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        return
    shared = config._tmp_path_factory.getbasetemp()
    maker = threading.Thread(target=migrated_template, args=(shared,), name="prefect-db")
    maker.start()
    config.stash[_TEMPLATE_MAKER] = maker


def pytest_unconfigure(config: pytest.Config) -> None:
    maker = config.stash.get(_TEMPLATE_MAKER, None)
    if maker is not None:
        maker.join()


@pytest.fixture(scope="session")
def prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated Prefect database to copy: one per session, shared by the parallel workers
    (their temporary folders share a parent)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    return migrated_template(shared)


@pytest.fixture
def prefect_home(tmp_path: Path, prefect_db: Path) -> Path:
    """A fresh PREFECT_HOME for a process on the embedded API, its database already migrated."""
    return seed_home(tmp_path / "prefect-home", prefect_db)


@pytest.fixture(scope="session")
def prefect_api(prefect_db: Path) -> Iterator[None]:
    """One temporary Prefect API (subprocess server + SQLite) for the whole session.

    Defined here, once: a session fixture imported into several modules would start one
    harness per module, nested inside each other.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        harness_databases(prefect_db),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


@pytest.fixture
def processes() -> ProcessTree:
    return ProcessTree()


# The pipeline and flow tests' simulator and demo project (flows, cli). Their imports are
# deferred into the fixtures: tests.support.flows imports prefect, which must not be imported
# before the environment above is set.
@pytest.fixture
def simulator() -> Iterator[SimulatorThread]:
    from storyboard.simulator import SimulatorConfig, SimulatorThread

    with SimulatorThread(SimulatorConfig(steps=4, step_s=0.01)) as thread:
        yield thread


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, simulator: SimulatorThread) -> Project:
    """The demo storyboard in a fresh data dir, settings pointing at the simulator."""
    from storyboard.store import Store
    from storyboard.store.demo import DEMO_PROJECT, seed_demo
    from tests.support.flows import Project, storyboard_env

    settings = storyboard_env(monkeypatch, tmp_path / "data", simulator.url)
    store = Store(settings.database)
    seed_demo(store, settings.data_dir)
    return Project(settings, store, DEMO_PROJECT)


# How long processes stopped by the last teardowns get to exit before they count as left.
LEFT_BEHIND_WAIT_S = 15.0


def _started_by_session(mark: str) -> set[int]:
    """Live processes (other than this one) that are this process's descendants or carry
    this session's mark in the environment they were started with."""
    me = os.getpid()
    found = {pid for pid in ProcessTree.descendants(me) if ProcessTree.alive(pid)}
    needle = f"{SESSION_MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if needle in environ.split(b"\0") and ProcessTree.alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@pytest.fixture(scope="session", autouse=True)
def nothing_outlives_the_session() -> Iterator[None]:
    """Fails the run when a process a test started (a Prefect API, a simulator, a ComfyUI, a
    batch) is still alive once every fixture has stopped; those left are then killed."""
    yield
    mark = os.environ[SESSION_MARK]
    deadline = time.monotonic() + LEFT_BEHIND_WAIT_S
    left = _started_by_session(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _started_by_session(mark)
    if not left:
        return
    described = [f"{pid}: {_command(pid)}" for pid in sorted(left)]
    for pid in left:
        with contextlib.suppress(OSError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
    pytest.fail("processes started by tests outlived the session:\n" + "\n".join(described))

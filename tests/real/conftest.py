"""The real-server tier: a real ComfyUI (`COMFYUI_DIR`) with tiny random-weight FLUX.2 files.

`make test-real` sets it up (scripts/real_comfyui.py) and runs `pytest -m real tests/real`.
The tier's fixtures and hooks are here; the helpers its tests call are in tests/support/real.py.
Every test here is marked `real`; `make test` deselects them, and without a set-up server
they are skipped with the one line that says what is missing.

Each server runs from the read-only checkout with its own base folder (models linked in,
input, output, temp, user and database of its own) and its bytecode cache outside the
checkout, in its own process group on a loopback port; everything started here is stopped
here, and the session fails if the checkout was written to.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.real_comfyui import RealServer, SetupError, installed, locate
from tests.support.prefect_db import QUIET_PREFECT
from tests.support.real import BIN, START_TIMEOUT_S, ComfyUI, free_port, stop_group

HERE = Path(__file__).resolve().parent
FIGURES: list[str] = []


def _setup() -> tuple[RealServer | None, str]:
    try:
        server = locate()
    except SetupError as exc:
        return None, str(exc)
    if not installed(server):
        return None, f"no ComfyUI venv in {server.venv}: run `make test-real`"
    return server, ""


REAL, WHY_NOT = _setup()


@pytest.hookimpl(tryfirst=True)  # marked before `-m` selects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=f"real-server tier: {WHY_NOT}")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.timeout(900))  # server starts and CPU renders
            if REAL is None:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("real ComfyUI: what each scenario measured")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def figure() -> Callable[[str], None]:
    """Record one line for the run's summary (each scenario's figures)."""
    return FIGURES.append


@pytest.fixture(scope="session")
def comfyui_checkout() -> Iterator[RealServer]:
    """The set-up server; fails the session if the checkout was written to."""
    assert REAL is not None
    before = time.time() - 1
    yield REAL
    written = [
        str(Path(root) / name)
        for root, _, names in os.walk(REAL.comfyui_dir)
        for name in names
        if os.lstat(Path(root) / name).st_mtime > before
    ]
    assert not written, f"the real-server tier wrote into COMFYUI_DIR: {written[:5]}"


@pytest.fixture
def start_comfyui(
    comfyui_checkout: RealServer, tmp_path: Path
) -> Iterator[Callable[..., list[ComfyUI]]]:
    """A factory of real servers for this test, every one stopped at its end."""
    servers: list[ComfyUI] = []

    def start(*names: str) -> list[ComfyUI]:
        started = [ComfyUI(comfyui_checkout, tmp_path / name) for name in names]
        servers.extend(started)
        for server in started:  # the slow part, importing torch, overlaps
            server.start(wait=False)
        for server in started:
            server.wait_up()
        return started

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def shared_comfyui(
    comfyui_checkout: RealServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyUI]:
    """One real server for the scenarios that neither kill nor restart it."""
    server = ComfyUI(comfyui_checkout, tmp_path_factory.mktemp("shared-comfyui"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `prefect server start` on loopback for the runs (the embedded API boots in ~15 s a
    run; the one test of the embedded API's stop does without it)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        **QUIET_PREFECT,
        "PREFECT_HOME": str(home),
    }
    with (home / "server.log").open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (home / "server.log").read_text()
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prefect server did not start"
            time.sleep(0.25)
        yield {**env, "PREFECT_API_URL": api}
    finally:
        stop_group(process)

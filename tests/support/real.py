"""Helpers of the real-server tier (tests/real): a real ComfyUI server's handle, a user's
`storyboard` command against it, and what its store, pictures and history say. The tier's
fixtures and hooks stay in tests/real/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.real_comfyui import RealServer
from tests.support.paths import REPO

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 180  # 15-40 s measured on 2 cores; a busy CI machine takes longer
# Test sizes: a FLUX.2 render of a few seconds on a CPU (see README, "The real-server tier").
RENDER_ENV = {
    "STORYBOARD_WIDTH": "256",
    "STORYBOARD_HEIGHT": "144",
    "STORYBOARD_STEPS": "2",
    "STORYBOARD_REFERENCE_MEGAPIXELS": "0.05",
    "STORYBOARD_RETRY_BACKOFF_S": "0",
    "STORYBOARD_STARTUP_WAIT_S": "30",
    "STORYBOARD_IMAGE_TIMEOUT_S": "240",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
        except ProcessLookupError:
            pass


@dataclass
class ComfyUI:
    """One real ComfyUI server: start, SIGKILL, start again on the same port and folders."""

    real: RealServer
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def start(self, *, wait: bool = True) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        models = self.base / "models"
        if not models.exists():
            models.symlink_to(self.real.models, target_is_directory=True)
        command = [
            str(self.real.python),
            str(self.real.comfyui_dir / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-all-custom-nodes",
            "--disable-api-nodes",
            "--base-directory",
            str(self.base),
            "--database-url",
            f"sqlite:///{self.base / 'comfyui.db'}",
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.base),
            "PYTHONPYCACHEPREFIX": str(self.real.pycache),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.base,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            self.wait_up()

    def wait_up(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a crashed driver would end it."""
        if self.process is not None:
            stop_group(self.process, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30)


@dataclass
class Render:
    """A `storyboard` command's result."""

    returncode: int
    output: str
    seconds: float


def storyboard_env(base: dict[str, str], data_dir: Path, urls: str, **extra: str) -> dict[str, str]:
    """The environment of a user's `storyboard` command against real servers."""
    env = {k: v for k, v in base.items() if not k.startswith(("STORYBOARD_", "COMFYUI_"))}
    key = "STORYBOARD_COMFYUI_URLS" if "=" in urls else "STORYBOARD_COMFYUI_URL"
    env.update(RENDER_ENV)
    env.update({"STORYBOARD_DATA_DIR": str(data_dir), key: urls, **extra})
    return env


def storyboard(*args: str, env: dict[str, str], timeout: float = 600, cwd: Path = REPO) -> Render:
    began = time.monotonic()
    done = subprocess.run(
        [str(BIN / "storyboard"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Render(done.returncode, done.stdout + done.stderr, time.monotonic() - began)


def history(server: ComfyUI) -> dict[str, Any]:
    """Every prompt the server ran (fine for a test server's few dozen)."""
    entries: dict[str, Any] = server.get("/history?max_items=10000")
    return entries


def png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as image:
        return dict(getattr(image, "text", {}))


def graph_in(path: Path) -> dict[str, Any]:
    graph: dict[str, Any] = json.loads(png_text(path)["prompt"])
    return graph


def jobs(data_dir: Path) -> list[dict[str, Any]]:
    """The job ledger's rows, read from the store's file once the command has ended."""
    import duckdb

    with duckdb.connect(str(data_dir / "storyboard.duckdb"), read_only=True) as con:
        cursor = con.execute(
            "SELECT sentence_id, status, attempt, prompt_id, run_id, error, queue_s, render_s "
            "FROM image_jobs ORDER BY started_at"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def sentence_states(data_dir: Path) -> dict[str, str]:
    import duckdb

    with duckdb.connect(str(data_dir / "storyboard.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT id, status FROM sentences ORDER BY id").fetchall()
    return {str(sentence): str(status) for sentence, status in rows}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 300) -> float:
    """Poll `condition` until true; the seconds it took (fails the test past `timeout`)."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - began


def pictures(data_dir: Path, project: str = "lighthouse") -> list[Path]:
    return sorted((data_dir / "projects" / project / "images").glob("*.png"))


def popen_storyboard(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A `storyboard` command in its own process group (as a shell job), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "storyboard"), *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def executions(server: ComfyUI) -> list[dict[str, Any]]:
    """The server's finished prompts with their start and end (seconds), in start order."""
    rows = []
    for prompt_id, entry in history(server).items():
        messages = {name: data for name, data in entry["status"]["messages"]}
        start = messages.get("execution_start", {}).get("timestamp")
        end = messages.get("execution_success", {}).get("timestamp")
        rows.append(
            {
                "prompt_id": prompt_id,
                "number": entry["prompt"][0],
                "start": None if start is None else start / 1000,
                "end": None if end is None else end / 1000,
                "status": entry["status"]["status_str"],
            }
        )
    return sorted(rows, key=lambda row: row["start"] or 0)

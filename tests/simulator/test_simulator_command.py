"""`storyboard simulate-comfyui`: its default port and its one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from storyboard.cli import build_parser, main
from storyboard.commands.simulator import COMFYUI_PORT, DEFAULT_PORT
from storyboard.simulator import SimulatorConfig, SimulatorThread

# /system_stats of a real ComfyUI, as much of it as the probe reads.
REAL_STATS = {"system": {"os": "posix", "comfyui_version": "0.25.0", "embedded_python": False},
              "devices": [{"name": "cuda:0 NVIDIA H200", "type": "cuda", "index": 0}]}  # fmt: skip


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something (not ComfyUI) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(["simulate-comfyui", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_the_default_port_is_not_comfyuis() -> None:
    args = build_parser().parse_args(["simulate-comfyui"])
    assert args.port == DEFAULT_PORT != COMFYUI_PORT


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_port_out_of_range_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str], port: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate-comfyui", "--port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "0..65535" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--step-seconds", "--load-seconds", "--reference-seconds"])
def test_negative_seconds_are_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate-comfyui", flag, "-2"])
    assert exited.value.code == 2 and "must not be negative" in capsys.readouterr().err


def test_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    line = _error_line(capsys, ["--port", str(busy_port)])
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line and "--port" in line


def test_a_real_comfyui_on_the_port_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with SimulatorThread(SimulatorConfig()) as comfyui:
        # The server there answers /system_stats as a real ComfyUI does.
        comfyui.sim.faults.answer_next("/system_stats", body=json.dumps(REAL_STATS),
                                       content_type="application/json")  # fmt: skip
        port = comfyui.url.rsplit(":", 1)[1]
        line = _error_line(capsys, ["--port", port])
        assert f"a real ComfyUI (0.25.0) already answers on 127.0.0.1:{port}" in line
        assert "STORYBOARD_COMFYUI_URL" in line
        line = _error_line(capsys, ["--port", port])  # the canned answer is spent
        assert "a ComfyUI simulator already runs on" in line


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("no-such-host.invalid", "unknown host 'no-such-host.invalid'"),
        ("192.0.2.1", "192.0.2.1 is not an address of this machine"),  # TEST-NET-1
    ],
)
def test_a_host_it_cannot_listen_on_is_one_line(
    capsys: pytest.CaptureFixture[str], host: str, expected: str
) -> None:
    assert expected in _error_line(capsys, ["--host", host, "--port", "0"])


def test_the_installed_command_ends_in_one_line_not_a_traceback(busy_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "storyboard.cli", "simulate-comfyui", "--port", str(busy_port)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""

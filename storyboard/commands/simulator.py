"""`storyboard simulate-comfyui`: a simulated ComfyUI server for demos and benchmarks.

It listens on port 8288 unless told otherwise, so it never takes (or is mistaken
for) a real ComfyUI on that server's default 8188. A port it cannot listen on ends
the command with one line saying why, and whether a ComfyUI already answers there.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import httpx

from storyboard.simulator import ListenError, SimulatorConfig, serve_simulator

DEFAULT_PORT = 8288
COMFYUI_PORT = 8188  # a real ComfyUI's default
_PROBE_TIMEOUT_S = 1.0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number 0..65535, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535 (0: any free port), got {port}")
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds must not be negative, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate-comfyui",
        help="serve a simulated ComfyUI (same API, placeholder pictures)",
        description="Serve a ComfyUI-compatible simulator until interrupted (Ctrl+C). "
        "Point the stage at it with STORYBOARD_COMFYUI_URL=http://HOST:PORT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port, 0..65535 (default {DEFAULT_PORT}, not ComfyUI's {COMFYUI_PORT}; "
        "0: any free port)",
    )
    parser.add_argument(
        "--steps",
        type=_count,
        default=0,
        help="force this many sampler steps per picture (default 0: the graph's own, as ComfyUI)",
    )
    parser.add_argument(
        "--step-seconds", type=_seconds, default=0.25, help="simulated time per sampler step"
    )
    parser.add_argument(
        "--load-seconds",
        type=_seconds,
        default=0.0,
        help="model load charged to the first prompt after start (or other model files)",
    )
    parser.add_argument(
        "--lora-switch-seconds",
        type=_seconds,
        default=0.0,
        help="charged when a prompt's LoRA name or strength differs from the previous prompt's",
    )
    parser.add_argument(
        "--reference-seconds",
        type=_seconds,
        default=0.0,
        help="charged per reference image the previous prompt did not encode",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="keep results here (default: temporary)"
    )
    parser.set_defaults(handler=run)


def config_from(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        steps=args.steps or None,
        step_s=args.step_seconds,
        output_dir=args.output_dir,
        load_s=args.load_seconds,
        lora_switch_s=args.lora_switch_seconds,
        reference_s=args.reference_seconds,
    )


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_serve(config_from(args), args.host, args.port))
    except ListenError as exc:
        known = asyncio.run(_who_answers(args.host, args.port)) if exc.in_use else None
        print(f"error: {known or exc}", file=sys.stderr)
        return 1
    return 0


async def _who_answers(host: str, port: int) -> str | None:
    """Which ComfyUI already answers on host:port, in one line; None if none does."""
    url = f"http://{host}:{port}/system_stats"
    try:
        async with httpx.AsyncClient(timeout=_PROBE_TIMEOUT_S) as client:
            stats = (await client.get(url)).json()
        version = str(stats["system"]["comfyui_version"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    where = f"{host}:{port}"
    if version == "storyboard-simulator":
        return f"a ComfyUI simulator already runs on {where}: use it, or pick another --port"
    return (
        f"a real ComfyUI ({version}) already answers on {where}: point STORYBOARD_COMFYUI_URL "
        f"at it, or run the simulator on another --port (default {DEFAULT_PORT})"
    )


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    async with serve_simulator(config, host=host, port=port) as sim:
        stop = asyncio.Event()
        # Ctrl+C arrives as KeyboardInterrupt; a service manager's SIGTERM ends it as cleanly.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(
            f"ComfyUI simulator listening on {sim.url} (WebSocket {sim.ws_url}); "
            f"use it with STORYBOARD_COMFYUI_URL={sim.url}",
            flush=True,
        )
        await stop.wait()
        print("ComfyUI simulator stopped", flush=True)

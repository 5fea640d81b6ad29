"""`storyboard simulate-comfyui`: a simulated ComfyUI server for demos and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from storyboard.simulator import SimulatorConfig, serve_simulator


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate-comfyui",
        help="serve a simulated ComfyUI (same API, placeholder pictures)",
        description="Serve a ComfyUI-compatible simulator until interrupted (Ctrl+C).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8188, help="port (0: any free port)")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="force this many sampler steps per picture (default 0: the graph's own, as ComfyUI)",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=0.25, help="simulated time per sampler step"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="keep results here (default: temporary)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 0 or args.step_seconds < 0:
        raise SystemExit("error: --steps and --step-seconds must not be negative")
    config = SimulatorConfig(
        steps=args.steps or None, step_s=args.step_seconds, output_dir=args.output_dir
    )
    asyncio.run(_serve(config, args.host, args.port))
    return 0


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    async with serve_simulator(config, host=host, port=port) as sim:
        stop = asyncio.Event()
        # Ctrl+C arrives as KeyboardInterrupt; a service manager's SIGTERM ends it as cleanly.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"ComfyUI simulator listening on {sim.url} (WebSocket {sim.ws_url})", flush=True)
        await stop.wait()
        print("ComfyUI simulator stopped", flush=True)

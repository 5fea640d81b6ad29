"""The main job on embedded defaults (`make demo`): no GPU, no Prefect server, no setup.

    .venv/bin/python -m flows.demo

Seeds the demo storyboard into the data directory of the settings (default `data/`), starts
the ComfyUI simulator on a free loopback port, runs `storyboard render demo` (the
`image-batch` flow with its progress bar and final table) on Prefect's ephemeral API
(PREFECT_HOME in `.prefect/` of this checkout, analytics off) and prints where the images and
the contact sheet are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _prefect_environment() -> None:
    # Before prefect is imported: its settings are read at import time.
    os.environ.setdefault("PREFECT_HOME", str(PROJECT_DIR / ".prefect"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    # Booting the embedded API (migrating a fresh SQLite file) can pass the 20 s default on a
    # small, busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.pop("PREFECT_API_URL", None)  # the ephemeral API, whatever the shell says


def main() -> int:
    _prefect_environment()
    from flows.cli import render_main
    from storyboard import ids
    from storyboard.errors import StoryboardError
    from storyboard.settings import load_settings
    from storyboard.simulator import SimulatorConfig, SimulatorThread
    from storyboard.store import Store
    from storyboard.store.demo import DEMO_PROJECT, seed_demo

    try:
        settings = load_settings()
        store = Store(
            settings.database,
            lock_timeout_s=settings.store_lock_timeout_s,
            max_prompt_chars=settings.max_prompt_chars,
        )
        seed_demo(store, settings.data_dir)
        with SimulatorThread(SimulatorConfig(steps=4, step_s=0.05)) as simulator:
            os.environ["STORYBOARD_COMFYUI_URL"] = simulator.url
            os.environ.pop("COMFYUI_URL", None)
            os.environ.pop("STORYBOARD_COMFYUI_WS_URL", None)
            os.environ.pop("COMFYUI_WS_URL", None)
            print(f"ComfyUI simulator on {simulator.url}; rendering the demo storyboard...")
            code = render_main([DEMO_PROJECT], prog="make demo")
    except StoryboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    project_dir = ids.project_dir(settings.data_dir, DEMO_PROJECT)
    print(f"images: {project_dir / 'images'}")
    print(f"contact sheet: {project_dir / 'contact-sheet.png'}")
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

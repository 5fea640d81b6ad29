"""Prove the Prefect UI shows the batch's pictures: a real server, a real batch, a real browser.

    .venv/bin/pip install playwright          # the Python package only: no browser download
    .venv/bin/python scripts/check_ui.py [--chromium /usr/bin/chromium] [--out PNG]

Starts `prefect server start` on a free loopback port (its own PREFECT_HOME in a temporary
directory), renders three sentences of the demo storyboard against the ComfyUI simulator,
then opens the run's pictures artifact and its summary in headless Chromium (the system's,
driven by Playwright) and checks that every thumbnail and the contact sheet loaded
(`naturalWidth > 0`) and that an exact seed (as text) is on the page. Saves a screenshot of
the pictures artifact. Exit status 0 only if all of that held; every failure is one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER_START_S = 120.0
PAGE_WAIT_MS = 30_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"check_ui: the Prefect server exited ({server.returncode})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"check_ui: the Prefect server at {url} did not answer in {SERVER_START_S} s")


def run_batch(data_dir: Path) -> tuple[str, dict[str, str], list[str]]:
    """Render three demo sentences; (flow run id, artifact id by key, exact seeds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.batch_report import PICTURES_KEY, SUMMARY_KEY
    from flows.image_batch import image_batch
    from storyboard.settings import load_settings
    from storyboard.simulator import SimulatorConfig, SimulatorThread
    from storyboard.store import Store
    from storyboard.store.demo import DEMO_PROJECT, seed_demo

    os.environ["STORYBOARD_DATA_DIR"] = str(data_dir)
    settings = load_settings()
    store = Store(settings.database)
    seed_demo(store, settings.data_dir)
    with SimulatorThread(SimulatorConfig(steps=2, step_s=0.01)) as simulator:
        os.environ["STORYBOARD_COMFYUI_URL"] = simulator.url
        state = image_batch(project_id=DEMO_PROJECT, limit=3, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"check_ui: the batch ended {state.name}: {state.message}")
    run_id = str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    ids = {a.key: str(a.id) for a in artifacts if a.key in (PICTURES_KEY, SUMMARY_KEY)}
    seeds = [str(s.seed) for s in store.sentences(DEMO_PROJECT)[:3]]
    return run_id, ids, seeds


IMAGES_JS = """() => Array.from(document.images)
    .filter(img => img.src.startsWith('data:image/'))
    .map(img => ({complete: img.complete, width: img.naturalWidth}))"""


def check_page(page: object, url: str, expect_images: int, texts: list[str]) -> list[str]:
    """Problems with one artifact page (empty: none)."""
    page.goto(url)  # type: ignore[attr-defined]
    # On Playwright's TimeoutError the check below reports what the page has instead.
    with contextlib.suppress(Exception):
        page.wait_for_function(  # type: ignore[attr-defined]
            f"() => Array.from(document.images).filter(i => i.src.startsWith('data:image/'))"
            f".filter(i => i.complete && i.naturalWidth > 0).length >= {expect_images}",
            timeout=PAGE_WAIT_MS,
        )
    images = page.evaluate(IMAGES_JS)  # type: ignore[attr-defined]
    problems = []
    loaded = [i for i in images if i["complete"] and i["width"] > 0]
    if len(loaded) < expect_images:
        problems.append(f"{url}: {len(loaded)} of {expect_images} pictures loaded ({images})")
    body = page.inner_text("body")  # type: ignore[attr-defined]
    problems += [f"{url}: {text!r} not on the page" for text in texts if text not in body]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    # A temporary file unless asked: a check run must not change a tracked file (to refresh
    # the README's picture, pass `--out docs/ui-pictures.png`).
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "storyboard-ui-pictures.png",
        help="where the screenshot goes (default: the temporary folder)",
    )
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("check_ui: install Playwright first: .venv/bin/pip install playwright")
        return 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="check-ui-") as tmp:
        env = {
            **os.environ,
            "PREFECT_HOME": str(Path(tmp) / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_UI_API_URL": f"{base}/api",
        }
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"{base}/api", server)
            os.environ.update({**env, "PREFECT_API_URL": f"{base}/api"})
            run_id, artifact_ids, seeds = run_batch(Path(tmp) / "data")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                pictures = f"{base}/artifacts/artifact/{artifact_ids['image-batch-pictures']}"
                problems = check_page(page, pictures, 3, seeds)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                summary = f"{base}/artifacts/artifact/{artifact_ids['image-batch-summary']}"
                problems += check_page(page, summary, 1, ["Storyboard lighthouse"])
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for problem in problems:
        print(f"check_ui: {problem}")
    if problems:
        return 1
    print(f"check_ui: flow run {run_id}: 3 thumbnails and the contact sheet load in Chromium;")
    print(f"check_ui: screenshot {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

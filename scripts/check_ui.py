"""Prove the Prefect UI shows the batch's pictures: a real server, a real batch, a real browser.

    .venv/bin/pip install playwright          # the Python package only: no browser download
    .venv/bin/python scripts/check_ui.py [--chromium /usr/bin/chromium] [--out PNG]

Starts `prefect server start` on a free loopback port (its own PREFECT_HOME in a temporary
directory), renders three sentences of the demo storyboard against the ComfyUI simulator,
then one more on demand (the generate-image flow), and opens in headless Chromium (the
system's, driven by Playwright) at 1600x1000:

- the batch's pictures artifact, in the V1 UI and in the V2 UI (`/v2/...`, where the server
  sends a browser with no saved choice): every thumbnail loaded (`naturalWidth > 0`), the
  exact seeds (as text) on the page, and the table fits the page: its right edge within the
  viewport and no scroll container around it, the table's own included, scrolls sideways
  (the V1 UI hides the scroll bar, so a column past the edge is simply not seen);
- the summary: the contact sheet loaded;
- the on-demand run's picture artifact: its thumbnail loaded, its seed on the page;
- the progress artifact: its text names the lane ("default: idle" once done).

Saves a screenshot of the pictures artifact (V1). Exit status 0 only if all of that held;
every failure is one line.
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
VIEWPORT = {"width": 1600, "height": 1000}


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
    """Render three demo sentences, then a fourth on demand; (the batch's flow run id,
    artifact id by key, exact seeds of the three and then of the fourth)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.batch_report import PICTURE_KEY, PICTURES_KEY, PROGRESS_KEY, SUMMARY_KEY
    from flows.generate_image_flow import generate_image_flow
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
        fourth = store.sentences(DEMO_PROJECT)[3].id
        on_demand = generate_image_flow(
            project_id=DEMO_PROJECT, sentence_id=fourth, return_state=True
        )
    for name, ended in (("the batch", state), ("the on-demand run", on_demand)):
        if not ended.is_completed():
            raise SystemExit(f"check_ui: {name} ended {ended.name}: {ended.message}")
    run_ids = [state.state_details.flow_run_id, on_demand.state_details.flow_run_id]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
        )
    batch_keys = (PICTURES_KEY, SUMMARY_KEY, PROGRESS_KEY)
    ids = {
        a.key: str(a.id)
        for a in artifacts
        if (a.key in batch_keys and a.flow_run_id == run_ids[0]) or a.key == PICTURE_KEY
    }
    seeds = [str(s.seed) for s in store.sentences(DEMO_PROJECT)[:4]]
    return str(run_ids[0]), ids, seeds


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


# Every scroll container around the table (the table's own included) and how far its content
# reaches past its width: a table that fits has none but zeros.
FIT_JS = """() => {
    const table = document.querySelector('table');
    if (!table) return null;
    const overflowing = [];
    for (let el = table; el && el !== document.documentElement; el = el.parentElement) {
        const style = getComputedStyle(el);
        const scrolls = ['auto', 'scroll', 'hidden'].includes(style.overflowX);
        if (scrolls && el.scrollWidth > el.clientWidth + 1) {
            overflowing.push(`${el.tagName.toLowerCase()}.${el.className}`.slice(0, 60)
                + ` by ${el.scrollWidth - el.clientWidth} px`);
        }
    }
    const right = Math.round(table.getBoundingClientRect().right);
    return {right, page: document.scrollingElement.scrollWidth, overflowing};
}"""


def check_fits(page: object, url: str, width: int) -> list[str]:
    """Problems with the table's fit on the page already open (empty: none)."""
    fit = page.evaluate(FIT_JS)  # type: ignore[attr-defined]
    if fit is None:
        return [f"{url}: no table on the page"]
    problems = [f"{url}: the table is cut off: {where}" for where in fit["overflowing"]]
    if fit["right"] > width or fit["page"] > width:
        problems.append(
            f"{url}: the table ends at {fit['right']} px, the page at {fit['page']} px;"
            f" wider than {width} px"
        )
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
                page = browser.new_page(viewport=VIEWPORT)
                problems = []
                for ui in ("/v2", ""):  # V1 last: its screenshot is kept
                    url = f"{base}{ui}/artifacts/artifact/{artifact_ids['image-batch-pictures']}"
                    problems += check_page(page, url, 3, seeds[:3])
                    problems += check_fits(page, url, VIEWPORT["width"])
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                summary = f"{base}/artifacts/artifact/{artifact_ids['image-batch-summary']}"
                problems += check_page(page, summary, 1, ["Storyboard lighthouse"])
                picture = f"{base}/artifacts/artifact/{artifact_ids['generate-image-picture']}"
                problems += check_page(page, picture, 1, [f"seed {seeds[3]}"])
                progress = f"{base}/artifacts/artifact/{artifact_ids['image-batch-progress']}"
                problems += check_page(page, progress, 0, ["3/3 sentences done; default: idle"])
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for problem in problems:
        print(f"check_ui: {problem}")
    if problems:
        return 1
    print(
        f"check_ui: flow run {run_id}: 3 thumbnails and the contact sheet load in Chromium,"
        f" the pictures table fits a {VIEWPORT['width']} px page in the V1 and the V2 UI;"
    )
    print("check_ui: the on-demand run's thumbnail loads; the progress artifact names the lane;")
    print(f"check_ui: screenshot {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the end of a batch costs: the contact sheet and the pictures artifact's thumbnails.

    python -m benchmarks.report --n 200 --rounds 3

A store of N completed sentences, each with a 1920x1080 PNG of noise (about what a render
compresses to), then, alternating in one process, the report's picture work done three ways:
`thumbs`, as the batch does it now: each picture's store step wrote its thumbnail from the
server's JPEG preview (counted here: that CPU is the orchestrator's too; the server's encoding
is not), and the sheet and the artifact draw from the thumbnails; `shared`, with no
thumbnails (a server that gives no preview): the artifact takes each thumbnail from the
sheet's decode; `apart` (the artifact reads and decodes each picture again); and `kept`,
the sheet and the artifact alone over thumbnails made by earlier batches (a nightly batch's
sheet covers the whole project, most of it made before). CPU seconds
of this process per round and per image; no Prefect API is involved.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from benchmarks.synthetic import PROJECT_ID as PROJECT
from benchmarks.synthetic import seed as seed_project
from flows.batch_pictures import Thumbnails
from flows.batch_report import pictures_markdown
from storyboard.contact_sheet import write_contact_sheet
from storyboard.files import stamp
from storyboard.scheduler.outcome import Outcome
from storyboard.store import Store
from storyboard.thumbnails import PREVIEW, write_thumbnail

FRAME = (1920, 1080)


def seed(data_dir: Path, n: int) -> tuple[Store, list[Outcome], bytes]:
    """The benchmarks' synthetic project, every sentence with a stored picture; and the
    JPEG preview a ComfyUI serves of such a picture."""
    store = Store(data_dir / "storyboard.duckdb")
    seed_project(store, data_dir, n)
    images = data_dir / "projects" / PROJECT / "images"
    images.mkdir(parents=True)
    noise = Image.effect_noise(FRAME, 32).convert("RGB")
    preview = io.BytesIO()
    noise.save(preview, "JPEG", quality=int(PREVIEW.split(";")[1]))
    outcomes: list[Outcome] = []
    for i in range(n):
        sid = f"s{i:05d}"
        noise.save(images / f"{sid}.png", compress_level=4)
        job = store.start_job(PROJECT, sid, run_id="bench", attempt=1, stale_after_s=600)
        assert job is not None
        name = f"images/{sid}.png"
        store.complete_job(job.id, image_file=name, seed=i, workflow_hash="h", duration_s=1)
        outcomes.append(Outcome(PROJECT, sid, "completed", image_file=name))
    return store, outcomes, preview.getvalue()


def once(store: Store, outcomes: list[Outcome], data_dir: Path, way: str, preview: bytes) -> float:
    project = data_dir / "projects" / PROJECT
    shutil.rmtree(project / "thumbs", ignore_errors=True)
    began = time.process_time()
    if way in ("thumbs", "kept"):  # what each picture's store step adds
        for outcome in outcomes:
            picture_stamp = stamp(os.stat(project / str(outcome.image_file)))
            write_thumbnail(
                data_dir,
                PROJECT,
                outcome.sentence_id,
                preview,
                picture_stamp=picture_stamp,
                frame=FRAME,
                max_pixels=FRAME[0] * FRAME[1],
            )
        if way == "kept":
            began = time.process_time()
    shared = way != "apart"
    wanted = {(o.project_id, o.image_file or "") for o in outcomes} if shared else set()
    thumbnails = Thumbnails(wanted)
    write_contact_sheet(store, data_dir, PROJECT, on_decoded=thumbnails.keep if shared else None)
    pictures_markdown(outcomes, data_dir, {}, thumbnails)
    return time.process_time() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="storyboard-report-") as scratch:
        data_dir = Path(scratch) / "data"
        store, outcomes, preview = seed(data_dir, args.n)
        seconds: dict[str, list[float]] = {"apart": [], "shared": [], "thumbs": [], "kept": []}
        for _ in range(args.rounds):
            for way in seconds:
                seconds[way].append(once(store, outcomes, data_dir, way, preview))
    print(f"N = {args.n}, {args.rounds} rounds, CPU ms per image (median; every round)")
    for way, values in seconds.items():
        each = ", ".join(f"{1000 * v / args.n:.1f}" for v in values)
        print(f"  {way:6} {1000 * statistics.median(values) / args.n:6.1f}   ({each})")
    median = {way: statistics.median(values) for way, values in seconds.items()}
    print(f"  shared / apart: {median['shared'] / median['apart']:.2f}")
    print(f"  thumbs / shared: {median['thumbs'] / median['shared']:.2f}")
    print(f"  kept / shared: {median['kept'] / median['shared']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

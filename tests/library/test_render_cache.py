"""The render cache against a real store and real PNG files."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, PngImagePlugin

from storyboard.picture_info import HASH_KEY
from storyboard.render_cache import cached_picture
from storyboard.store import Project, SentenceInput, Store

MAX = 1_000_000


def png(graph_hash: str | None, colour: str = "red", key: str = HASH_KEY) -> bytes:
    info = PngImagePlugin.PngInfo()
    if graph_hash is not None:
        info.add_text(key, graph_hash, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 18), colour).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def store_with_picture(tmp_path: Path, graph_hash: str) -> tuple[Store, Path]:
    store = Store(tmp_path / "store.duckdb")
    store.upsert(
        projects=[Project(id="p1", name="P")],
        sentences=[
            SentenceInput(id="s1", project_id="p1", position=1, text="t", image_prompt="a cat")
        ],
    )
    job = store.start_job("p1", "s1", run_id="r1", attempt=1, stale_after_s=60)
    assert job is not None
    store.complete_job(
        job.id, image_file="images/s1.png", seed=1, workflow_hash=graph_hash, duration_s=1
    )
    picture = tmp_path / "data" / "projects" / "p1" / "images" / "s1.png"
    picture.parent.mkdir(parents=True)
    return store, picture


def test_a_picture_made_from_the_same_graph_is_reused(tmp_path: Path) -> None:
    store, picture = store_with_picture(tmp_path, "h1")
    picture.write_bytes(png("h1"))
    assert cached_picture(store, "h1", tmp_path / "data", max_bytes=MAX) == picture.read_bytes()


def test_misses(tmp_path: Path) -> None:
    store, picture = store_with_picture(tmp_path, "h1")
    data_dir = tmp_path / "data"
    assert cached_picture(store, "other", data_dir, max_bytes=MAX) is None  # never rendered
    assert cached_picture(store, "h1", data_dir, max_bytes=MAX) is None  # file gone
    picture.write_bytes(png("h2", "blue"))  # replaced by a later render of another graph
    assert cached_picture(store, "h1", data_dir, max_bytes=MAX) is None
    picture.write_bytes(b"not a png")
    assert cached_picture(store, "h1", data_dir, max_bytes=MAX) is None


def test_an_older_picture_with_the_old_key_still_hits(tmp_path: Path) -> None:
    # Pictures stored before `storyboard:workflow_hash` carry the hash as `workflow_hash`.
    store, picture = store_with_picture(tmp_path, "h1")
    picture.write_bytes(png("h1", key="workflow_hash"))
    assert cached_picture(store, "h1", tmp_path / "data", max_bytes=MAX) == picture.read_bytes()


def test_a_picture_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    store, picture = store_with_picture(tmp_path, "h1")
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(png("h1"))
    picture.symlink_to(elsewhere)
    assert cached_picture(store, "h1", tmp_path / "data", max_bytes=MAX) is None


def test_a_picture_over_the_byte_cap_is_a_miss(tmp_path: Path) -> None:
    store, picture = store_with_picture(tmp_path, "h1")
    picture.write_bytes(png("h1"))
    assert cached_picture(store, "h1", tmp_path / "data", max_bytes=100) is None

"""Pictures are written below data/ without following any link: real files, a real store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from storyboard import pipeline
from storyboard.errors import UnsafePathError
from storyboard.pipeline import PipelineConfig, Prepared, Rendered
from storyboard.store import Store
from tests.support.pipeline import save_picture
from tests.support.store import seeded_store

FRAME = (32, 18)


def png(colour: str, size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Store:
    # In data/, as the settings put it: three folders above a picture.
    data_dir.mkdir()
    return seeded_store(data_dir, sentences=2)


def config(data_dir: Path) -> PipelineConfig:
    return PipelineConfig(
        data_dir=data_dir,
        workflow_path=Path("unused.json"),
        frame=FRAME,
        image_timeout_s=5,
        max_download_bytes=1_000_000,
        max_image_pixels=1_000_000,
        max_reference_bytes=1_000_000,
    )


def rendered(store: Store, sentence_id: str, colour: str) -> Rendered:
    """A render of `sentence_id` as ComfyUI would hand it over, claimed in the real store."""
    resolved = pipeline.resolve(store, "p1", sentence_id, reference_paths=[])
    graph = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "storyboard"}}}
    prepared = Prepared(resolved, graph, 7, f"hash-{sentence_id}", "test", ())
    claimed = pipeline.claim(store, prepared, run_id="run-1", attempt=1, stale_after_s=60)
    assert claimed is not None
    return Rendered(prepared, claimed.job, "prompt-1", png(colour), 1.0)


def images(data_dir: Path) -> Path:
    return data_dir / "projects" / "p1" / "images"


def test_a_link_at_the_picture_path_to_the_store_replaces_the_link_not_the_store(
    store: Store, data_dir: Path
) -> None:
    database = data_dir / "store.duckdb"
    images(data_dir).mkdir(parents=True)
    link = images(data_dir) / "s1.png"
    link.symlink_to("../../../store.duckdb")
    assert link.resolve() == database.resolve()
    before = database.read_bytes()[:4096]

    stored = save_picture(store, rendered(store, "s1", "red"), config(data_dir))

    assert not link.is_symlink() and link.is_file()
    with Image.open(link) as picture:
        assert picture.getpixel((0, 0)) == (255, 0, 0)
    assert database.read_bytes()[:4096] == before  # still the store, not a PNG
    assert stored.image_file == "images/s1.png"
    assert store.get_sentence("p1", "s1").image_file == "images/s1.png"


def test_a_link_to_another_sentences_picture_leaves_that_picture_alone(
    store: Store, data_dir: Path
) -> None:
    images(data_dir).mkdir(parents=True)
    (images(data_dir) / "s2.png").write_bytes(png("blue"))
    (images(data_dir) / "s1.png").symlink_to("s2.png")

    save_picture(store, rendered(store, "s1", "red"), config(data_dir))

    with Image.open(images(data_dir) / "s2.png") as other:
        assert other.getpixel((0, 0)) == (0, 0, 255)
    assert not (images(data_dir) / "s1.png").is_symlink()


@pytest.mark.parametrize("linked", ["images", "project"])
def test_a_linked_folder_below_data_is_refused_and_nothing_written(
    store: Store, data_dir: Path, tmp_path: Path, linked: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if linked == "images":
        (data_dir / "projects" / "p1").mkdir(parents=True)
        images(data_dir).symlink_to(outside)
    else:
        (data_dir / "projects").mkdir()
        (data_dir / "projects" / "p1").symlink_to(outside)
    job = rendered(store, "s1", "red")

    with pytest.raises(UnsafePathError, match=r"is a symbolic link.*replace the link"):
        save_picture(store, job, config(data_dir))

    assert list(outside.iterdir()) == []
    sentence = store.get_sentence("p1", "s1")
    assert sentence.image_file is None and sentence.image_dirty

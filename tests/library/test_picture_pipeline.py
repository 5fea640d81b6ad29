"""The pipeline's pictures on the real seams: the simulator over HTTP and WebSocket, a real
DuckDB store and real files. What reaches the server, what the PNG says, what the job records."""

from __future__ import annotations

import copy
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat

from storyboard import pipeline, thumbnails
from storyboard.comfyui.uploads import content_name
from storyboard.errors import (
    ComfyUITimeoutError,
    ImageSizeError,
    WorkflowFormatError,
    is_retryable,
)
from storyboard.files import stamp
from storyboard.image import jpeg_comment, verify_image
from storyboard.picture_info import HASH_KEY
from storyboard.simulator import SimulatorConfig
from tests.support.pipeline import FRAME, Rig, make_rig, png, save_picture


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_rig(tmp_path, SimulatorConfig(steps=1, step_s=0.0)) as made:
        yield made


def test_the_png_carries_the_queued_graph_under_prompt_and_ours_under_storyboard(
    rig: Rig,
) -> None:
    rendered = rig.render(rig.prepare("s2"), attempt=2)
    stored = save_picture(rig.store, rendered, rig.config)

    queued = rig.sim_thread.sim.graphs[str(rendered.prompt_id)]
    with Image.open(stored.image_path) as picture:
        text = dict(picture.info)
    assert json.loads(text["prompt"]) == queued  # what ComfyUI loads when the PNG is dropped
    ours = {k for k in text if isinstance(k, str) and k.startswith("storyboard:")}
    assert set(text) - ours - {"prompt"} <= {"dpi"}  # no `workflow`, no bare keys of ours
    assert text[HASH_KEY] == rendered.prepared.graph_hash
    assert text["storyboard:prompt"] == "a lighthouse"
    assert text["storyboard:seed"] == "12"


def test_each_job_writes_its_own_output_file_so_a_deleted_one_costs_nothing(rig: Rig) -> None:
    prepared = rig.prepare("s2")
    first = rig.render(prepared)
    output = rig.sim_thread.sim.files.dirs["output"]
    for leftover in output.rglob("*.png"):  # someone cleans the server's output folder
        leftover.unlink()

    second = rig.render(prepared)  # `force`: the same sentence again, same seed

    prefixes = [
        rig.sim_thread.sim.graphs[str(r.prompt_id)]["18"]["inputs"]["filename_prefix"]
        for r in (first, second)
    ]
    assert prefixes == [f"storyboard/flux2-{first.job.id}", f"storyboard/flux2-{second.job.id}"]
    assert second.data == first.data  # same seed, same picture


def test_a_dry_run_uploads_nothing_and_predicts_the_upload_names(rig: Rig) -> None:
    dry = rig.prepare("s1", upload=False)
    assert rig.uploaded() == []

    real = rig.prepare("s1")

    name = "storyboard/" + content_name(png((40, 40), "teal"))
    assert rig.uploaded() == [name]
    assert dry.graph == real.graph and dry.graph_hash == real.graph_hash
    assert real.graph["7"]["inputs"]["image"] == name


def test_a_graph_without_a_reference_slot_uploads_nothing(rig: Rig) -> None:
    with pytest.raises(WorkflowFormatError, match="reference image"):
        rig.prepare("s1", workflow="sd-basic.json")
    assert rig.uploaded() == []


def test_an_output_of_another_size_is_refused_and_retried() -> None:
    verify_image(png((64, 48)), max_pixels=1_000_000, size=(64, 48), what="ComfyUI output")
    with pytest.raises(ImageSizeError, match=r"ComfyUI output is 8x8, not the 64x48") as caught:
        verify_image(png((8, 8)), max_pixels=1_000_000, size=(64, 48), what="ComfyUI output")
    assert is_retryable(caught.value)


def test_a_failed_job_records_the_prompt_id_and_the_seed(rig: Rig) -> None:
    prepared = rig.prepare("s2")
    claimed = pipeline.claim(rig.store, prepared, run_id="run-1", attempt=1, stale_after_s=60)
    assert claimed is not None
    job = claimed.job
    error = ComfyUITimeoutError("render ran past 20 s")
    error.prompt_id = "5b1f3a0e-0000-4000-8000-000000000001"

    pipeline.record_failure(
        rig.store,
        "p1",
        "s2",
        error,
        job=job,
        final=True,
        run_id="run-1",
        attempt=1,
        stale_after_s=60,
        seed=prepared.seed,
    )

    failed = rig.store.get_job(job.id)
    assert (failed.status, failed.prompt_id, failed.seed) == ("failed", error.prompt_id, 12)


def test_recorded_time_is_render_time_not_the_wait_in_the_queue(tmp_path: Path) -> None:
    # Each prompt executes for 15 x 0.1 s; another client's prompt is ahead of ours. Ours is
    # queued after a claim and an upload, which take a good part of a second on a busy machine:
    # the blocker must still be running then.
    with make_rig(tmp_path, SimulatorConfig(steps=15, step_s=0.1)) as slow:
        prepared = slow.prepare("s2")
        blocker = copy.deepcopy(prepared.graph)
        blocker["18"]["inputs"]["filename_prefix"] = "other-client"
        started = time.monotonic()
        response = httpx.post(
            f"{slow.sim_thread.url}/prompt",
            json={"prompt": blocker, "client_id": "other", "prompt_id": str(uuid.uuid4())},
            timeout=10,
        )
        assert response.status_code == 200

        rendered = slow.render(prepared)
        stored = save_picture(slow.store, rendered, slow.config)
        wall = time.monotonic() - started

    assert rendered.queue_s is not None and rendered.queue_s >= 0.3
    assert rendered.render_s + rendered.queue_s <= wall  # the two are apart, not overlapping
    assert (stored.render_s, stored.queue_s) == (rendered.render_s, rendered.queue_s)
    job = slow.store.get_job(rendered.job.id)
    assert (job.render_s, job.queue_s) == pytest.approx((rendered.render_s, rendered.queue_s))


def test_a_wrong_size_output_from_the_server_costs_an_attempt_not_a_stretched_picture(
    rig: Rig,
) -> None:
    prepared = rig.prepare("s2")
    rig.sim_thread.sim.faults.output_next(size=(8, 8))
    with pytest.raises(ImageSizeError, match="8x8, not the 64x36"):
        rig.render(prepared)
    again = rig.render(prepared, attempt=2)
    stored = save_picture(rig.store, again, rig.config)
    with Image.open(stored.image_path) as picture:
        assert picture.size == FRAME


@pytest.mark.parametrize("mode", ["I;16", "F"])
def test_wide_server_outputs_keep_their_grey_levels(rig: Rig, mode: str) -> None:
    prepared = rig.prepare("s2")
    normal = save_picture(rig.store, rig.render(prepared), rig.config)
    with Image.open(normal.image_path) as picture:
        expected = picture.convert("L")
    rig.store.mark_dirty("p1", ["s2"])
    rig.sim_thread.sim.faults.output_next(mode=mode)

    wide = save_picture(rig.store, rig.render(prepared, attempt=2), rig.config)

    with Image.open(wide.image_path) as picture:
        grey = picture.convert("L")
    differences = [abs(a - b) for a, b in zip(grey.tobytes(), expected.tobytes(), strict=True)]
    assert max(differences) <= 2  # not clipped to white (I;16) or black (F)
    assert len(set(expected.tobytes())) > 1  # the picture has grey levels to lose


def _idat(data: bytes) -> bytes:
    """The image data of a PNG: the concatenated IDAT chunk bodies."""
    found, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            found.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return b"".join(found)


def test_flux_crops_on_the_server_so_storing_keeps_comfyuis_pixels(rig: Rig) -> None:
    prepared = rig.prepare("s2")
    assert prepared.output_size == FRAME
    rendered = rig.render(prepared)
    with Image.open(io.BytesIO(rendered.data)) as output:
        assert output.size == FRAME  # cropped by the graph's ImageCrop, not by us

    stored = save_picture(rig.store, rendered, rig.config)

    data = stored.image_path.read_bytes()
    assert _idat(data) == _idat(rendered.data)  # text chunks added, nothing re-encoded
    with Image.open(stored.image_path) as picture:
        assert picture.size == FRAME
        assert picture.info[HASH_KEY] == prepared.graph_hash
        assert json.loads(picture.info["prompt"]) == rendered.executed_graph
    # The render cache still finds it.
    rig.store.mark_dirty("p1", ["s2"])
    again = rig.render(prepared, attempt=2, reuse=True)
    assert again.cached and again.data == data


def test_a_graph_without_a_crop_node_is_still_cropped_when_stored(rig: Rig) -> None:
    prepared = rig.prepare("s2", workflow="sd-basic.json")
    assert prepared.output_size == (64, 48)
    rendered = rig.render(prepared)
    stored = save_picture(rig.store, rendered, rig.config)
    with Image.open(stored.image_path) as picture:
        assert picture.size == FRAME
        assert picture.info[HASH_KEY] == prepared.graph_hash


def _stored_with_thumbnail(rig: Rig) -> tuple[pipeline.Stored, Path]:
    rendered = rig.render(rig.prepare("s2"))
    written = pipeline.write_picture(rig.store, rendered, rig.config, rig.session)
    [stored] = pipeline.record_pictures(rig.store, [written])
    return stored, rig.config.data_dir / "projects" / "p1" / "thumbs" / "s2.jpg"


def test_the_store_step_writes_the_thumbnail_from_the_servers_preview(rig: Rig) -> None:
    stored, thumb = _stored_with_thumbnail(rig)

    assert stored.current
    data = thumb.read_bytes()
    assert jpeg_comment(data) == stamp(os.stat(stored.image_path))
    with Image.open(io.BytesIO(data)) as small, Image.open(stored.image_path) as picture:
        assert small.format == "JPEG" and small.width == thumbnails.WIDTH
        # The picture's colours (the simulator's are the seed's), not another's.
        shown, made = ImageStat.Stat(small.convert("RGB")), ImageStat.Stat(picture.convert("RGB"))
    assert all(abs(a - b) < 4 for a, b in zip(shown.mean, made.mean, strict=True))


def test_a_server_that_gives_no_preview_costs_the_picture_nothing(rig: Rig) -> None:
    rendered = rig.render(rig.prepare("s2"))
    rig.sim_thread.sim.faults.answer_next("/view", status=500, body="preview failed")

    written = pipeline.write_picture(rig.store, rendered, rig.config, rig.session)
    [stored] = pipeline.record_pictures(rig.store, [written])

    assert stored.current and stored.image_path.is_file()
    assert rig.store.get_sentence("p1", "s2").status == "completed"
    assert not (rig.config.data_dir / "projects" / "p1" / "thumbs" / "s2.jpg").exists()


def test_the_prompt_id_is_recorded_with_the_picture_not_between_renders(rig: Rig) -> None:
    rendered = rig.render(rig.prepare("s2"))
    assert rig.store.get_job(rendered.job.id).prompt_id is None  # no store call after the GPU
    save_picture(rig.store, rendered, rig.config)
    job = rig.store.get_job(rendered.job.id)
    assert (job.status, job.prompt_id) == ("completed", rendered.prompt_id)


def test_a_picture_that_cannot_be_written_still_leaves_its_prompt_id_on_the_job(
    rig: Rig,
) -> None:
    rendered = rig.render(rig.prepare("s2"))
    (rig.config.data_dir / "projects" / "p1" / "images").write_text("in the way")
    with pytest.raises(Exception):  # noqa: B017 - whatever the file system says
        save_picture(rig.store, rendered, rig.config)
    job = rig.store.get_job(rendered.job.id)
    assert (job.status, job.prompt_id) == ("running", rendered.prompt_id)


def test_references_the_server_lost_since_they_were_uploaded_are_uploaded_again(
    rig: Rig,
) -> None:
    # A server replaced behind the same address (or its input folder cleaned) rejects the
    # prompt naming our upload; the client sends the same bytes again and posts once more.
    prepared = rig.prepare("s1")
    (name,) = rig.uploaded()
    for path in rig.sim_thread.sim.files.dirs["input"].rglob("*"):
        if path.is_file():
            path.unlink()
    assert rig.uploaded() == []

    rendered = rig.render(prepared)

    assert rendered.prompt_id is not None
    with Image.open(io.BytesIO(rendered.data)) as picture:
        picture.load()
    assert rig.uploaded() == [name]
    assert [run.status for run in rig.sim_thread.sim.runs] == ["success"]


@pytest.mark.parametrize(
    ("without", "crop_class"), [((), "ImageCropV2"), (("ImageCropV2",), "ImageCrop")]
)
def test_the_crop_node_is_the_one_the_server_has_and_the_picture_is_the_saved_one(
    tmp_path: Path, without: tuple[str, ...], crop_class: str
) -> None:
    with make_rig(tmp_path, SimulatorConfig(steps=1, step_s=0.0, without_nodes=without)) as rig:
        rendered = rig.render(rig.prepare("s2"))
        queued = rig.sim_thread.sim.graphs[str(rendered.prompt_id)]
        (crop,) = [i for i, n in queued.items() if n["class_type"] in ("ImageCrop", "ImageCropV2")]
        assert queued[crop]["class_type"] == crop_class
        history = httpx.get(f"{rig.sim_thread.url}/history/{rendered.prompt_id}").json()
        outputs = history[str(rendered.prompt_id)]["outputs"]
        (save,) = [i for i, n in queued.items() if n["class_type"] == "SaveImage"]
        assert [image["type"] for image in outputs[save]["images"]] == ["output"]
        # ImageCropV2's preview sits beside the saved picture; only the latter is taken.
        previews = outputs.get(crop, {}).get("images", [])
        assert [image["type"] for image in previews] == (["temp"] if without == () else [])
        with Image.open(io.BytesIO(rendered.data)) as output:
            assert output.size == FRAME

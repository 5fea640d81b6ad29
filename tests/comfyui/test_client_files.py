"""Downloads and uploads through the client, against the simulator over loopback."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from storyboard.comfyui import ComfyUIClient, OutputImage
from storyboard.errors import (
    ComfyUIProtocolError,
    OutputTooLargeError,
    ReferenceImageError,
    UnsafeNameError,
)
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import RequestLog, client_for, graph


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=1, step_s=0.0), port=0) as server:
        yield server


@pytest.fixture
def requests() -> RequestLog:
    return RequestLog()


@pytest.fixture
async def comfy(sim: ComfyUISimulator, requests: RequestLog) -> AsyncIterator[ComfyUIClient]:
    async for client in client_for(sim.url, requests):
        yield client


async def test_outputs_with_spaces_and_unicode_in_names_download(comfy: ComfyUIClient) -> None:
    result = await comfy.run(graph(seed=1, prefix="Szenen 1/Café – 雨 & 50%"), timeout_s=10)
    (image,) = result.images
    assert image.subfolder == "Szenen 1"
    assert image.filename.startswith("Café – 雨 & 50%_")
    data = await comfy.download(image, max_bytes=10_000_000)
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG"


async def test_download_past_the_cap_is_refused(comfy: ComfyUIClient) -> None:
    (image,) = (await comfy.run(graph(seed=2), timeout_s=10)).images
    size = len(await comfy.download(image, max_bytes=10_000_000))
    with pytest.raises(OutputTooLargeError, match="download limit of 100 bytes"):
        await comfy.download(image, max_bytes=100)
    assert len(await comfy.download(image, max_bytes=size)) == size


async def test_missing_output_is_a_protocol_error(comfy: ComfyUIClient) -> None:
    with pytest.raises(ComfyUIProtocolError, match=r"cannot fetch 'gone\.png'.*404"):
        await comfy.download(OutputImage("gone.png", "", "output"), max_bytes=1000)


@pytest.mark.parametrize(
    "image",
    [OutputImage("../../etc/passwd", "", "output"), OutputImage("a.png", "../..", "output")],
)
async def test_escaping_names_are_refused_before_any_request(
    comfy: ComfyUIClient, requests: RequestLog, image: OutputImage
) -> None:
    with pytest.raises(UnsafeNameError, match="unsafe"):
        await comfy.download(image, max_bytes=1000)
    assert requests.count("GET /view") == 0


async def test_same_image_is_uploaded_once_under_its_content_hash(
    sim: ComfyUISimulator, comfy: ComfyUIClient, requests: RequestLog
) -> None:
    red = _png((255, 0, 0))
    name = await comfy.upload_image(red, filename_hint="hero 1.png")
    assert name == f"storyboard/{hashlib.sha256(red).hexdigest()[:32]}.png"
    assert await comfy.upload_image(red, filename_hint="other name.png") == name
    assert requests.count("POST /upload/image") == 1

    stored = await comfy.download(
        OutputImage(name.split("/")[1], "storyboard", "input"), max_bytes=1_000_000
    )
    assert stored == red
    async with httpx.AsyncClient() as http:
        info = (await http.get(f"{sim.url}/object_info/LoadImage")).json()
    choices = info["LoadImage"]["input"]["required"]["image"][0]
    assert name in choices


async def test_different_images_never_share_a_name_and_a_new_client_reuses_the_name(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    red, blue = _png((255, 0, 0)), _png((0, 0, 255))
    red_name = await comfy.upload_image(red)
    blue_name = await comfy.upload_image(blue)
    assert red_name != blue_name
    async for other in client_for(sim.url):
        # Another process (a new client) uploads again; the server keeps one file.
        assert await other.upload_image(red) == red_name
    assert sorted(sim.files.input_files()) == sorted([red_name, blue_name])


async def test_a_file_that_is_not_an_image_is_refused_without_uploading(
    comfy: ComfyUIClient, requests: RequestLog
) -> None:
    with pytest.raises(ReferenceImageError, match=r"notes\.txt"):
        await comfy.upload_image(b"just text", filename_hint="notes.txt")
    assert requests.count("POST /upload/image") == 0


async def test_unsafe_upload_subfolder_is_refused(comfy: ComfyUIClient) -> None:
    with pytest.raises(UnsafeNameError, match="unsafe upload subfolder"):
        await comfy.upload_image(_png((0, 0, 0)), subfolder="../outside")

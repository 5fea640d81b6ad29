"""The placeholder frame, the threaded server and the command."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import pytest
from PIL import Image

from storyboard.cli import build_parser
from storyboard.simulator import (
    FrameSpec,
    SimulatorConfig,
    SimulatorThread,
    render_frame,
    serve_simulator,
)
from storyboard.simulator.render import STAMP_FILL, stamp_height
from tests.support.captures import sd_tiny
from tests.support.simulator import messages_until_done, socket, submit


def _png(colour: str, size: tuple[int, int] = (300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_frame_has_the_latent_size_and_is_deterministic() -> None:
    spec = FrameSpec(1920, 1088, "A lighthouse at dawn", 42, ("noir.safetensors",))
    data = render_frame(spec)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("PNG", (1920, 1088))
    assert render_frame(spec) == data
    assert render_frame(FrameSpec(1920, 1088, "A lighthouse at dawn", 43)) != data
    assert render_frame(FrameSpec(1920, 1088, "A different prompt", 42, spec.loras)) != data


def _assert_stamped(image: Image.Image) -> None:
    """A red banner across the top with white lettering across a good part of it."""
    rgb = image.convert("RGB")
    band = rgb.crop((0, 0, rgb.width, stamp_height(rgb.height)))
    counts = dict((colour, n) for n, colour in band.getcolors(maxcolors=1 << 20) or [])
    assert counts.get(STAMP_FILL, 0) > 0.6 * band.width * band.height
    letters = band.convert("L").point(lambda v: 255 if v > 200 else 0)
    box = letters.getbbox()
    assert box is not None, "no lettering in the banner"
    assert box[2] - box[0] > 0.15 * rgb.width
    assert abs((box[0] + box[2]) / 2 - rgb.width / 2) < 0.05 * rgb.width + 2  # centred


@pytest.mark.parametrize("size", [(1920, 1088), (640, 360), (64, 36)])
def test_every_frame_says_it_is_simulated(size: tuple[int, int]) -> None:
    data = render_frame(FrameSpec(*size, "A lighthouse at dawn, long prompt " * 4, 7))
    _assert_stamped(Image.open(io.BytesIO(data)))


async def test_a_served_picture_is_stamped_and_survives_a_16_9_crop() -> None:
    async with (
        serve_simulator(SimulatorConfig(steps=1, step_s=0.0)) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
        socket(sim, "c") as ws,
    ):
        seen = await messages_until_done(ws, await submit(http, sd_tiny(), "c"))
        [image] = next(m for m in seen if m["type"] == "executed")["data"]["output"]["images"]
        picture = Image.open(io.BytesIO((await http.get("/view", params=image)).content))
    # 256x144 is already 16:9; a 1920x1088 frame loses 4 rows top and bottom to the crop.
    _assert_stamped(picture)
    tall = Image.open(io.BytesIO(render_frame(FrameSpec(1920, 1088, "x", 1))))
    cropped = tall.crop((0, 4, 1920, 1084))
    assert cropped.convert("RGB").getpixel((5, 5)) == STAMP_FILL


async def test_a_render_keeps_its_length_when_the_host_stalls_it() -> None:
    """A GPU's sampler steps do not wait for the host's CPU: a stall of the server's event
    loop during one step is caught up by the next ones, not added to the render."""
    steps, step_s, stall_s = 10, 0.1, 0.3
    async with (
        serve_simulator(SimulatorConfig(steps=steps, step_s=step_s)) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
        socket(sim, "c") as ws,
    ):
        prompt_id = await submit(http, sd_tiny(), "c")
        while json.loads(await ws.recv())["type"] != "progress":
            pass
        time.sleep(stall_s)  # blocks the loop the simulator runs on, mid-render
        await messages_until_done(ws, prompt_id)
        [run] = sim.runs
    # Without the catch-up the render takes steps * step_s + stall_s = 1.3 s.
    assert steps * step_s <= run.end - run.start < steps * step_s + stall_s * 2 / 3


async def test_a_stall_in_the_warm_up_is_caught_up_by_the_steps() -> None:
    """One clock for the whole prompt: a host stall that makes the model load end late is
    caught up by the sampler's steps, not added to the render."""
    load_s, steps, step_s, stall_s = 0.5, 10, 0.1, 0.3
    config = SimulatorConfig(steps=steps, step_s=step_s, load_s=load_s)
    async with (
        serve_simulator(config) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
        socket(sim, "c") as ws,
    ):
        prompt_id = await submit(http, sd_tiny(), "c")
        while json.loads(await ws.recv())["type"] != "execution_start":
            pass
        await asyncio.sleep(load_s - 0.1)
        time.sleep(stall_s)  # the load (a pause) ends 0.2 s late
        await messages_until_done(ws, prompt_id)
        [run] = sim.runs
    assert run.load_s == load_s
    # With a clock started at the sampler the render takes load_s + 0.2 + steps * step_s.
    assert load_s + steps * step_s <= run.end - run.start < load_s + steps * step_s + 0.13


async def test_the_output_frame_is_drawn_while_the_sampler_runs() -> None:
    """Encoding a large frame takes the simulator's CPU, not the simulated GPU's time: the
    frame is ready when the last step ends, so the render is not that much longer."""
    steps, step_s = 5, 0.1
    graph = sd_tiny()
    graph["5"]["inputs"].update(width=3840, height=2160)
    begin = time.perf_counter()
    render_frame(FrameSpec(3840, 2160, "a lighthouse on a cliff at sunset, 16:9", 42))
    encode_s = time.perf_counter() - begin
    async with (
        serve_simulator(SimulatorConfig(steps=steps, step_s=step_s)) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=10) as http,
        socket(sim, "c") as ws,
    ):
        prompt_id = await submit(http, graph, "c")
        messages = await messages_until_done(ws, prompt_id)
        [saved] = [m["data"]["output"]["images"][0] for m in messages if m["type"] == "executed"]
        view = await http.get("/view", params=saved)
        [run] = sim.runs
    assert run.status == "success"
    assert Image.open(io.BytesIO(view.content)).size == (3840, 2160)
    # Drawn after the steps it would take steps * step_s + encode_s.
    assert steps * step_s <= run.end - run.start < steps * step_s + encode_s / 2


def test_reference_thumbnails_are_drawn() -> None:
    spec = FrameSpec(640, 360, "two characters", 1, references=(_png("#00ff00"),))
    image = Image.open(io.BytesIO(render_frame(spec))).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20) or []}
    assert (0, 255, 0) in colours
    # A reference that is not an image is skipped, not fatal.
    assert render_frame(FrameSpec(64, 64, "x", 1, references=(b"not an image",)))


def test_simulator_thread_serves_sync_callers() -> None:
    with SimulatorThread(SimulatorConfig(steps=1, step_s=0.0)) as thread:
        response = httpx.get(f"{thread.url}/system_stats", timeout=5)
        assert response.status_code == 200
        assert thread.ws_url.startswith("ws://127.0.0.1:")
        assert thread.sim.runs == []
        url = thread.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/system_stats", timeout=5)


def test_command_is_registered_with_its_options() -> None:
    args = build_parser().parse_args(
        ["simulate-comfyui", "--port", "0", "--steps", "2", "--step-seconds", "0.1"]
    )
    assert (args.port, args.steps, args.step_seconds, args.host) == (0, 2, 0.1, "127.0.0.1")
    assert callable(args.handler)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="steps"):
        SimulatorConfig(steps=0)
    with pytest.raises(ValueError, match="step_s"):
        SimulatorConfig(step_s=-1)

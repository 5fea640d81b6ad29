"""Scenario 1: the demo storyboard through `storyboard render` on a real ComfyUI."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from storyboard.files import stamp
from storyboard.image import jpeg_comment
from tests.support.real import ComfyUI, graph_in, storyboard, storyboard_env

WATERCOLOR = "storyboard_watercolor_v1.safetensors"
NOIR = "storyboard_noir_v1.safetensors"
# The demo's sentences: how many chained references (one per character) and which LoRA
# (a character's own wins over the project's).
EXPECTED = {
    "s01": (1, WATERCOLOR),
    "s02": (2, WATERCOLOR),
    "s03": (2, WATERCOLOR),
    "s04": (0, WATERCOLOR),
    "s05": (1, NOIR),
    "s06": (1, WATERCOLOR),
    "s07": (2, WATERCOLOR),
    "s08": (3, NOIR),
}


def references(graph: dict[str, dict[str, object]]) -> int:
    return sum(1 for node in graph.values() if node["class_type"] == "ReferenceLatent")


def lora_of(graph: dict[str, dict[str, object]]) -> str | None:
    names = [
        node["inputs"]["lora_name"]  # type: ignore[index]
        for node in graph.values()
        if node["class_type"] == "LoraLoaderModelOnly"
    ]
    return names[0] if len(names) == 1 else None


def test_the_demo_storyboard_renders_on_a_real_comfyui(
    shared_comfyui: ComfyUI,
    prefect_server: dict[str, str],
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    env = storyboard_env(prefect_server, tmp_path / "data", shared_comfyui.url)
    assert storyboard("seed-demo", env=env).returncode == 0

    run = storyboard("render", "lighthouse", env=env)

    assert run.returncode == 0, run.output
    assert "8 completed" in run.output, run.output
    images = tmp_path / "data" / "projects" / "lighthouse" / "images"
    for sentence, (chained, lora) in EXPECTED.items():
        picture = images / f"{sentence}.png"
        with Image.open(picture) as image:
            assert image.size == (256, 144), sentence
        graph = graph_in(picture)
        assert references(graph) == chained, sentence
        assert lora_of(graph) == lora, sentence
        crops = [n for n in graph.values() if str(n["class_type"]).startswith("ImageCrop")]
        assert [n["class_type"] for n in crops] == ["ImageCropV2"], sentence
        # Its thumbnail, from the real server's /view?preview=jpeg: of this very file.
        thumb = (images.parent / "thumbs" / f"{sentence}.jpg").read_bytes()
        assert jpeg_comment(thumb) == stamp(os.stat(picture)), sentence
    log = shared_comfyui.log_text()
    assert "lora key not loaded" not in log
    assert " missing" not in log.lower().replace("missing_node_type", "")
    figure(f"demo: 8/8 completed in {run.seconds:.1f} s (0-3 chained references, both LoRAs)")


def test_a_stored_picture_reopens_in_comfyui(
    shared_comfyui: ComfyUI, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    """The graph under `prompt` in a stored picture is one the real server accepts and runs."""
    env = storyboard_env(prefect_server, tmp_path / "data", shared_comfyui.url)
    assert storyboard("seed-demo", env=env).returncode == 0
    run = storyboard("render", "lighthouse", "--limit", "1", env=env)
    assert run.returncode == 0, run.output
    pictures = sorted((tmp_path / "data" / "projects" / "lighthouse" / "images").glob("*.png"))
    assert pictures, run.output
    graph = graph_in(pictures[0])

    prompt_id = str(uuid.uuid4())
    posted = shared_comfyui.post("/prompt", {"prompt": graph, "prompt_id": prompt_id})

    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 120
    entry: dict[str, object] = {}
    while not entry and time.monotonic() < deadline:
        entry = shared_comfyui.get(f"/history/{prompt_id}").get(prompt_id, {})
        time.sleep(0.2)
    assert entry, "the re-posted graph did not finish"
    assert entry["status"]["status_str"] == "success", entry["status"]  # type: ignore[index]

"""Scenario 5: what the server lacks is refused before anything is queued; what it cannot
load fails the attempt once with the server's own message."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from storyboard.store import Store
from tests.support.real import REPO, ComfyUI, history, jobs, storyboard, storyboard_env

FLUX = REPO / "workflows" / "image" / "flux-2.json"


def workflow_with_model(tmp_path: Path, unet_name: str) -> Path:
    graph = json.loads(FLUX.read_text())
    loaders = [node for node in graph.values() if node["class_type"] == "UNETLoader"]
    assert len(loaders) == 1
    loaders[0]["inputs"]["unet_name"] = unet_name
    path = tmp_path / "flux-2-edited.json"
    path.write_text(json.dumps(graph))
    return path


def test_a_lora_the_server_lacks_is_refused_before_anything_is_queued(
    shared_comfyui: ComfyUI, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = storyboard_env(prefect_server, data, shared_comfyui.url)
    assert storyboard("seed-demo", env=env).returncode == 0
    store = Store(data / "storyboard.duckdb")
    store.update_sentence("lighthouse", "s01", lora_name="storyboard_missing_v1.safetensors")
    before = set(history(shared_comfyui))

    run = storyboard("render", "lighthouse", "--limit", "2", env=env)

    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output
    refused = [row for row in jobs(data) if row["sentence_id"] == "s01"]
    assert [row["status"] for row in refused] == ["failed"], refused
    assert refused[0]["prompt_id"] is None
    error = refused[0]["error"]
    assert "storyboard_missing_v1.safetensors" in error
    assert "storyboard_noir_v1.safetensors" in error  # what the server has
    assert "storyboard_watercolor_v1.safetensors" in error
    new = set(history(shared_comfyui)) - before
    assert len(new) == 1, "only s02 reached the server"


def test_a_model_file_the_server_lacks_stops_the_batch_before_anything_is_queued(
    shared_comfyui: ComfyUI, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    workflow = workflow_with_model(tmp_path, "flux2_missing.safetensors")
    env = storyboard_env(
        prefect_server, data, shared_comfyui.url, STORYBOARD_WORKFLOW=str(workflow)
    )
    assert storyboard("seed-demo", env=env).returncode == 0
    before = set(history(shared_comfyui))

    run = storyboard("render", "lighthouse", env=env)

    assert run.returncode != 0, run.output
    assert "Traceback" not in run.output, run.output
    assert "flux2_missing.safetensors" in run.output
    assert "flux2_dev_fp8mixed.safetensors" in run.output, run.output  # what it has
    assert set(history(shared_comfyui)) == before


def test_a_model_file_the_server_cannot_load_fails_once_with_its_message(
    shared_comfyui: ComfyUI,
    prefect_server: dict[str, str],
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    data = tmp_path / "data"
    workflow = workflow_with_model(tmp_path, "broken.safetensors")
    env = storyboard_env(
        prefect_server,
        data,
        shared_comfyui.url,
        STORYBOARD_WORKFLOW=str(workflow),
        STORYBOARD_ATTEMPTS="3",
    )
    assert storyboard("seed-demo", env=env).returncode == 0
    before = set(history(shared_comfyui))

    run = storyboard("render", "lighthouse", "--limit", "1", env=env)

    assert run.returncode == 1, run.output
    assert "Traceback" not in run.output, run.output
    rows = jobs(data)
    assert [(row["sentence_id"], row["status"], row["attempt"]) for row in rows] == [
        ("s01", "failed", 1)
    ]
    new = set(history(shared_comfyui)) - before
    assert len(new) == 1, "one prompt, not one per attempt"
    (prompt_id,) = new
    messages = dict(history(shared_comfyui)[prompt_id]["status"]["messages"])
    server_says = messages["execution_error"]["exception_message"].strip()
    assert messages["execution_error"]["node_type"] == "UNETLoader"
    assert server_says.splitlines()[0] in rows[0]["error"]
    figure(f"broken model: failed once (1 prompt, 1 attempt of 3): {server_says[:60]!r}")

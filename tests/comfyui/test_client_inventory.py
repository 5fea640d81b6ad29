"""What a lane has, from its /object_info: the routing questions of a mixed farm.

Against the captured /object_info of a real server, and one copy with other files (a
second GPU with other models); the lane session reads a server's answer once.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from storyboard.comfyui.inventory import Missing, has, missing, offers
from storyboard.comfyui.objectinfo import choices
from storyboard.lane import Lane, LaneSession
from storyboard.simulator import SimulatorConfig, SimulatorThread
from tests.support.captures import object_info
from tests.support.clients import graph

LORA = "tiny_sd15_lora.safetensors"


def _other_server() -> dict[str, Any]:
    """The captured server with another checkpoint and no LoRA (classic COMBO encoding)."""
    info = copy.deepcopy(object_info())
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] = [["flux2_dev.safetensors"]]
    for loader in ("LoraLoaderModelOnly", "LoraLoader"):
        info[loader]["input"]["required"]["lora_name"] = ["COMBO", {"options": []}]
    return info


def test_choices_read_either_combo_encoding_and_nothing_else() -> None:
    info = _other_server()
    assert choices(info, "CheckpointLoaderSimple", "ckpt_name") == ["flux2_dev.safetensors"]
    assert choices(info, "LoraLoaderModelOnly", "lora_name") == []
    assert choices(info, "KSampler", "steps") == []  # an INT, not a COMBO
    assert choices(info, "NoSuchNode", "x") == []
    assert LORA in choices(object_info(), "LoraLoaderModelOnly", "lora_name")


def test_has_answers_per_server() -> None:
    assert has(object_info(), "LoraLoaderModelOnly", "lora_name", LORA)
    assert not has(_other_server(), "LoraLoaderModelOnly", "lora_name", LORA)


def test_a_graph_misses_nothing_on_the_server_that_has_its_models() -> None:
    assert missing(graph(lora=LORA), object_info()) == []


def test_a_graph_misses_the_model_and_the_lora_another_server_lacks() -> None:
    lacking = missing(graph(lora=LORA), _other_server())
    assert sorted(map(str, lacking)) == [
        "ckpt_name 'tiny_sd15_random.safetensors' (CheckpointLoaderSimple)",
        f"lora_name '{LORA}' (LoraLoaderModelOnly)",
    ]


def test_a_reference_image_not_yet_uploaded_is_not_missing() -> None:
    g = graph()
    g["20"] = {"class_type": "LoadImage", "inputs": {"image": "storyboard/ref-abc.png"}}
    g["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["4", 2]}}
    g["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["4", 2]}}
    g["23"] = {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "r"}}
    assert missing(g, object_info()) == []


def test_a_node_class_the_server_lacks_is_missing() -> None:
    g = graph()
    g["30"] = {"class_type": "SuperUpscaler", "inputs": {}}
    assert missing(g, object_info()) == [Missing("30", "SuperUpscaler", None, "SuperUpscaler")]
    assert str(missing(g, object_info())[0]) == "node 'SuperUpscaler' (not installed)"


def test_offers_lists_each_kind_of_file_a_server_has() -> None:
    found = offers(object_info())
    assert found["checkpoint"] == ["garbage.safetensors", "tiny_sd15_random.safetensors"]
    assert LORA in found["LoRA"]
    assert offers(_other_server())["LoRA"] == []
    assert "checkpoint" not in offers({})  # a server without that loader has no such kind


@pytest.fixture
def server() -> Any:
    with SimulatorThread(SimulatorConfig(steps=1, step_s=0.001)) as thread:
        yield thread


def test_a_lane_session_reads_object_info_once(server: SimulatorThread) -> None:
    with LaneSession(Lane("test", server.url, server.ws_url), request_timeout_s=5) as session:
        first = session.object_info()
        assert session.object_info() is first
        assert missing(graph(lora=LORA), first) == []

"""The captured ComfyUI facts as test data: the sd_tiny graph and the graphs behind errors.json.

Each error case of `errors.json` is rebuilt here as the graph that produced it on
the real server, so the simulator and the validator can be checked against the
captured 400 bodies.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"

# Model names the captured server had; the simulator must know them to reproduce the captures.
CAPTURED_MODELS = {
    "checkpoints": ["garbage.safetensors", "tiny_sd15_random.safetensors"],
    "loras": ["tiny_sd15_lora.safetensors"],
}


def load_json(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def object_info() -> dict[str, Any]:
    data: dict[str, Any] = load_json("object_info.subset.json")
    return data


def sd_tiny() -> dict[str, Any]:
    graph: dict[str, Any] = load_json("sd_tiny_api.json")
    return graph


def ws_trace_types() -> list[str]:
    lines = (FIXTURES / "ws_trace.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r["msg"]["type"] for r in records if r.get("dir") == "ws" and "msg" in r]


def error_graph(case: str) -> dict[str, Any]:
    """The sd_tiny graph altered the way it was for the captured error `case`."""
    graph = copy.deepcopy(sd_tiny())
    if case == "unknown_class_type":
        graph["3"]["class_type"] = "KSamplerDoesNotExist"
    elif case == "ckpt_name_not_in_list":
        graph["4"]["inputs"]["ckpt_name"] = "no_such_model.safetensors"
    elif case == "lora_name_not_in_list":
        graph["10"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {
                "model": ["4", 0],
                "lora_name": "no_such_lora.safetensors",
                "strength_model": 1.0,
            },
        }
        graph["3"]["inputs"]["model"] = ["10", 0]
    elif case == "required_input_missing":
        del graph["6"]["inputs"]["text"]
    elif case == "value_smaller_than_min":
        graph["5"]["inputs"]["width"] = 8
    elif case == "value_bigger_than_max":
        graph["3"]["inputs"]["steps"] = 100000
    elif case == "invalid_input_type":
        graph["3"]["inputs"]["steps"] = "two"
    elif case == "return_type_mismatch":
        graph["3"]["inputs"]["model"] = ["4", 1]
    elif case == "no_outputs":
        del graph["9"]
    else:
        raise KeyError(case)
    return graph


NODE_ERROR_CASES = [
    "ckpt_name_not_in_list",
    "lora_name_not_in_list",
    "required_input_missing",
    "value_smaller_than_min",
    "value_bigger_than_max",
    "invalid_input_type",
    "return_type_mismatch",
]


def captured_error(case: str) -> dict[str, Any]:
    body: dict[str, Any] = load_json("errors.json")[case]["body"]
    return body

"""The captured ComfyUI facts as test data: the sd_tiny graph and the graphs behind errors.json.

Each error case of `errors.json` is rebuilt here as the graph that produced it on
the real server, so the simulator and the validator can be checked against the
captured 400 bodies. The WebSocket traces come in two record layouts (`msg` /
`binary` records, and flat `type` / `ws-bin` records); `trace_frames` reads both
into one normalised form that `normalise_frame` also gives the simulator's frames.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from typing import Any

from tests.support.paths import FIXTURES

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


TRACES = [
    "ws_trace.jsonl",
    "ws_trace_preview_metadata.jsonl",
    "ws_trace_partly_cached.jsonl",
    "ws_trace_previews_flags.jsonl",
]

_COUNTER = re.compile(r"_\d{5,}_\.")


def _anonymous(value: Any) -> Any:
    """Without what differs between any two runs: ids, timestamps, file counters."""
    if isinstance(value, dict):
        return {
            key: "<id>" if key in ("prompt_id", "sid") else _anonymous(item)
            for key, item in value.items()
            if key != "timestamp"
        }
    if isinstance(value, list):
        return [_anonymous(item) for item in value]
    if isinstance(value, str):
        return _COUNTER.sub("_#_.", value)
    return value


def _frame(kind: str, data: Any) -> str:
    # json.dumps keeps 1 and 1.0 apart, which == would not.
    return json.dumps({"type": kind, "data": _anonymous(data)}, sort_keys=True)


def trace_frames(name: str) -> list[str]:
    """Every WebSocket frame of a captured trace, normalised (HTTP records left out)."""
    frames = []
    for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("dir") == "ws" and "msg" in record:
            frames.append(_frame(record["msg"]["type"], record["msg"]["data"]))
        elif record.get("dir") == "ws" and "binary" in record:
            binary = record["binary"]
            detail = binary.get("metadata", binary.get("image_format"))
            frames.append(_frame(f"binary-{binary['binary_event']}", detail))
        elif record.get("dir") == "ws":
            frames.append(_frame(record["type"], record["data"]))
        elif record.get("dir") == "ws-bin":
            frames.append(_frame(f"binary-{record['event']}", record["metadata"]))
    return frames


def normalise_frame(raw: str | bytes) -> str:
    """A frame the simulator sent, in the form of `trace_frames`."""
    if isinstance(raw, str):
        message = json.loads(raw)
        return _frame(message["type"], message["data"])
    event, detail = struct.unpack(">II", raw[:8])
    if event == 4:
        return _frame("binary-4", json.loads(raw[8 : 8 + detail]))
    return _frame(f"binary-{event}", detail)


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

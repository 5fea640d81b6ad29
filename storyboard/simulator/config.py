"""What a simulated ComfyUI server knows and how fast it pretends to be."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# The FLUX.2 [dev] files of the official template, the style LoRAs the demo uses,
# and the files the captured server had (so the captured 400 bodies reproduce).
DEFAULT_MODELS: dict[str, list[str]] = {
    "checkpoints": ["garbage.safetensors", "tiny_sd15_random.safetensors"],
    "diffusion_models": ["flux2_dev_fp8mixed.safetensors"],
    "text_encoders": ["mistral_3_small_flux2_bf16.safetensors"],
    "vae": ["flux2-vae.safetensors"],
    "loras": [
        "storyboard_noir_v1.safetensors",
        "storyboard_watercolor_v1.safetensors",
        "tiny_sd15_lora.safetensors",
    ],
}

# Which COMBO input lists the files of which model folder.
MODEL_INPUTS: dict[str, list[tuple[str, str]]] = {
    "checkpoints": [("CheckpointLoaderSimple", "ckpt_name")],
    "diffusion_models": [("UNETLoader", "unet_name")],
    "text_encoders": [("CLIPLoader", "clip_name")],
    "vae": [("VAELoader", "vae_name")],
    "loras": [("LoraLoader", "lora_name"), ("LoraLoaderModelOnly", "lora_name")],
}

# Choices ComfyUI lists beside the files of a folder (captured: VAELoader offers pixel_space).
VIRTUAL_CHOICES: dict[tuple[str, str], list[str]] = {("VAELoader", "vae_name"): ["pixel_space"]}

# Model files a real server fails to load at execution time, per loader input, with the
# exception message it sent (captured: a checkpoint; the real tier's random-bytes UNet).
BROKEN_MODELS: dict[str, dict[str, dict[str, str]]] = {
    "CheckpointLoaderSimple": {
        "ckpt_name": {"garbage.safetensors": "Error while deserializing header: header too large\n"}
    },
    "UNETLoader": {
        "unet_name": {
            "broken.safetensors": "Error while deserializing header: invalid JSON in header: "
            "key must be a string at line 1 column 2\n"
        }
    },
}


@dataclass
class SimulatorConfig:
    """Settings of one simulator instance.

    `steps` overrides the sampler's step count (None, the default: the graph's own,
    as a real server reports it); `step_s` is the time one sampler step takes.
    `preview_format` is the image format of type-1 previews ("JPEG", ComfyUI's
    default, or "PNG"). `output_dir` and `input_dir` default to a temporary
    directory removed when the simulator closes.

    What a GPU server pays to warm up (see `warm`): `load_s` for the first prompt
    after start or restart (or other model files), `lora_switch_s` when the style
    LoRAs differ from the previous prompt's, `reference_s` per reference image the
    previous prompt did not encode; each run's share is in its RunRecord.

    `header_log` is how many requests' headers (HTTP and WebSocket handshakes)
    `seen_headers` keeps, newest last (0: none). `require_headers` models an
    authenticating proxy: a request without every one of these headers (name
    case-insensitive, value exact) gets 401 and never reaches ComfyUI.

    `without_nodes` are node classes this server does not have, e.g. `("ImageCropV2",)`
    for a ComfyUI older than 0.25: /object_info leaves them out and a prompt using one
    is refused as `missing_node_type`.
    """

    steps: int | None = None
    step_s: float = 0.01
    preview_format: str = "JPEG"
    models: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_MODELS))
    output_dir: Path | None = None
    input_dir: Path | None = None
    load_s: float = 0.0
    lora_switch_s: float = 0.0
    reference_s: float = 0.0
    header_log: int = 256
    require_headers: dict[str, str] | None = None
    without_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.step_s < 0:
            raise ValueError(f"step_s must not be negative, got {self.step_s}")
        if self.preview_format not in ("JPEG", "PNG"):
            raise ValueError(f"preview_format must be JPEG or PNG, got {self.preview_format!r}")
        for name in ("load_s", "lora_switch_s", "reference_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.header_log < 0:
            raise ValueError(f"header_log must not be negative, got {self.header_log}")


def base_object_info() -> dict[str, Any]:
    """The captured /object_info shipped with the package (a fresh copy)."""
    text = resources.files("storyboard.simulator").joinpath("object_info.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def object_info_with(
    base: dict[str, Any], models: dict[str, list[str]], input_files: list[str]
) -> dict[str, Any]:
    """`base` with every model COMBO listing `models` and LoadImage listing `input_files`."""
    info = copy.deepcopy(base)
    targets = [(folder, pair) for folder, pairs in MODEL_INPUTS.items() for pair in pairs]
    targets.append(("__input__", ("LoadImage", "image")))
    for folder, (class_type, input_name) in targets:
        spec = info.get(class_type, {}).get("input", {}).get("required", {}).get(input_name)
        if not isinstance(spec, list) or not spec:
            continue
        names = input_files if folder == "__input__" else models.get(folder, [])
        names = sorted(names) + VIRTUAL_CHOICES.get((class_type, input_name), [])
        if spec[0] == "COMBO":
            spec[1]["options"] = names
        else:
            spec[0] = names
    return info

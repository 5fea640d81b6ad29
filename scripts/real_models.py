"""Tiny random-weight FLUX.2 model files that a real ComfyUI loads and runs on a CPU.

Run with the real server's own Python (it needs torch and safetensors, which the project
does not install): `python scripts/real_models.py MODELS_DIR`. It writes, under the names
`workflows/image/flux-2.json` and the demo storyboard ask for:

    diffusion_models/flux2_dev_fp8mixed.safetensors    FLUX.2 transformer, hidden 256
    text_encoders/mistral_3_small_flux2_bf16.safetensors  a CLIP-L text model
    vae/flux2-vae.safetensors                          FLUX.2 VAE (batch-norm latent)
    loras/storyboard_{noir,watercolor}_v1.safetensors  rank-4 LoRAs of the transformer
    diffusion_models/broken.safetensors                not a model: a loader must fail

ComfyUI tells a model's kind from the keys and shapes in the file, so the layout below
follows what ComfyUI 0.25 detects (see the notes on each builder). Every weight is
written: ComfyUI's layers skip initialisation, so a tensor left out would be whatever
memory held. A file already there with the same content stamp is kept.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

Shapes = dict[str, tuple[int, ...]]

HIDDEN = 256  # a multiple of 128: ComfyUI derives the heads as hidden / 128
CONTEXT = 768  # the CLIP-L width FLUX.2 pads the conditioning to
DOUBLE_BLOCKS = 2
SINGLE_BLOCKS = 2
LATENT = 128  # FLUX.2's latent channels after the VAE's 2x2 patchify
MLP = 3 * HIDDEN  # mlp_ratio 3, SiLU-gated: the first projection is twice this
LORA_RANK = 4
SEED = 20261206

LORAS = ("storyboard_noir_v1.safetensors", "storyboard_watercolor_v1.safetensors")


def transformer() -> Shapes:
    """FLUX.2: `double_stream_modulation_img` marks it, no biases, guidance embedding."""
    h = HIDDEN
    shapes: Shapes = {
        "img_in.weight": (h, LATENT),
        "txt_in.weight": (h, CONTEXT),
        "time_in.in_layer.weight": (h, 256),
        "time_in.out_layer.weight": (h, h),
        "guidance_in.in_layer.weight": (h, 256),
        "guidance_in.out_layer.weight": (h, h),
        "double_stream_modulation_img.lin.weight": (6 * h, h),
        "double_stream_modulation_txt.lin.weight": (6 * h, h),
        "single_stream_modulation.lin.weight": (3 * h, h),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
        "final_layer.linear.weight": (LATENT, h),
    }
    for n in range(DOUBLE_BLOCKS):
        for stream in ("img", "txt"):
            block = f"double_blocks.{n}.{stream}"
            shapes[f"{block}_attn.qkv.weight"] = (3 * h, h)
            shapes[f"{block}_attn.proj.weight"] = (h, h)
            shapes[f"{block}_attn.norm.query_norm.weight"] = (128,)
            shapes[f"{block}_attn.norm.key_norm.weight"] = (128,)
            shapes[f"{block}_mlp.0.weight"] = (2 * MLP, h)
            shapes[f"{block}_mlp.2.weight"] = (h, MLP)
    for n in range(SINGLE_BLOCKS):
        block = f"single_blocks.{n}"
        shapes[f"{block}.linear1.weight"] = (3 * h + 2 * MLP, h)
        shapes[f"{block}.linear2.weight"] = (h, h + MLP)
        shapes[f"{block}.norm.query_norm.weight"] = (128,)
        shapes[f"{block}.norm.key_norm.weight"] = (128,)
    return shapes


def text_encoder() -> Shapes:
    """CLIP-L (12 layers, width 768): `CLIPLoader(type=flux2)` takes it as an SD1 CLIP."""
    width, layers, inner = 768, 12, 3072
    prefix = "text_model"
    shapes: Shapes = {
        f"{prefix}.embeddings.token_embedding.weight": (49408, width),
        f"{prefix}.embeddings.position_embedding.weight": (77, width),
        f"{prefix}.final_layer_norm.weight": (width,),
        f"{prefix}.final_layer_norm.bias": (width,),
        "text_projection.weight": (width, width),
    }
    for n in range(layers):
        layer = f"{prefix}.encoder.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}.weight"] = (width, width)
            shapes[f"{layer}.self_attn.{proj}.bias"] = (width,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}.{norm}.weight"] = (width,)
            shapes[f"{layer}.{norm}.bias"] = (width,)
        shapes[f"{layer}.mlp.fc1.weight"] = (inner, width)
        shapes[f"{layer}.mlp.fc1.bias"] = (inner,)
        shapes[f"{layer}.mlp.fc2.weight"] = (width, inner)
        shapes[f"{layer}.mlp.fc2.bias"] = (width,)
    return shapes


def _conv(shapes: Shapes, name: str, out: int, inp: int, kernel: int) -> None:
    shapes[f"{name}.weight"] = (out, inp, kernel, kernel)
    shapes[f"{name}.bias"] = (out,)


def _norm(shapes: Shapes, name: str, width: int) -> None:
    shapes[f"{name}.weight"] = (width,)
    shapes[f"{name}.bias"] = (width,)


def _resnet(shapes: Shapes, name: str, inp: int, out: int) -> None:
    _norm(shapes, f"{name}.norm1", inp)
    _conv(shapes, f"{name}.conv1", out, inp, 3)
    _norm(shapes, f"{name}.norm2", out)
    _conv(shapes, f"{name}.conv2", out, out, 3)
    if inp != out:
        _conv(shapes, f"{name}.nin_shortcut", out, inp, 1)


def _middle(shapes: Shapes, name: str, width: int) -> None:
    _resnet(shapes, f"{name}.block_1", width, width)
    _norm(shapes, f"{name}.attn_1.norm", width)
    for part in ("q", "k", "v", "proj_out"):
        _conv(shapes, f"{name}.attn_1.{part}", width, width, 1)
    _resnet(shapes, f"{name}.block_2", width, width)


def vae() -> Shapes:
    """FLUX.2 VAE: `bn.*` switches on the batch-norm latent (2x2 patchify, 16x downscale).

    ComfyUI fixes the encoder at the SD size (width 128, multipliers 1,2,4,4, two blocks a
    level, 32 latent channels doubled for mean and variance) and reads the decoder's width
    from `decoder.conv_in.weight`: 128 out / multiplier 4 = 32, GroupNorm's smallest.
    """
    mult = (1, 2, 4, 4)
    z = 32
    shapes: Shapes = {}
    ch = 128
    _conv(shapes, "encoder.conv_in", ch, 3, 3)
    width = ch
    for level, m in enumerate(mult):
        out = ch * m
        for block in range(2):
            _resnet(shapes, f"encoder.down.{level}.block.{block}", width, out)
            width = out
        if level != len(mult) - 1:
            _conv(shapes, f"encoder.down.{level}.downsample.conv", width, width, 3)
    _middle(shapes, "encoder.mid", width)
    _norm(shapes, "encoder.norm_out", width)
    _conv(shapes, "encoder.conv_out", 2 * z, width, 3)

    ch = 32
    width = ch * mult[-1]
    _conv(shapes, "decoder.conv_in", width, z, 3)
    _middle(shapes, "decoder.mid", width)
    for level in reversed(range(len(mult))):
        out = ch * mult[level]
        for block in range(3):
            _resnet(shapes, f"decoder.up.{level}.block.{block}", width, out)
            width = out
        if level != 0:
            _conv(shapes, f"decoder.up.{level}.upsample.conv", width, width, 3)
    _norm(shapes, "decoder.norm_out", width)
    _conv(shapes, "decoder.conv_out", 3, width, 3)

    _conv(shapes, "quant_conv", 2 * z, 2 * z, 1)
    _conv(shapes, "post_quant_conv", z, z, 1)
    shapes["bn.running_mean"] = (4 * z,)
    shapes["bn.running_var"] = (4 * z,)
    shapes["bn.num_batches_tracked"] = ()
    return shapes


def lora(base: Shapes) -> Shapes:
    """A LoRA over a few transformer matrices, under the keys LoraLoaderModelOnly maps."""
    shapes: Shapes = {}
    for module in ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "final_layer.linear"):
        out, inp = base[f"{module}.weight"]
        key = f"diffusion_model.{module}"
        shapes[f"{key}.lora_down.weight"] = (LORA_RANK, inp)
        shapes[f"{key}.lora_up.weight"] = (out, LORA_RANK)
        shapes[f"{key}.alpha"] = ()
    return shapes


def tensors(
    shapes: Shapes, generator: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Normal(0, 0.02) matrices, norm weights 1, biases 0: a model that runs without NaNs."""
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.int64)
        elif name.endswith(".alpha"):
            out[name] = torch.tensor(float(LORA_RANK), dtype=dtype)
        elif name.endswith("running_var"):
            out[name] = torch.ones(shape, dtype=dtype)
        elif name.endswith(("bias", "running_mean")):
            out[name] = torch.zeros(shape, dtype=dtype)
        elif len(shape) == 1:  # LayerNorm, GroupNorm and RMSNorm scales
            out[name] = torch.ones(shape, dtype=dtype)
        else:
            out[name] = (torch.randn(shape, generator=generator) * 0.02).to(dtype)
    return out


def files() -> Iterator[tuple[str, Shapes, torch.dtype]]:
    base = transformer()
    yield "diffusion_models/flux2_dev_fp8mixed.safetensors", base, torch.bfloat16
    yield "text_encoders/mistral_3_small_flux2_bf16.safetensors", text_encoder(), torch.float16
    yield "vae/flux2-vae.safetensors", vae(), torch.float16
    for name in LORAS:
        yield f"loras/{name}", lora(base), torch.bfloat16


def stamp(shapes: Shapes, dtype: torch.dtype, seed: int) -> str:
    text = json.dumps({"shapes": shapes, "dtype": str(dtype), "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write(models: Path) -> list[Path]:
    """Write every file whose stamp differs; the paths written."""
    written = []
    for number, (relative, shapes, dtype) in enumerate(files()):
        target = models / relative
        seed = SEED + number  # each LoRA its own weights, so the two styles differ
        mark = stamp(shapes, dtype, seed)
        marker = target.with_name(target.name + ".stamp")
        if target.exists() and marker.exists() and marker.read_text() == mark:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(seed)
        partial = target.with_name(target.name + ".partial")
        save_file(tensors(shapes, generator, dtype), str(partial))
        partial.replace(target)
        marker.write_text(mark)
        written.append(target)
    broken = models / "diffusion_models" / "broken.safetensors"
    if not broken.exists():
        broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")  # a header that lies
        written.append(broken)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/real_models.py MODELS_DIR", file=sys.stderr)
        return 2
    for path in write(Path(argv[0])):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

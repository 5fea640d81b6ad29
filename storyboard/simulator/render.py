"""The placeholder picture a simulated run produces.

A storyboard frame a person can recognise in a demo: a colour field chosen by
the seed, the prompt text, thumbnails of the reference images and the LoRA
name, under a red banner across the top that says SIMULATED, so nobody takes
it (or a contact sheet or a UI thumbnail of it) for a real render. The banner
is a tenth of the height, so it survives a crop to 16:9. The same prompt, seed
and references always give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import textwrap
import zlib
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError


@dataclass(frozen=True)
class FrameSpec:
    width: int
    height: int
    prompt: str
    seed: int
    loras: tuple[str, ...] = ()
    references: tuple[bytes, ...] = field(default=(), repr=False)


STAMP = "SIMULATED"
STAMP_FILL = (200, 16, 32)


def stamp_height(height: int) -> int:
    """Rows the SIMULATED banner takes at the top of a frame `height` pixels tall."""
    return max(12, height // 10)


def _stamp(canvas: Image.Image, draw: ImageDraw.ImageDraw) -> int:
    band = stamp_height(canvas.height)
    draw.rectangle((0, 0, canvas.width - 1, band - 1), fill=STAMP_FILL)
    size = max(6, band * 7 // 10)
    font = ImageFont.load_default(size=size)
    # A preview frame is narrow: the word shrinks to fit rather than run off the edge.
    while size > 6 and draw.textlength(STAMP, font=font) > 0.9 * canvas.width:
        size -= 1
        font = ImageFont.load_default(size=size)
    draw.text((canvas.width // 2, band // 2), STAMP, fill="white", font=font, anchor="mm")
    return band


def _colours(seed: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    digest = hashlib.sha256(str(seed).encode()).digest()
    top = (digest[0], digest[1], digest[2])
    # The bottom colour is a darker shade so white text stays readable.
    bottom = (digest[3] // 3, digest[4] // 3, digest[5] // 3)
    return top, bottom


@functools.lru_cache(maxsize=16)
def _thumbnail(data: bytes, size: int) -> Image.Image | None:
    # Cached: a storyboard reuses the same few character references frame after frame.
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))
            factor = max(1, min(image.size) // (2 * size))
            small = image.convert("RGB").reduce(factor)
            return ImageOps.fit(small, (size, size))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def render_frame(spec: FrameSpec) -> bytes:
    """A PNG of exactly `spec.width` x `spec.height` pixels."""
    top, bottom = _colours(spec.seed)
    # Blend one pixel column, then stretch it: a full-size blend costs several times more.
    mask = Image.linear_gradient("L").resize((1, spec.height))
    column = Image.composite(
        Image.new("RGB", mask.size, bottom), Image.new("RGB", mask.size, top), mask
    )
    canvas = column.resize((spec.width, spec.height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    top_band = _stamp(canvas, draw)
    margin = max(4, spec.width // 32)
    text_size = max(8, spec.height // 18)
    font = ImageFont.load_default(size=text_size)
    small = ImageFont.load_default(size=max(8, text_size * 2 // 3))
    columns = max(10, int((spec.width - 2 * margin) / (text_size * 0.55)))
    lines = textwrap.wrap(spec.prompt, width=columns)[: max(1, spec.height // (3 * text_size))]
    draw.multiline_text(
        (margin, top_band + margin),
        "\n".join(lines),
        fill="white",
        font=font,
        stroke_width=max(1, text_size // 16),
        stroke_fill="black",
    )
    footer = f"seed {spec.seed}" + "".join(f"  ·  LoRA {name}" for name in spec.loras)
    draw.text(
        (margin, spec.height - margin - text_size),
        footer,
        fill="white",
        font=small,
        stroke_width=1,
        stroke_fill="black",
    )
    thumb = max(8, spec.height // 5)
    x = spec.width - margin - thumb
    for data in spec.references:
        picture = _thumbnail(data, thumb)
        if picture is None or x < margin:
            continue
        canvas.paste(picture, (x, spec.height - 2 * margin - text_size - thumb))
        draw.rectangle(
            (
                x,
                spec.height - 2 * margin - text_size - thumb,
                x + thumb - 1,
                spec.height - 2 * margin - text_size - 1,
            ),
            outline="white",
        )
        x -= thumb + margin // 2
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def deep_output(png: bytes, mode: str) -> tuple[bytes, str]:
    """`png` in grey as a 16-bit PNG ("I;16", x257) or float TIFF ("F", /255): bytes, suffix."""
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
    out = io.BytesIO()
    if mode == "I;16":
        grey.convert("I").point(lambda v: v * 257).convert("I;16").save(out, format="PNG")
        return out.getvalue(), ".png"
    if mode == "F":
        grey.convert("F").point(lambda v: v / 255).save(out, format="TIFF")
        return out.getvalue(), ".tif"
    raise ValueError(f"unsupported output mode {mode!r}")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header claims `width`x`height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def preview(data: bytes, spec: str, channel: str = "") -> tuple[bytes, str]:
    """An output re-encoded as ComfyUI's `/view?preview=FORMAT;QUALITY` answers: JPEG or WebP
    (WebP for any other format, or when the alpha channel is asked for), quality 90 unless the
    last field is a number; bytes and media type."""
    fields = spec.split(";")
    kind = fields[0] if fields[0] in ("jpeg", "webp") and "a" not in channel else "webp"
    quality = int(fields[-1]) if fields[-1].isdigit() else 90
    with Image.open(io.BytesIO(data)) as image:
        shown = image.convert("RGB") if kind == "jpeg" or channel == "rgb" else image.copy()
    out = io.BytesIO()
    shown.save(out, format=kind, quality=quality)
    return out.getvalue(), f"image/{kind}"

"""The image room on real images: finishing (sizes, crops, bombs, truncation, wide modes,
metadata), verifying, reading text chunks, and that no other library module imports Pillow."""

from __future__ import annotations

import ast
import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from storyboard.errors import ImageBombError, ImageDecodeError, ImageSizeError, is_retryable
from storyboard.image import decodes, finish_image, picture_hash, read_text, verify_image
from storyboard.picture_info import HASH_KEY
from tests.support.paths import REPO

FRAME = (1920, 1080)
LIMIT = 64_000_000
GREEN = (0, 200, 0)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def banded(size: tuple[int, int], band: int, *, vertical: bool) -> Image.Image:
    """Green picture with a red band `band` px deep on two opposite edges."""
    image = Image.new("RGB", size, GREEN)
    w, h = size
    red = Image.new("RGB", (band, h) if vertical else (w, band), (255, 0, 0))
    image.paste(red, (0, 0))
    image.paste(red, (w - band, 0) if vertical else (0, h - band))
    return image


def finished(data: bytes, metadata: dict[str, str] | None = None) -> Image.Image:
    result = finish_image(data, frame=FRAME, metadata=metadata or {}, max_pixels=LIMIT)
    image = Image.open(io.BytesIO(result))
    image.load()
    assert image.format == "PNG"
    return image


def test_render_size_output_is_cropped_exactly() -> None:
    # 1920x1088 from the GPU: 4 rows off the top and bottom, nothing resampled.
    source = banded((1920, 1088), 4, vertical=False)
    image = finished(encode(source))
    assert image.size == FRAME and image.mode == "RGB"
    assert image.getcolors() == [(1920 * 1080, GREEN)]


@pytest.mark.parametrize(
    ("size", "band", "vertical"),
    [
        ((1024, 1024), 200, False),  # square: top and bottom trimmed, then enlarged
        ((640, 480), 40, False),  # 4:3: top and bottom trimmed
        ((2560, 1080), 300, True),  # too wide: the sides trimmed
        ((3840, 2176), 8, False),  # too big: trimmed and reduced
    ],
)
def test_wrong_sizes_are_centre_cropped_to_the_frame(
    size: tuple[int, int], band: int, vertical: bool
) -> None:
    image = finished(encode(banded(size, band, vertical=vertical)))
    assert image.size == FRAME
    # The red edges lie outside the centred 16:9 region, so none of them survive.
    for point in [(0, 0), (1919, 1079), (960, 0), (960, 1079), (0, 540), (1919, 540)]:
        r, g, _ = image.getpixel(point)  # type: ignore[misc]
        assert r < 30 and g > 170, (point, image.getpixel(point))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    source = Image.new("RGB", (320, 180), (10, 120, 240)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert finished(encode(source, fmt)).mode == "RGB"


def test_transparency_is_flattened_onto_black() -> None:
    source = Image.new("RGBA", (320, 180), (255, 255, 255, 0))
    assert finished(encode(source)).getpixel((960, 540)) == (0, 0, 0)


def test_jpeg_and_webp_inputs_are_accepted() -> None:
    source = Image.new("RGB", (1920, 1088), GREEN)
    for fmt in ("JPEG", "WEBP"):
        assert finished(encode(source, fmt)).size == FRAME


def test_metadata_is_written_and_read_back() -> None:
    metadata = {
        "storyboard:sentence": "s-001",
        "prompt": 'a "noir" street {{PROMPT}}\nsecond line 🎬',
        "seed": str(2**64 - 1),
        "workflow": "flux-2",
        "workflow_hash": "ab" * 32,
        "lora": "storyboard_noir_v1.safetensors@0.8",
        "references": "sha256:" + "cd" * 32,
    }
    image = finished(encode(Image.new("RGB", (1920, 1088))), metadata)
    assert image.text == metadata  # type: ignore[attr-defined]


def test_metadata_is_compressed_and_plain_text_is_not() -> None:
    graph_json = '{"1": {"class_type": "SaveImage", "inputs": {}}}'
    result = finish_image(
        encode(Image.new("RGB", (64, 36))),
        frame=(64, 36),
        plain_text={"prompt": graph_json},
        metadata={"storyboard:prompt": "ünïcode 🎬 " * 50, "storyboard:seed": "7" * 200},
        max_pixels=LIMIT,
    )
    kinds = chunk_types(result)
    assert kinds.count(b"tEXt") == 1  # ComfyUI's `prompt`, as its SaveImage writes it
    assert b"zTXt" in kinds and b"iTXt" in kinds  # ours: Latin-1 and beyond, compressed
    assert "ünïcode".encode() not in result  # not stored as plain text
    with Image.open(io.BytesIO(result)) as image:
        assert image.info["prompt"] == graph_json
        assert image.info["storyboard:prompt"] == "ünïcode 🎬 " * 50
        assert image.info["storyboard:seed"] == "7" * 200


def chunk_types(png: bytes) -> list[bytes]:
    kinds, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        kinds.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return kinds


@pytest.mark.parametrize(
    ("mode", "value", "fmt", "expected"),
    [
        ("I;16", 30000, "PNG", 117),  # 30000 / 65535 of the range
        ("I;16", 65535, "PNG", 255),
        ("I", 12850, "TIFF", 50),
        ("F", 0.5, "TIFF", 128),
        ("F", 1.0, "TIFF", 255),
    ],
)
def test_wide_modes_are_scaled_by_their_range_not_clipped(
    mode: str, value: float, fmt: str, expected: int
) -> None:
    data = encode(Image.new(mode, (64, 36), value), fmt)
    image = finished(data)
    assert image.mode == "RGB"
    assert image.getpixel((960, 540)) == (expected, expected, expected)


@pytest.mark.parametrize("key", ["", "k" * 80, "bad\nkey", "ключ"])
def test_invalid_metadata_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="PNG text key"):
        finish_image(
            encode(Image.new("RGB", (16, 9))), frame=FRAME, metadata={key: "v"}, max_pixels=LIMIT
        )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with almost no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused() -> None:
    with pytest.raises(ImageBombError, match="bomb"):
        finished(png_header_only(100_000, 100_000))


def test_more_pixels_than_the_limit_are_refused_before_decoding() -> None:
    # 4000x4000 is below Pillow's own limit: only our max_pixels catches it.
    with pytest.raises(ImageBombError, match="4000x4000 = 16000000 pixels") as caught:
        finish_image(png_header_only(4000, 4000), frame=FRAME, metadata={}, max_pixels=1_000_000)
    assert not is_retryable(caught.value)


def test_a_truncated_png_is_a_retryable_decode_error() -> None:
    data = encode(Image.effect_noise((640, 360), 60).convert("RGB"))
    with pytest.raises(ImageDecodeError, match="incomplete or corrupt PNG") as caught:
        finished(data[: len(data) // 2])
    assert is_retryable(caught.value)


@pytest.mark.parametrize("data", [b"", b"<html>502 Bad Gateway</html>", b"\x89PNG\r\n\x1a\n"])
def test_bytes_that_are_not_an_image_are_refused(data: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        finished(data)


def test_verify_image_checks_the_header_size_and_structure_without_decoding() -> None:
    verify_image(encode(Image.new("RGB", (64, 48))), max_pixels=10_000, size=(64, 48))
    with pytest.raises(ImageSizeError, match=r"^output is 8x8, not the 64x48") as wrong:
        verify_image(
            encode(Image.new("RGB", (8, 8))), max_pixels=10_000, size=(64, 48), what="output"
        )
    assert is_retryable(wrong.value)
    with pytest.raises(ImageBombError, match=r"^x claims 4000x4000 pixels, over the limit of 1000"):
        verify_image(png_header_only(4000, 4000), max_pixels=1000, what="x")
    with pytest.raises(ImageBombError, match="decompression bomb"):
        verify_image(png_header_only(100_000, 100_000), max_pixels=10**12)
    with pytest.raises(ImageDecodeError, match="not a complete image") as broken:
        verify_image(b"<html>502</html>", max_pixels=1000)
    assert broken.value.__cause__ is not None  # callers word their own message from it


def test_decodes_tells_a_complete_image_from_anything_else() -> None:
    data = encode(Image.effect_noise((64, 36), 60).convert("RGB"))
    assert decodes(data)
    assert not decodes(data[: len(data) // 2])
    assert not decodes(b"")
    assert not decodes(png_header_only(100_000, 100_000))


def test_read_text_and_picture_hash_read_the_header_chunks() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(HASH_KEY, "abc", zip=True)
    info.add_text("workflow_hash", "old")
    out = io.BytesIO()
    Image.new("RGB", (32, 18)).save(out, format="PNG", pnginfo=info)
    assert read_text(out.getvalue()) == {HASH_KEY: "abc", "workflow_hash": "old"}
    assert picture_hash(out.getvalue()) == "abc"
    assert picture_hash(encode(Image.new("RGB", (32, 18)))) is None
    assert read_text(b"\x89PNG\r\n\x1a\n truncated") == {}
    assert picture_hash(b"\x89PNG\r\n\x1a\n truncated") is None


def test_only_the_image_module_imports_pillow_in_the_library() -> None:
    library = REPO / "storyboard"
    importers = set()
    for path in library.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "PIL" or name.startswith("PIL.") for name in names):
                importers.add(path.relative_to(library).as_posix())
    drawing = {name for name in importers if name.startswith("simulator/")}
    assert importers - drawing == {"image.py"}


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a PNG, in order."""
    found, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        found.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return found


def idat(data: bytes) -> bytes:
    return b"".join(body for kind, body in chunks(data) if kind == b"IDAT")


def server_png(size: tuple[int, int] = FRAME, mode: str = "RGB") -> bytes:
    """What ComfyUI's SaveImage writes: its own `prompt` text chunk, fast zlib level."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"server": "graph"}')
    out = io.BytesIO()
    banded(size, 4, vertical=False).convert(mode).save(
        out, format="PNG", pnginfo=info, compress_level=1
    )
    return out.getvalue()


def test_a_frame_sized_output_only_gets_its_text_chunks_replaced() -> None:
    source = server_png()
    metadata = {HASH_KEY: "abc123", "storyboard:prompt": "Ana à la mer, 灯台"}
    result = finish_image(
        source,
        frame=FRAME,
        metadata=metadata,
        plain_text={"prompt": '{"1": {"class_type": "SaveImage"}}'},
        max_pixels=LIMIT,
    )
    # Not a pixel decoded or re-encoded: the image data is ComfyUI's, byte for byte.
    assert idat(result) == idat(source)
    kinds = [kind for kind, _ in chunks(result)]
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT") and kinds[-1] == b"IEND"
    assert {b"zTXt", b"iTXt"} <= set(kinds)  # Latin-1 compressed, and beyond Latin-1
    assert read_text(result) == {"prompt": '{"1": {"class_type": "SaveImage"}}', **metadata}
    assert picture_hash(result) == "abc123"
    verify_image(result, max_pixels=LIMIT, size=FRAME)
    with Image.open(io.BytesIO(result)) as image:
        assert image.size == FRAME and image.mode == "RGB"
        assert image.getpixel((10, 500)) == GREEN


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_a_frame_sized_output_that_is_not_8_bit_rgb_is_still_converted(mode: str) -> None:
    source = server_png(mode=mode)
    result = finish_image(source, frame=FRAME, metadata={HASH_KEY: "h"}, max_pixels=LIMIT)
    with Image.open(io.BytesIO(result)) as image:
        assert image.mode == "RGB" and image.size == FRAME
    assert picture_hash(result) == "h"


def test_a_corrupt_or_incomplete_frame_sized_png_is_a_decode_error() -> None:
    source = server_png()
    cut = source.rfind(b"IEND") - 4  # everything but the end chunk
    flipped = bytearray(source)
    flipped[source.find(b"IDAT") + 10] ^= 0xFF
    for broken in (source[:cut], bytes(flipped), source[: len(source) // 2]):
        with pytest.raises(ImageDecodeError):
            finish_image(broken, frame=FRAME, metadata={}, max_pixels=LIMIT)

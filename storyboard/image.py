"""Every picture operation, in the one library module that imports Pillow (synchronous).

    verify_image    header pixel limit, exact size and a structural check, no pixel decoded
                    (ComfyUI's output while the lane is held; a reference before upload)
    decodes         whether bytes are a complete image (doctor's check of stored pictures)
    finish_image    decode, convert (16-bit and float with their range), cover-crop to the
                    frame, encode a PNG with its text chunks; an 8-bit RGB PNG already of
                    the frame's size (cropped on the server) only gets its text chunks
                    replaced, as bytes, without decoding or re-encoding a pixel
    read_text       a PNG's text chunks, from the header
    picture_hash    the graph hash a finished picture records
    contact_sheet   thumbnails in a grid with a caption under each, or a placeholder saying
                    why there is no picture; one picture decoded at a time

What the text chunks say (keys, provenance) is storyboard.picture_info's; writing a file is
storyboard.atomic's; the size to render at is storyboard.workflow's; which pictures a contact
sheet shows is storyboard.contact_sheet's. Callers on an event loop
run these in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import io
import math
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, UnidentifiedImageError

from storyboard.errors import ImageBombError, ImageDecodeError, ImageSizeError
from storyboard.picture_info import recorded_hash

# zlib level 4: finishing a detailed 1920x1080 frame took ~0.3 s here (level 6: ~0.85 s,
# level 9: ~4.5 s) for a file only ~4% larger than level 6.
PNG_COMPRESS_LEVEL = 4
# A contact sheet is drawn after every batch and holds up to 16 Mpx (8 frames): at level 1 it
# encoded in 1.7 s here against 3.1 s at level 4, a review file where size matters less.
SHEET_COMPRESS_LEVEL = 1
_PNG_KEY = re.compile(r"[\x20-\x7e]{1,79}")
# 16-bit grey (a 16-bit PNG opens as I;16 or I) spans 0..65535; float pixels, as ComfyUI's
# tensors, 0.0..1.0.
_RANGE_TO_8_BIT = {
    "I;16": 255 / 65535,
    "I;16L": 255 / 65535,
    "I;16B": 255 / 65535,
    "I;16N": 255 / 65535,
    "I": 255 / 65535,
    "F": 255.0,
}
# Pillow raises the warning instead of warning when warnings are errors (as in the tests).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def verify_image(
    data: bytes, *, max_pixels: int, size: tuple[int, int] | None = None, what: str = "image"
) -> None:
    """Cheap check that the bytes are one complete image within the pixel limit and, when
    `size` is given, of exactly that size. `what` names the image in the messages.

    Nothing is decompressed: the pixel count and size come from the header, then Pillow's
    verify walks the structure. Raises ImageBombError over the limit, ImageSizeError for
    another size (never scaled: enlarging a thumbnail 100x is not the picture asked for) and
    ImageDecodeError (caused by Pillow's error) for anything unreadable.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageBombError(
                    f"{what} claims {width}x{height} pixels, over the limit of {max_pixels}"
                )
            if size is not None and (width, height) != size:
                raise ImageSizeError(
                    f"{what} is {width}x{height}, not the {size[0]}x{size[1]} the graph "
                    "asked for; check the workflow's size and output nodes (retried)"
                )
            image.verify()
    except _BOMB as exc:
        raise ImageBombError(
            f"{what} claims more pixels than Pillow opens, over the limit of {max_pixels}: "
            "refused as a decompression bomb"
        ) from exc
    except _UNREADABLE as exc:
        raise ImageDecodeError(f"{what} is not a complete image: {exc}") from exc


def decodes(data: bytes) -> bool:
    """True when the bytes are a complete image (structure checked, nothing decompressed)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (*_BOMB, *_UNREADABLE):
        return False
    return True


def read_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG, read from its header (no pixel is decoded); {} if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Text chunks written before the image data are in `info` without decoding.
            info = dict(image.info)
    except (*_BOMB, *_UNREADABLE):
        return {}
    return {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str)}


def picture_hash(data: bytes) -> str | None:
    """The graph hash a finished PNG records, read from its header chunks only."""
    return recorded_hash(read_text(data))


def finish_image(
    data: bytes,
    *,
    frame: tuple[int, int],
    metadata: Mapping[str, str],
    max_pixels: int,
    plain_text: Mapping[str, str] | None = None,
) -> bytes:
    """Decode `data` safely, cover-scale and centre-crop it to `frame`, return PNG bytes.

    `metadata` becomes compressed PNG text chunks (zTXt, or compressed iTXt for text beyond
    Latin-1); `plain_text` becomes uncompressed tEXt chunks, written first, for readers that
    expect them (ComfyUI's `prompt`). Keys: printable ASCII, 1-79 characters.
    Raises ImageBombError when the image claims more than `max_pixels` pixels and
    ImageDecodeError when it is not a complete image.
    """
    frame_w, frame_h = frame
    if frame_w < 1 or frame_h < 1:
        raise ValueError(f"frame size {frame_w}x{frame_h} must be positive")
    texts = [(key, value, False) for key, value in (plain_text or {}).items()]
    texts += [(key, value, True) for key, value in metadata.items()]
    for key, _, _ in texts:
        if not _PNG_KEY.fullmatch(key):
            raise ValueError(f"PNG text key {key!r} must be 1-79 printable ASCII characters")
    if _final_png(data, frame, max_pixels):
        return with_text(data, texts)

    info = PngImagePlugin.PngInfo()
    for key, value, compressed in texts:
        info.add_text(key, value, zip=compressed)
    image = _decode(data, max_pixels)
    try:
        framed = _cover(_to_rgb(image), frame_w, frame_h)
    finally:
        image.close()
    out = io.BytesIO()
    framed.save(out, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _final_png(data: bytes, frame: tuple[int, int], max_pixels: int) -> bool:
    """Whether `data` is already the finished picture: an 8-bit RGB PNG of the frame's size
    (what a graph that crops on the server returns). Only the header is read."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return (width, height) == frame and width * height <= max_pixels and (depth, colour) == (8, 2)


def with_text(data: bytes, texts: Iterable[tuple[str, str, bool]]) -> bytes:
    """The PNG `data` with its text chunks replaced by `texts` ((key, value, compressed)),
    written before the first IDAT. Pure bytes: the image data is copied untouched.

    Chunks are encoded as Pillow's `PngInfo.add_text` does, so `read_text` reads them back
    alike: tEXt / zTXt for Latin-1 text, iTXt (compressed or not) beyond it. Raises
    ImageDecodeError when the chunk structure is broken.
    """
    new = b"".join(_chunk(*_text_chunk(key, value, compressed)) for key, value, compressed in texts)
    out = [_PNG_SIGNATURE]
    pos, inserted, ended = len(_PNG_SIGNATURE), False, False
    while pos < len(data) and not ended:
        if pos + 12 > len(data):
            raise ImageDecodeError(f"PNG chunk at byte {pos} is truncated")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ImageDecodeError(f"PNG chunk {kind!r} at byte {pos} is truncated")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ImageDecodeError(f"PNG chunk {kind!r} at byte {pos} is corrupt (CRC mismatch)")
        if kind == b"IDAT" and not inserted:
            out.append(new)
            inserted = True
        if kind not in _TEXT_CHUNKS:
            out.append(data[pos:end])
        pos, ended = end, kind == b"IEND"
    if not (inserted and ended):
        raise ImageDecodeError("PNG is incomplete: no image data or no end chunk")
    return b"".join(out)


def _text_chunk(key: str, value: str, compressed: bool) -> tuple[bytes, bytes]:
    name = key.encode("latin-1")
    try:
        latin = value.encode("latin-1")
    except UnicodeEncodeError:
        text = value.encode("utf-8")
        if compressed:
            return b"iTXt", name + b"\0\x01\x00\0\0" + zlib.compress(text)
        return b"iTXt", name + b"\0\x00\x00\0\0" + text
    if compressed:
        return b"zTXt", name + b"\0\0" + zlib.compress(latin)
    return b"tEXt", name + b"\0" + latin


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageBombError(f"image refused as a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a readable image ({len(data)} bytes): {exc}") from exc
    width, height = image.size
    # Checked from the header, before any pixel is decompressed.
    if width * height > max_pixels:
        image.close()
        raise ImageBombError(
            f"image claims {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}"
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        image.close()
        raise ImageBombError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        image.close()
        raise ImageDecodeError(f"incomplete or corrupt {image.format} image: {exc}") from exc
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    scale = _RANGE_TO_8_BIT.get(image.mode)
    if scale is not None:
        # Pillow's own conversion clips these to 0..255: a 16-bit grey of 30000 would be white
        # and a float of 0.5 black. Scale the mode's range onto 8 bits instead (rounded).
        wide = image.convert("I") if image.mode.startswith("I;16") else image
        return wide.point(lambda v: v * scale + 0.5).convert("L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Flatten onto black (the letterbox colour) instead of dropping alpha blindly.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _cover(image: Image.Image, frame_w: int, frame_h: int) -> Image.Image:
    """Largest centred region with the frame's aspect, resampled to exactly the frame."""
    width, height = image.size
    if width * frame_h > height * frame_w:  # wider than the frame: trim the sides
        box_w, box_h = height * frame_w / frame_h, float(height)
    else:  # taller (or equal): trim top and bottom
        box_w, box_h = float(width), width * frame_h / frame_w
    left, top = (width - box_w) / 2, (height - box_h) / 2
    if (box_w, box_h) == (frame_w, frame_h) and left.is_integer() and top.is_integer():
        return image.crop((int(left), int(top), int(left) + frame_w, int(top) + frame_h))
    box = (left, top, left + box_w, top + box_h)
    return image.resize((frame_w, frame_h), Image.Resampling.LANCZOS, box=box)


# -- contact sheet -----------------------------------------------------------------------------

SHEET_BACKGROUND = (24, 24, 24)
MISSING_FILL = (64, 64, 64)
FAILED_FILL = (120, 24, 24)
_CAPTION_COLOUR = (220, 220, 220)
_NOTE_COLOUR = (255, 255, 255)
_FONT_SIZE = 13
_NOTE_LINES = 4


@dataclass(frozen=True)
class SheetTile:
    """One sentence on a contact sheet: its picture's bytes (or its thumbnail's), or None and a
    note saying why."""

    caption: str
    picture: bytes | None = None
    note: str = "missing"
    failed: bool = False
    # Shown the decoded picture (not to be changed) before it shrinks to its tile: whoever
    # needs another small copy of it makes one here instead of decoding the file again.
    on_decoded: Callable[[Image.Image], None] | None = None


@dataclass(frozen=True)
class SheetLayout:
    """Where each tile goes: a grid of `columns`, a caption strip under every thumbnail."""

    count: int
    columns: int
    thumb: tuple[int, int]
    margin: int = 12
    caption_h: int = 20

    @classmethod
    def fit(
        cls, count: int, *, columns: int, tile_width: int, frame: tuple[int, int], max_pixels: int
    ) -> SheetLayout:
        """Tiles `tile_width` wide (the frame's aspect), narrower when the whole sheet would
        exceed `max_pixels`: its memory is bounded however long the storyboard."""
        if columns < 1 or tile_width < 1 or frame[0] < 1 or frame[1] < 1:
            raise ValueError(
                f"a contact sheet needs columns, tile width and frame >= 1, "
                f"got {columns}, {tile_width}, {frame[0]}x{frame[1]}"
            )
        width = tile_width
        while True:
            layout = cls(count, min(columns, max(count, 1)), (width, _height(width, frame)))
            sheet_w, sheet_h = layout.size
            if sheet_w * sheet_h <= max_pixels or width <= 16:
                return layout
            width = max(16, int(width * math.sqrt(max_pixels / (sheet_w * sheet_h))) - 1)

    @property
    def rows(self) -> int:
        return max(1, math.ceil(self.count / self.columns))

    @property
    def size(self) -> tuple[int, int]:
        cell_w, cell_h = self.thumb[0] + self.margin, self.thumb[1] + self.caption_h + self.margin
        return self.margin + self.columns * cell_w, self.margin + self.rows * cell_h

    def box(self, index: int) -> tuple[int, int, int, int]:
        """The thumbnail's (left, top, right, bottom) of tile `index`, in reading order."""
        row, column = divmod(index, self.columns)
        left = self.margin + column * (self.thumb[0] + self.margin)
        top = self.margin + row * (self.thumb[1] + self.caption_h + self.margin)
        return left, top, left + self.thumb[0], top + self.thumb[1]


def _height(width: int, frame: tuple[int, int]) -> int:
    return max(1, round(width * frame[1] / frame[0]))


def contact_sheet(tiles: Iterable[SheetTile], layout: SheetLayout, *, max_pixels: int) -> bytes:
    """PNG bytes of the sheet. `tiles` is consumed one at a time (pass a generator that reads
    each picture when asked), so only one picture is decoded at once; a picture that does not
    decode within `max_pixels` becomes an "unreadable" placeholder."""
    sheet = Image.new("RGB", layout.size, SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=_FONT_SIZE)
    for index, tile in enumerate(tiles):
        if index >= layout.count:
            raise ValueError(f"more tiles than the {layout.count} the layout was made for")
        box = layout.box(index)
        thumb = None
        note = tile.note
        if tile.picture is not None:
            try:
                thumb = _thumbnail(tile.picture, layout.thumb, max_pixels, tile.on_decoded)
            except (ImageBombError, ImageDecodeError):
                note = "unreadable picture"
        if thumb is not None:
            sheet.paste(thumb, box[:2])
            thumb.close()
        else:
            draw.rectangle(box, fill=FAILED_FILL if tile.failed else MISSING_FILL)
            lines = _wrap(draw, note, font, layout.thumb[0] - 8)[:_NOTE_LINES]
            draw.multiline_text((box[0] + 4, box[1] + 4), "\n".join(lines), _NOTE_COLOUR, font)
        caption = _fitted(draw, tile.caption, font, layout.thumb[0])
        draw.text((box[0], box[3] + 3), caption, _CAPTION_COLOUR, font)
    out = io.BytesIO()
    sheet.save(out, format="PNG", compress_level=SHEET_COMPRESS_LEVEL)
    return out.getvalue()


def _thumbnail(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
    on_decoded: Callable[[Image.Image], None] | None = None,
) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except (*_BOMB, *_UNREADABLE) as exc:
        raise ImageDecodeError(f"not a readable image: {exc}") from exc
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageBombError(f"picture claims {width}x{height} pixels, over {max_pixels}")
        if on_decoded is not None:  # shown whole: its own small copies may be larger tiles
            image.load()
            on_decoded(image)
        else:  # a JPEG decodes at a fraction of its size; thumbnail reduces while loading
            image.draft("RGB", size)
        image.thumbnail((max(size[0], 1), max(size[1], 1)))
        return _cover(_to_rgb(image), *size)
    except (*_BOMB, *_UNREADABLE) as exc:
        raise ImageDecodeError(f"incomplete or corrupt picture: {exc}") from exc
    finally:
        image.close()


Decoded = Image.Image  # what SheetTile.on_decoded is shown, for modules that do not import PIL


def small_jpeg(picture: Image.Image, width: int, *, quality: int = 75) -> bytes:
    """JPEG bytes of a decoded picture at most `width` px wide, leaving the picture as it is."""
    factor = picture.width // (2 * width)  # a cheap box reduce first, as thumbnail() does
    small = picture.reduce(factor) if factor >= 2 else picture.copy()
    if small.mode != "RGB":
        small = small.convert("RGB")
    small.thumbnail((width, width * 4))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=quality)
    return out.getvalue()


def thumbnail_jpeg(
    data: bytes,
    *,
    frame: tuple[int, int],
    width: int,
    comment: str,
    max_pixels: int,
    quality: int = 85,
) -> bytes:
    """JPEG bytes of any image `data`, `width` px wide at the frame's aspect (cover-scaled and
    centre-cropped, as finish_image frames a picture), carrying `comment`. A JPEG is decoded
    at a fraction of its size. Raises ImageBombError / ImageDecodeError as the sheet does."""
    thumb = _thumbnail(data, (width, _height(width, frame)), max_pixels)
    try:
        out = io.BytesIO()
        thumb.save(out, "JPEG", quality=quality, comment=comment.encode("ascii"))
    finally:
        thumb.close()
    return out.getvalue()


def jpeg_comment(data: bytes) -> str | None:
    """The comment of a JPEG, read from its header (nothing decoded); None without one or
    when `data` is not a readable JPEG."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            comment = image.info.get("comment") if image.format == "JPEG" else None
    except (*_BOMB, *_UNREADABLE):
        return None
    return comment.decode("ascii", "replace") if isinstance(comment, bytes) else None


def _fitted(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    # The longest prefix that fits with its ellipsis, found in log(n) measurements, not n.
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if draw.textlength(text[:middle] + "…", font=font) <= width:
            fits = middle
        else:
            too_long = middle
    return text[:fits].rstrip() + "…"


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(_fitted(draw, word, font, width))
    if len(lines) > _NOTE_LINES:
        lines[_NOTE_LINES - 1] = _fitted(draw, lines[_NOTE_LINES - 1] + " …", font, width)
    return lines

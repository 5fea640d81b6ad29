"""A small JPEG beside each picture, so the contact sheet and the pictures artifact never
decode a full-size picture they have seen made: `data/projects/{project}/thumbs/{sentence}.jpg`.

Decoding a 1920x1080 PNG costs the orchestrator more CPU than anything else it does for a
picture, and the sheet is redrawn over the whole project after every batch. ComfyUI's
`/view?preview=jpeg;Q` hands out a JPEG of the output, encoded on the GPU machine, which
decodes here at a quarter of its size: the store step asks for it, frames it as the picture is
framed, and writes it beside the picture. Making one never fails a picture: a thumbnail that
could not be made is simply absent.

A thumbnail carries, as its JPEG comment, the stamp of the picture it was made from
(`storyboard.files.stamp`: inode, size, modification time). A reader takes it only while the
picture on disk still has that stamp; a picture rewritten since (a new render, a render-cache
copy, a restored backup) gets another stamp, and its thumbnail is ignored until remade.
"""

from __future__ import annotations

from pathlib import Path

from storyboard import ids
from storyboard.atomic import write_atomic
from storyboard.errors import UnsafePathError
from storyboard.files import open_regular
from storyboard.image import jpeg_comment, thumbnail_jpeg

WIDTH = 320  # the widest contact-sheet tile
QUALITY = 85
# What ComfyUI's /view is asked for: a JPEG of the output, encoded on its machine.
PREVIEW = "jpeg;90"
MAX_BYTES = 2**20  # ours are about 10-20 KB; anything larger at the name is not ours


def write_thumbnail(
    data_dir: Path,
    project_id: str,
    sentence_id: str,
    source: bytes,
    *,
    picture_stamp: str,
    frame: tuple[int, int],
    max_pixels: int,
) -> Path:
    """Make the thumbnail of the picture stamped `picture_stamp` from `source` (its preview or
    the picture itself, any format) and write it atomically; return its path. Raises
    ImageDecodeError / ImageBombError for a source that is not an image within `max_pixels`."""
    jpeg = thumbnail_jpeg(
        source,
        frame=frame,
        width=WIDTH,
        comment=picture_stamp,
        max_pixels=max_pixels,
        quality=QUALITY,
    )
    return write_atomic(data_dir, ids.thumb_parts(project_id, sentence_id), jpeg)


def read_thumbnail(project_root: Path, sentence_id: str, picture_stamp: str) -> bytes | None:
    """The sentence's thumbnail when it was made from the picture now stamped
    `picture_stamp`; None when it is missing, unreadable, a link, or of another picture."""
    try:
        with open_regular(project_root, ids.project_thumb_parts(sentence_id)) as handle:
            data = handle.read(MAX_BYTES + 1)
    except (OSError, UnsafePathError):
        return None
    if len(data) > MAX_BYTES or jpeg_comment(data) != picture_stamp:
        return None
    return data

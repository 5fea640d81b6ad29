"""Reading a character's reference image from disk, refusing anything unsafe or unusable."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from storyboard.errors import ReferenceImageError


def read_reference(path: str | Path, *, project_root: Path, max_bytes: int) -> bytes:
    """The bytes of a reference image inside `project_root` (relative paths start there).

    Refuses, with ReferenceImageError naming the file and the fix: a path that resolves
    outside the project directory (`..` or a symlink pointing out), a missing file, a file
    larger than `max_bytes`, and bytes that are not a decodable image.
    """
    root = project_root.resolve()
    resolved = (root / path).resolve()  # an absolute `path` replaces `root` here
    if not resolved.is_relative_to(root):
        raise ReferenceImageError(
            f"reference image {str(path)!r} resolves to {resolved}, outside the project "
            f"directory {root}; copy the image into the project directory and refer to it there"
        )
    try:
        with resolved.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise ReferenceImageError(
                    f"reference image {str(path)!r} is {size} bytes, more than the limit of "
                    f"{max_bytes}; shrink it (about 1 megapixel is enough) or raise the limit"
                )
            data = handle.read(max_bytes + 1)
    except IsADirectoryError as exc:
        raise ReferenceImageError(
            f"reference image {str(path)!r} is a directory ({resolved}); name an image file"
        ) from exc
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ReferenceImageError(
            f"reference image {str(path)!r} does not exist (looked for {resolved}); "
            "fix the path in the character's reference images"
        ) from exc
    except OSError as exc:
        raise ReferenceImageError(f"reference image {str(path)!r} cannot be read: {exc}") from exc
    if len(data) > max_bytes:  # grew between fstat and read
        raise ReferenceImageError(
            f"reference image {str(path)!r} is more than {max_bytes} bytes; shrink it"
        )
    _verify_image(data, str(path))
    return data


def reference_hash(data: bytes) -> str:
    """Hex sha256 of a reference image, recorded in the picture's provenance."""
    return hashlib.sha256(data).hexdigest()


def _verify_image(data: bytes, shown: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ReferenceImageError(
            f"reference image {shown!r} is not a readable image ({exc}); "
            "use a PNG, JPEG or WebP file"
        ) from exc
    except ValueError as exc:
        raise ReferenceImageError(f"reference image {shown!r} is not usable: {exc}") from exc

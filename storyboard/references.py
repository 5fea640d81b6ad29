"""Reading a character's reference image from disk, refusing anything unsafe or unusable.

The file is opened through storyboard.files: no component below the project directory is
followed if it is a link (so swapping a folder for a link between a check and the read leaks
nothing), and only a regular file is read (a FIFO is refused at once instead of blocking).
What is checked -- size, format, pixel count from the header (storyboard.image) -- is the
opened file itself.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from storyboard.errors import ImageBombError, ImageDecodeError, ReferenceImageError, UnsafePathError
from storyboard.files import open_regular
from storyboard.image import verify_image


def read_reference(
    path: str | Path,
    *,
    project_root: Path,
    max_bytes: int,
    max_pixels: int,
    data_dir: Path | None = None,
) -> bytes:
    """The bytes of a reference image inside `project_root` (relative paths start there).

    Refuses, with ReferenceImageError naming the file and the fix: a path outside the
    project directory, a symbolic link anywhere below it, anything but a regular file, a
    missing file, a file larger than `max_bytes`, an image whose header claims more than
    `max_pixels` pixels (nothing is decoded), and bytes that are not a decodable image.
    With `data_dir` (above `project_root`), the folders between the two are not followed
    either: the project directory itself may not be a link out of the data directory.
    """
    shown = str(path)
    root, parts = project_root, _parts_below(path, project_root)
    if data_dir is not None and project_root.is_relative_to(data_dir):
        root, parts = data_dir, project_root.relative_to(data_dir).parts + parts
    try:
        with open_regular(root, parts) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise ReferenceImageError(
                    f"reference image {shown!r} is {size} bytes, more than the limit of "
                    f"{max_bytes}; shrink it (about 1 megapixel is enough) or raise the limit"
                )
            data = handle.read(max_bytes + 1)
    except UnsafePathError as exc:
        if exc.link:
            raise ReferenceImageError(
                f"reference image {shown!r} is or passes through a symbolic link; links are "
                "never followed, so nothing outside the project directory is read: copy the "
                "image itself into the project directory"
            ) from exc
        raise ReferenceImageError(f"reference image {shown!r}: {exc}") from exc
    except IsADirectoryError as exc:
        raise ReferenceImageError(
            f"reference image {shown!r} is a directory; name an image file"
        ) from exc
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ReferenceImageError(
            f"reference image {shown!r} does not exist (looked in {project_root}); "
            "fix the path in the character's reference images"
        ) from exc
    except OSError as exc:
        raise ReferenceImageError(f"reference image {shown!r} cannot be read: {exc}") from exc
    if len(data) > max_bytes:  # grew between fstat and read
        raise ReferenceImageError(
            f"reference image {shown!r} is more than {max_bytes} bytes; shrink it"
        )
    _verify_image(data, shown, max_pixels)
    return data


def _parts_below(path: str | Path, project_root: Path) -> tuple[str, ...]:
    """The components of `path` below `project_root`, judged on the text alone.

    Nothing is resolved: links are refused when opened, so `..` can be folded lexically.
    """
    shown = str(path)
    candidate = Path(path)
    if candidate.is_absolute():
        for root in (project_root, project_root.resolve()):
            if candidate.is_relative_to(root):
                candidate = candidate.relative_to(root)
                break
    normal = PurePosixPath(os.path.normpath(candidate.as_posix())) if shown else None
    if (
        normal is None
        or normal.is_absolute()
        or normal.parts[:1] in (("..",), (".",))
        or not normal.parts
    ):
        raise ReferenceImageError(
            f"reference image {shown!r} is outside the project directory {project_root}; "
            "copy the image into the project directory and refer to it there"
        )
    return normal.parts


def reference_hash(data: bytes) -> str:
    """Hex sha256 of a reference image, recorded in the picture's provenance."""
    return hashlib.sha256(data).hexdigest()


def _verify_image(data: bytes, shown: str, max_pixels: int) -> None:
    try:
        verify_image(data, max_pixels=max_pixels, what=f"reference image {shown!r}")
    except ImageBombError as exc:
        raise ReferenceImageError(
            f"{exc}; shrink it (about 1 megapixel is enough) or raise STORYBOARD_MAX_IMAGE_PIXELS"
        ) from exc
    except ImageDecodeError as exc:
        raise ReferenceImageError(
            f"reference image {shown!r} is not a readable image ({exc.__cause__}); "
            "use a PNG, JPEG or WebP file"
        ) from exc

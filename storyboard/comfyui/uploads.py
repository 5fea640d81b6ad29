"""Content-addressed names for reference images uploaded to ComfyUI.

The name is the first 32 hex digits (128 bits) of the SHA-256 of the bytes plus
an extension sniffed from the bytes, so the same file always gets the same name
(ComfyUI answers "same bytes, same name" without writing) and two different
files never share one. The caller's file name is never sent: it may contain
characters or path parts the server would mangle.
"""

from __future__ import annotations

import hashlib

from storyboard.errors import ReferenceImageError

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tiff"),
    (b"MM\x00*", ".tiff"),
)
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
}


def image_extension(data: bytes, *, what: str = "image") -> str:
    """The extension matching the bytes' format; ReferenceImageError if not an image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for signature, extension in _SIGNATURES:
        if data.startswith(signature):
            return extension
    raise ReferenceImageError(
        f"{what} is not a PNG, JPEG, WebP, GIF, BMP or TIFF image "
        f"(starts with {data[:8]!r}); convert it to PNG or JPEG"
    )


def content_name(data: bytes, *, what: str = "image") -> str:
    """`<sha256 prefix>.<ext>` for these bytes."""
    return hashlib.sha256(data).hexdigest()[:32] + image_extension(data, what=what)


def mime_type(name: str) -> str:
    return _MIME.get(name[name.rfind(".") :], "application/octet-stream")

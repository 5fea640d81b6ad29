"""Reading reference images: inside the project, no links, present, small enough, an image."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from storyboard.errors import ReferenceImageError
from storyboard.references import read_reference, reference_hash

LIMIT = 1_000_000
PIXELS = 4_000_000


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "projects" / "p1"
    (root / "characters").mkdir(parents=True)
    (root / "characters" / "ada.png").write_bytes(png())
    return root


def test_relative_and_absolute_paths_inside_the_project_are_read(project: Path) -> None:
    expected = (project / "characters" / "ada.png").read_bytes()
    assert (
        read_reference(
            "characters/ada.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS
        )
        == expected
    )
    absolute = project / "characters" / "ada.png"
    assert (
        read_reference(absolute, project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)
        == expected
    )
    assert reference_hash(expected) == reference_hash(expected)
    assert len(reference_hash(expected)) == 64


def test_a_symlink_inside_the_project_is_refused_not_followed(project: Path) -> None:
    os.symlink(project / "characters" / "ada.png", project / "alias.png")
    with pytest.raises(ReferenceImageError, match=r"'alias.png' is .*symbolic link.*copy the"):
        read_reference("alias.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def test_a_folder_swapped_for_a_link_is_refused(project: Path, tmp_path: Path) -> None:
    # What a swap between a check and the read leaves: a folder below the root is a link.
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "ada.png").write_bytes(png((10, 10)))
    (project / "characters").rename(project / "old")
    os.symlink(secret, project / "characters")
    with pytest.raises(ReferenceImageError, match="symbolic link"):
        read_reference(
            "characters/ada.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS
        )


def test_a_fifo_is_refused_without_blocking(project: Path) -> None:
    os.mkfifo(project / "pipe.png")
    with pytest.raises(ReferenceImageError, match=r"'pipe.png'.*not a regular file"):
        read_reference("pipe.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


@pytest.mark.parametrize("side", [2001, 13000])
def test_the_pixel_limit_is_checked_on_the_header(project: Path, side: int) -> None:
    # A header claiming side x side pixels over a few bytes of data: nothing can be decoded.
    (project / "huge.png").write_bytes(png_header_only(side, side))
    with pytest.raises(ReferenceImageError, match=r"'huge.png' claims .*, over the limit"):
        read_reference("huge.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("path", ["../outside.png", "characters/../../outside.png"])
def test_paths_leaving_the_project_are_refused(project: Path, path: str) -> None:
    (project.parent / "outside.png").write_bytes(png())
    with pytest.raises(ReferenceImageError, match=r"outside the project directory.*copy"):
        read_reference(path, project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def test_an_absolute_path_elsewhere_is_refused(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(png())
    with pytest.raises(ReferenceImageError, match="outside the project directory"):
        read_reference(elsewhere, project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def test_a_symlink_escaping_the_project_is_refused(project: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    os.symlink(secret, project / "characters" / "link.png")
    with pytest.raises(ReferenceImageError, match=r"'characters/link.png'.*symbolic link"):
        read_reference(
            "characters/link.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS
        )


def test_a_missing_file_is_named(project: Path) -> None:
    with pytest.raises(ReferenceImageError, match=r"'characters/bob.png' does not exist.*fix"):
        read_reference(
            "characters/bob.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS
        )


def test_a_directory_is_refused(project: Path) -> None:
    with pytest.raises(ReferenceImageError, match="is a directory"):
        read_reference("characters", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def test_a_file_over_the_limit_is_refused(project: Path) -> None:
    (project / "big.png").write_bytes(png((800, 800)) + b"\0" * 2000)
    size = (project / "big.png").stat().st_size
    with pytest.raises(
        ReferenceImageError, match=f"'big.png' is {size} bytes, more than the limit"
    ):
        read_reference("big.png", project_root=project, max_bytes=size - 1, max_pixels=PIXELS)


@pytest.mark.parametrize(
    "content",
    [b"not an image at all", b"", png()[:40]],
    ids=["text", "empty", "truncated"],
)
def test_bytes_that_are_not_an_image_are_refused(project: Path, content: bytes) -> None:
    (project / "bad.png").write_bytes(content)
    with pytest.raises(ReferenceImageError, match=r"'bad.png' is not a readable image.*PNG, JPEG"):
        read_reference("bad.png", project_root=project, max_bytes=LIMIT, max_pixels=PIXELS)


def test_a_project_folder_that_links_out_of_data_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "projects").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "characters").mkdir(parents=True)
    (elsewhere / "characters" / "ada.png").write_bytes(png())
    (data_dir / "projects" / "p1").symlink_to(elsewhere)
    project = data_dir / "projects" / "p1"
    with pytest.raises(ReferenceImageError, match="outside the project directory"):
        read_reference(
            "characters/ada.png",
            project_root=project,
            max_bytes=LIMIT,
            max_pixels=PIXELS,
            data_dir=data_dir,
        )

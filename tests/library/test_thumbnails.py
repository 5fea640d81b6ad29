"""Thumbnails beside the pictures, on real files in tmp_path: made at the frame's aspect from
any image, taken only while the picture on disk is the one they were made from."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from storyboard.atomic import write_stamped
from storyboard.errors import ImageDecodeError
from storyboard.files import stamp
from storyboard.image import jpeg_comment
from storyboard.thumbnails import MAX_BYTES, WIDTH, read_thumbnail, write_thumbnail

FRAME = (1920, 1080)
PICTURE = ("projects", "p1", "images", "s1.png")


def _image(size: tuple[int, int], colour: tuple[int, int, int], kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=kind)
    return out.getvalue()


def _picture(data_dir: Path, colour: tuple[int, int, int]) -> str:
    return write_stamped(data_dir, PICTURE, _image(FRAME, colour))


def _write(data_dir: Path, source: bytes, picture_stamp: str) -> Path:
    return write_thumbnail(
        data_dir, "p1", "s1", source, picture_stamp=picture_stamp, frame=FRAME, max_pixels=10**8
    )


def test_the_stamp_written_is_the_stamp_of_the_file_on_disk(tmp_path: Path) -> None:
    written = write_stamped(tmp_path, PICTURE, b"picture")

    assert written == stamp(os.stat(tmp_path.joinpath(*PICTURE)))
    # Rewritten with the same bytes, it is another file: another stamp.
    assert write_stamped(tmp_path, PICTURE, b"picture") != written


def test_a_thumbnail_is_a_jpeg_at_the_frames_aspect_carrying_its_pictures_stamp(
    tmp_path: Path,
) -> None:
    picture_stamp = _picture(tmp_path, (200, 30, 30))
    # A preview the server made of a taller output: cropped to the frame as the picture was.
    path = _write(tmp_path, _image((1000, 1000), (200, 30, 30), "JPEG"), picture_stamp)

    assert path == tmp_path / "projects" / "p1" / "thumbs" / "s1.jpg"
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as thumb:
        assert (thumb.format, thumb.size) == ("JPEG", (WIDTH, WIDTH * 9 // 16))
        red, green, blue = thumb.convert("RGB").getpixel((WIDTH // 2, 90))
    assert red > 180 and green < 60 and blue < 60
    assert jpeg_comment(data) == picture_stamp
    assert read_thumbnail(tmp_path / "projects" / "p1", "s1", picture_stamp) == data


def test_a_picture_rewritten_after_its_thumbnail_is_not_shown_by_the_old_one(
    tmp_path: Path,
) -> None:
    first = _picture(tmp_path, (200, 30, 30))
    _write(tmp_path, _image(FRAME, (200, 30, 30)), first)

    second = _picture(tmp_path, (30, 30, 200))  # a new render; its thumbnail was never made

    assert read_thumbnail(tmp_path / "projects" / "p1", "s1", second) is None


@pytest.mark.parametrize("case", ["missing", "link", "not-jpeg", "too-large"])
def test_a_thumbnail_that_is_not_ours_is_not_taken(tmp_path: Path, case: str) -> None:
    picture_stamp = _picture(tmp_path, (200, 30, 30))
    thumbs = tmp_path / "projects" / "p1" / "thumbs"
    thumbs.mkdir()
    if case == "link":
        made = _write(tmp_path, _image(FRAME, (0, 0, 0)), picture_stamp)
        made.rename(thumbs / "elsewhere.jpg")
        (thumbs / "s1.jpg").symlink_to(thumbs / "elsewhere.jpg")
    elif case == "not-jpeg":
        (thumbs / "s1.jpg").write_bytes(b"\xff\xd8 not really")
    elif case == "too-large":
        made = _write(tmp_path, _image(FRAME, (0, 0, 0)), picture_stamp)
        made.write_bytes(made.read_bytes() + b"\0" * MAX_BYTES)

    assert read_thumbnail(tmp_path / "projects" / "p1", "s1", picture_stamp) is None


def test_a_source_that_is_not_an_image_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError):
        _write(tmp_path, b"<html>an error page</html>", "1-2-3")

    assert not (tmp_path / "projects" / "p1" / "thumbs" / "s1.jpg").exists()


def test_a_thumbnail_is_written_through_no_link(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "projects" / "p1").mkdir(parents=True)
    (tmp_path / "projects" / "p1" / "thumbs").symlink_to(tmp_path / "elsewhere")

    with pytest.raises(Exception, match="symbolic link"):
        _write(tmp_path, _image(FRAME, (0, 0, 0)), "1-2-3")
    assert not list((tmp_path / "elsewhere").iterdir())

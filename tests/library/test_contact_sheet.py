"""The contact sheet, from a real store and real pictures in tmp_path: every sentence in
storyboard order, failed and missing frames as placeholders that look different, no link
followed, written atomically, bounded in size; and the `contact-sheet` command."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from storyboard.cli import main
from storyboard.contact_sheet import (
    DRAFT_SHEET_NAME,
    SHEET_NAME,
    caption,
    draft_tiles,
    tiles,
    write_contact_sheet,
)
from storyboard.errors import NotFoundError
from storyboard.files import stamp
from storyboard.image import (
    FAILED_FILL,
    MISSING_FILL,
    SHEET_BACKGROUND,
    SheetLayout,
    SheetTile,
    contact_sheet,
)
from storyboard.store import Store
from storyboard.thumbnails import write_thumbnail
from tests.support.store import seeded_store, sentence

FRAME = (64, 36)
TILE = 64
COLUMNS = 3
# Position order: s5 (0), s3 (1), s1 (2), s4 (3), s2 (4) -- not the order they were added in.
POSITIONS = {"s1": 2, "s2": 4, "s3": 1, "s4": 3, "s5": 0}
COLOURS = {"s5": (250, 0, 0), "s3": (0, 200, 0), "s2": (0, 0, 250)}


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _stored_picture(store: Store, data_dir: Path, sentence_id: str, data: bytes) -> None:
    images = data_dir / "projects" / "p1" / "images"
    images.mkdir(parents=True, exist_ok=True)
    (images / f"{sentence_id}.png").write_bytes(data)
    job = store.start_job("p1", sentence_id, run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.complete_job(
        job.id, image_file=f"images/{sentence_id}.png", seed=1, workflow_hash="h", duration_s=1
    )


def _fail(store: Store, sentence_id: str, error: str) -> None:
    job = store.start_job("p1", sentence_id, run_id="r1", attempt=1, stale_after_s=600)
    assert job is not None
    store.fail_job(job.id, error, final=True)


@pytest.fixture
def storyboard(tmp_path: Path) -> tuple[Store, Path]:
    """Five sentences: three with pictures (larger than a tile), s1 failed, s4 never made."""
    store = seeded_store(tmp_path, sentences=0)
    store.upsert_sentences(
        [
            sentence(sid, position, text=f"Words of {sid} and then many more words after")
            for sid, position in POSITIONS.items()
        ]
    )
    data_dir = tmp_path / "data"
    for sentence_id, colour in COLOURS.items():
        _stored_picture(store, data_dir, sentence_id, _png((192, 108), colour))
    _fail(store, "s1", "ComfyUI ran out of memory\nTraceback (most recent call last): ...")
    return store, data_dir


def _layout(count: int) -> SheetLayout:
    return SheetLayout.fit(
        count, columns=COLUMNS, tile_width=TILE, frame=FRAME, max_pixels=16_000_000
    )


def _write(store: Store, data_dir: Path) -> Path:
    return write_contact_sheet(store, data_dir, "p1", frame=FRAME, tile_width=TILE, columns=COLUMNS)


def _fill(sheet: Image.Image, box: tuple[int, int, int, int]) -> object:
    # Bottom right of the thumbnail: clear of a placeholder's note, which starts top left.
    return sheet.getpixel((box[2] - 3, box[3] - 3))


def test_every_sentence_in_storyboard_order_with_failed_and_missing_placeholders(
    storyboard: tuple[Store, Path],
) -> None:
    store, data_dir = storyboard

    path = _write(store, data_dir)

    assert path == data_dir / "projects" / "p1" / SHEET_NAME
    layout = _layout(5)
    with Image.open(path) as sheet:
        sheet = sheet.convert("RGB")
        # Two rows of three, each a 64x36 thumbnail, a caption strip and 12 px margins.
        assert sheet.size == layout.size == (12 + 3 * (64 + 12), 12 + 2 * (36 + 20 + 12))
        by_position = sorted(POSITIONS, key=POSITIONS.__getitem__)
        fills = [_fill(sheet, layout.box(i)) for i in range(5)]
        centres = [
            sheet.getpixel(((b[0] + b[2]) // 2, (b[1] + b[3]) // 2))
            for b in map(layout.box, range(5))
        ]
        # The sixth cell of the grid is empty: five tiles, no more.
        sixth = layout.box(5)
        assert sheet.getpixel((sixth[0] + 5, sixth[1] + 5)) == SHEET_BACKGROUND

    expected = {
        sid: COLOURS.get(sid, FAILED_FILL if sid == "s1" else MISSING_FILL) for sid in by_position
    }
    assert dict(zip(by_position, fills, strict=True)) == expected
    assert centres[0] == COLOURS["s5"] and centres[4] == COLOURS["s2"]
    assert FAILED_FILL != MISSING_FILL


def test_a_pictures_thumbnail_stands_in_for_it_until_the_picture_is_rewritten(
    storyboard: tuple[Store, Path],
) -> None:
    store, data_dir = storyboard
    picture = data_dir / "projects" / "p1" / "images" / "s5.png"
    # Yellow, so the tile tells which one was drawn (the picture itself is red).
    write_thumbnail(
        data_dir,
        "p1",
        "s5",
        _png((192, 108), (250, 250, 0)),
        picture_stamp=stamp(os.stat(picture)),
        frame=FRAME,
        max_pixels=10**8,
    )
    shown: list[tuple[int, int]] = []

    def first_tile() -> object:
        path = write_contact_sheet(
            store,
            data_dir,
            "p1",
            frame=FRAME,
            tile_width=TILE,
            columns=COLUMNS,
            on_decoded=lambda sentence, decoded: shown.append(decoded.size),
        )
        with Image.open(path) as sheet:
            return sheet.convert("RGB").getpixel((12 + TILE // 2, 12 + 18))

    yellow = first_tile()
    picture.write_bytes(_png((192, 108), (0, 250, 250)))  # a new render, no thumbnail yet
    cyan = first_tile()

    assert isinstance(yellow, tuple) and yellow[0] > 200 and yellow[1] > 200 and yellow[2] < 60
    assert cyan == (0, 250, 250)
    # The thumbnail is decoded at its own size; the rewritten picture at the picture's.
    assert shown[0] == (320, 180) and (192, 108) in shown[3:]


def test_each_picture_drawn_is_shown_decoded_once_at_its_own_size(
    storyboard: tuple[Store, Path],
) -> None:
    """So the pictures artifact makes its thumbnails from the sheet's decode, not a second."""
    store, data_dir = storyboard
    shown: list[tuple[str, tuple[int, int]]] = []

    write_contact_sheet(
        store,
        data_dir,
        "p1",
        frame=FRAME,
        tile_width=TILE,
        columns=COLUMNS,
        on_decoded=lambda sentence, picture: shown.append((sentence.id, picture.size)),
    )

    # The three with pictures, once each, whole; s1 (failed) and s4 (none) have nothing to show.
    assert sorted(shown) == [(sid, (192, 108)) for sid in sorted(COLOURS)]


def test_each_tile_has_its_caption_drawn_under_it(storyboard: tuple[Store, Path]) -> None:
    store, data_dir = storyboard
    layout = _layout(5)
    with Image.open(_write(store, data_dir)) as sheet:
        sheet = sheet.convert("RGB")
        for index in range(5):
            left, _, right, bottom = layout.box(index)
            strip = sheet.crop((left, bottom, right, bottom + layout.caption_h))
            colours = {colour for _, colour in strip.getcolors(maxcolors=10_000) or []}
            assert colours - {SHEET_BACKGROUND}, f"no caption under tile {index}"


def test_a_caption_is_the_position_and_the_first_words(tmp_path: Path) -> None:
    store = seeded_store(tmp_path, sentences=0)
    long = "one two three four five six seven eight nine ten"
    store.upsert_sentences([sentence("s1", 7, text=long), sentence("s2", 8, text="Short.")])
    first, second = store.sentences("p1")
    assert caption(first) == "7. one two three four five six seven eight …"
    assert caption(second) == "8. Short."


def test_the_failed_tile_says_failed_with_the_first_line_of_the_error(
    storyboard: tuple[Store, Path],
) -> None:
    store, data_dir = storyboard
    root = data_dir / "projects" / "p1"
    made = {t.caption.split(".")[0]: t for t in tiles(root, store.sentences("p1"), max_bytes=10**6)}
    failed = made[str(POSITIONS["s1"])]
    assert (failed.failed, failed.picture, failed.note) == (
        True,
        None,
        "failed: ComfyUI ran out of memory",
    )
    assert made[str(POSITIONS["s4"])].note == "missing"
    assert made[str(POSITIONS["s5"])].picture is not None


def test_a_link_a_deleted_file_or_corrupt_bytes_show_as_missing_and_nothing_is_followed(
    storyboard: tuple[Store, Path], tmp_path: Path
) -> None:
    store, data_dir = storyboard
    images = data_dir / "projects" / "p1" / "images"
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png((192, 108), (255, 255, 0)))
    (images / "s5.png").unlink()
    os.symlink(outside, images / "s5.png")  # a picture outside the data directory
    (images / "s3.png").unlink()  # deleted
    (images / "s2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # corrupt

    path = _write(store, data_dir)

    layout = _layout(5)
    with Image.open(path) as sheet:
        sheet = sheet.convert("RGB")
        for sid in ("s5", "s3", "s2"):
            assert _fill(sheet, layout.box(POSITIONS[sid])) == MISSING_FILL, sid
    root = data_dir / "projects" / "p1"
    notes = {t.caption[0]: t.note for t in tiles(root, store.sentences("p1"), max_bytes=10**6)}
    assert notes[str(POSITIONS["s5"])] == "missing: not a regular file"
    assert notes[str(POSITIONS["s3"])] == "missing"


def test_a_picture_over_the_byte_limit_is_not_read_whole(storyboard: tuple[Store, Path]) -> None:
    store, data_dir = storyboard
    root = data_dir / "projects" / "p1"
    made = list(tiles(root, store.sentences("p1"), max_bytes=100))
    assert all(t.picture is None for t in made)
    assert {t.note for t in made} >= {"unreadable: over 100 bytes"}


def test_the_sheet_is_replaced_atomically_and_a_link_in_its_place_is_not_written_through(
    storyboard: tuple[Store, Path], tmp_path: Path
) -> None:
    store, data_dir = storyboard
    target = tmp_path / "precious.txt"
    target.write_text("keep me", encoding="utf-8")
    sheet = data_dir / "projects" / "p1" / SHEET_NAME
    sheet.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, sheet)

    _write(store, data_dir)

    assert target.read_text(encoding="utf-8") == "keep me"
    assert not sheet.is_symlink() and sheet.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in sheet.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_an_unknown_project_is_named(tmp_path: Path) -> None:
    store = seeded_store(tmp_path)
    with pytest.raises(NotFoundError, match="no project 'ghost'"):
        write_contact_sheet(store, tmp_path / "data", "ghost")
    assert not (tmp_path / "data" / "projects" / "ghost").exists()


def test_a_long_storyboard_gets_smaller_tiles_within_the_pixel_budget() -> None:
    layout = SheetLayout.fit(
        2000, columns=6, tile_width=320, frame=(1920, 1080), max_pixels=16_000_000
    )
    width, height = layout.size
    assert width * height <= 16_000_000
    assert 16 <= layout.thumb[0] < 320
    small = SheetLayout.fit(8, columns=6, tile_width=320, frame=(1920, 1080), max_pixels=16_000_000)
    assert small.thumb == (320, 180)


def test_a_full_size_frame_becomes_a_thumbnail_quickly() -> None:
    noise = Image.effect_noise((1920, 1080), 64).convert("RGB")
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=1)
    layout = SheetLayout.fit(1, columns=6, tile_width=320, frame=(1920, 1080), max_pixels=10**8)

    started = time.monotonic()
    png = contact_sheet([SheetTile("0. a", picture=out.getvalue())], layout, max_pixels=10**8)
    elapsed = time.monotonic() - started

    with Image.open(io.BytesIO(png)) as sheet:
        assert sheet.size == layout.size
        box = layout.box(0)
        assert sheet.convert("RGB").getpixel((box[0] + 100, box[1] + 90)) != MISSING_FILL
    assert elapsed < 2.0


def test_a_picture_over_the_pixel_limit_becomes_a_placeholder() -> None:
    layout = SheetLayout.fit(1, columns=1, tile_width=64, frame=FRAME, max_pixels=10**6)
    png = contact_sheet(
        [SheetTile("0. a", picture=_png((192, 108), (250, 0, 0)))], layout, max_pixels=1000
    )
    with Image.open(io.BytesIO(png)) as sheet:
        assert _fill(sheet.convert("RGB"), layout.box(0)) == MISSING_FILL


def test_the_command_writes_the_sheet_and_names_an_unknown_project(
    storyboard: tuple[Store, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, data_dir = storyboard
    monkeypatch.chdir(data_dir.parent)
    monkeypatch.setenv("STORYBOARD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("STORYBOARD_DB_PATH", str(store.path))

    assert main(["contact-sheet", "p1"]) == 0
    out = capsys.readouterr().out
    assert str(data_dir / "projects" / "p1" / SHEET_NAME) in out and "5 sentences" in out
    assert (data_dir / "projects" / "p1" / SHEET_NAME).is_file()

    assert main(["contact-sheet", "ghost"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no project 'ghost'" in err


def test_an_empty_project_gets_a_sheet_saying_so(tmp_path: Path) -> None:
    store = seeded_store(tmp_path, sentences=0)
    path = write_contact_sheet(store, tmp_path / "data", "p1", frame=FRAME, tile_width=TILE)
    layout = _layout(1)
    with Image.open(path) as sheet:
        assert sheet.size == layout.size
        assert _fill(sheet.convert("RGB"), layout.box(0)) == MISSING_FILL


def test_the_draft_sheet_shows_current_drafts_and_says_which_are_missing_or_stale(
    tmp_path: Path,
) -> None:
    store = seeded_store(tmp_path)
    root = tmp_path / "projects" / "p1"
    (root / "images" / "drafts").mkdir(parents=True)
    for sentence_id in ("s1", "s2"):
        job = store.start_job(
            "p1", sentence_id, run_id="d", attempt=1, stale_after_s=60, draft=True
        )
        assert job is not None
        draft = f"images/drafts/{sentence_id}.png"
        (root / draft).write_bytes(_png(FRAME, (0, 0, 250)))
        store.complete_job(job.id, image_file=draft, seed=1, workflow_hash="d", duration_s=1.0)
    store.reseed("p1", ["s2"], draw=lambda: 7)

    drawn = list(draft_tiles(root, store.sentences("p1"), max_bytes=2**20))

    assert [(t.picture is not None, t.note) for t in drawn] == [
        (True, "unreadable picture"),  # the note shows only if the picture does not decode
        (False, "draft stale: edited or reseeded since"),
        (False, "no draft"),
    ]
    path = write_contact_sheet(store, tmp_path, "p1", frame=FRAME, draft=True)
    assert path == root / DRAFT_SHEET_NAME and not (root / SHEET_NAME).exists()

"""A project's contact sheet: `data/projects/{project}/contact-sheet.png`, and its draft sheet,
`draft-sheet.png` (each sentence's draft: `storyboard render --draft`).

Every sentence in storyboard order (position, then id), its picture as a thumbnail with its
position and first words under it. A sentence whose last render failed gets a placeholder
saying "failed: <short error>"; one with no picture on disk (never rendered, deleted, a link
where the file should be, unreadable) one saying so; an empty project's sheet says it is
empty. Which tile a sentence gets is decided here; drawing is storyboard.image's (the only
Pillow module).

Pictures are read one at a time, when the drawing asks for the next tile, through
storyboard.files (no link followed, at most `max_bytes` each), so memory holds the sheet and
one picture; a picture's thumbnail (storyboard.thumbnails) stands in for it while it is still
the picture's, so a sheet decodes only pictures made without one. The sheet is written
all-or-nothing through storyboard.atomic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path, PurePosixPath

from storyboard import ids
from storyboard.atomic import write_atomic
from storyboard.errors import UnsafePathError
from storyboard.files import open_regular, stamp
from storyboard.image import Decoded, SheetLayout, SheetTile, contact_sheet
from storyboard.store import Sentence, Store
from storyboard.thumbnails import read_thumbnail

SHEET_NAME = "contact-sheet.png"
DRAFT_SHEET_NAME = "draft-sheet.png"
TILE_WIDTH = 320
COLUMNS = 6
CAPTION_WORDS = 8
ERROR_CHARS = 120
# The sheet's own pixel budget (about 48 MiB of RGB): longer storyboards get smaller tiles.
SHEET_MAX_PIXELS = 16_000_000
EMPTY = SheetTile("", note="no sentences in this project yet")


def sheet_parts(project_id: str, *, draft: bool = False) -> tuple[str, str, str]:
    """`projects/{project}/contact-sheet.png` (`draft-sheet.png` with `draft`) below the data
    directory, as components."""
    name = DRAFT_SHEET_NAME if draft else SHEET_NAME
    return ("projects", ids.validate_id(project_id, "project id"), name)


def write_contact_sheet(
    store: Store,
    data_dir: Path,
    project_id: str,
    *,
    frame: tuple[int, int] = (1920, 1080),
    tile_width: int = TILE_WIDTH,
    columns: int = COLUMNS,
    max_bytes: int = 64 * 2**20,
    max_pixels: int = 64_000_000,
    on_decoded: Callable[[Sentence, Decoded], None] | None = None,
    draft: bool = False,
) -> Path:
    """Draw the project's sheet (its draft sheet with `draft`) and write it; return its path.

    `frame` gives the tiles their aspect; `max_bytes` and `max_pixels` bound each picture
    read. `on_decoded` is shown each sentence's decoded picture (not to be changed), so a
    caller needing other thumbnails decodes no file twice. Raises NotFoundError naming an
    unknown project.
    """
    store.get_project(project_id)
    sentences = store.sentences(project_id)
    root = ids.project_dir(data_dir, project_id)
    # An empty project still gets a sheet, one that says why it is empty.
    made = (
        (draft_tiles if draft else tiles)(
            root, sentences, max_bytes=max_bytes, on_decoded=on_decoded
        )
        if sentences
        else iter([EMPTY])
    )
    layout = SheetLayout.fit(
        max(len(sentences), 1),
        columns=columns,
        tile_width=tile_width,
        frame=frame,
        max_pixels=SHEET_MAX_PIXELS,
    )
    png = contact_sheet(made, layout, max_pixels=max_pixels)
    data_dir.mkdir(parents=True, exist_ok=True)
    return write_atomic(data_dir, sheet_parts(project_id, draft=draft), png)


def caption(sentence: Sentence) -> str:
    """The position and the first words of the sentence (of its prompt when it has no text)."""
    words = (sentence.text.strip() or sentence.image_prompt).split()
    shown = " ".join(words[:CAPTION_WORDS])
    return f"{sentence.position}. {shown}{' …' if len(words) > CAPTION_WORDS else ''}"


def tiles(
    root: Path,
    sentences: Sequence[Sentence],
    *,
    max_bytes: int,
    on_decoded: Callable[[Sentence, Decoded], None] | None = None,
) -> Iterator[SheetTile]:
    """One tile per sentence, each picture read only when its tile is asked for."""
    for sentence in sentences:
        text = caption(sentence)
        if sentence.status == "failed":
            # A picture from before the failure would say the prompt rendered; it did not.
            yield SheetTile(text, note=f"failed: {_short(sentence.last_error)}", failed=True)
        elif sentence.image_file is None:
            yield SheetTile(text, note="missing")
        else:
            picture, note = _read(root, sentence.id, sentence.image_file, max_bytes)
            shown = None if on_decoded is None else partial(on_decoded, sentence)
            yield SheetTile(text, picture=picture, note=note, on_decoded=shown)


def draft_tiles(
    root: Path,
    sentences: Sequence[Sentence],
    *,
    max_bytes: int,
    on_decoded: Callable[[Sentence, Decoded], None] | None = None,
) -> Iterator[SheetTile]:
    """`tiles` of the drafts: a sentence without a draft says so; a draft of an older prompt
    or seed is not shown (it would show what the next render no longer draws)."""
    for sentence in sentences:
        text = caption(sentence)
        if sentence.draft_file is None:
            yield SheetTile(text, note="no draft")
        elif sentence.draft_stale:
            yield SheetTile(text, note="draft stale: edited or reseeded since")
        else:
            # No thumbnail stands in for a draft: `_read` finds none of its stamp.
            picture, note = _read(root, sentence.id, sentence.draft_file, max_bytes)
            shown = None if on_decoded is None else partial(on_decoded, sentence)
            yield SheetTile(text, picture=picture, note=note, on_decoded=shown)


def _read(
    root: Path, sentence_id: str, image_file: str, max_bytes: int
) -> tuple[bytes | None, str]:
    """The picture's thumbnail while it is the picture's, else the picture itself."""
    try:
        with open_regular(root, PurePosixPath(image_file).parts) as handle:
            thumb = read_thumbnail(root, sentence_id, stamp(os.fstat(handle.fileno())))
            data = thumb if thumb is not None else handle.read(max_bytes + 1)
    except UnsafePathError:
        return None, "missing: not a regular file"
    except OSError:
        return None, "missing"
    if len(data) > max_bytes:
        return None, f"unreadable: over {max_bytes} bytes"
    return data, "unreadable picture"


def _short(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    first = lines[0].strip() if lines else "no reason recorded"
    return first if len(first) <= ERROR_CHARS else first[: ERROR_CHARS - 1] + "…"

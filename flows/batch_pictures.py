"""The pictures of a batch as the Prefect UI shows them: small JPEG thumbnails as data URIs.

The UI renders a markdown artifact's images, data URIs included, and a table artifact's cells
as text only (proved in a real Chromium by scripts/check_ui.py), so the pictures go into a
markdown table beside the sentence, prompt, seed, seconds and status. Thumbnails are
THUMB_WIDTH px wide and an artifact holds at most MAX_ARTIFACT_BYTES of them: a large batch
names the file of each picture past that bound instead of embedding it.

The table has three columns (picture; sentence, status, seed and seconds; text and prompt)
and its text is broken into lines of at most LINE_CHARS with `<br>`, which both Prefect UIs
render: the V1 UI never wraps a table cell (its table scrolls sideways, scroll bar hidden,
so a long cell pushed the prompt off the page) and the V2 UI fits the table into 65
characters of body text (it shrank 256 px thumbnails to 56 px beside seven columns). So laid
out, the table is about 750 px wide in V1 and fits V2's column (scripts/check_ui.py checks
both at 1600 px).

Seeds are written as text: the browser parses JSON numbers as doubles and rounds any seed
above 2**53.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from PIL import Image

from storyboard import ids
from storyboard.files import open_regular
from storyboard.image import Decoded, small_jpeg
from storyboard.store import Sentence

THUMB_WIDTH = 160
SHEET_WIDTH = 1024
MAX_ARTIFACT_BYTES = 3 * 2**20
# A picture larger than this is not ours (the pipeline writes a few MB at most): not read.
MAX_PICTURE_BYTES = 64 * 2**20
# Text and prompt are cut here, four lines each: the store has the whole text.
PROMPT_CHARS = 160
# The longest line of the text column, and of the status column ("seed " and 19 digits).
LINE_CHARS = 40
STATUS_CHARS = 24


def data_uri(root: Path, parts: Sequence[str], width: int) -> str | None:
    """A JPEG data URI of the picture at `root/parts`, `width` px wide; None when it cannot be
    read as a picture (missing, a link, corrupt): the artifact says so instead."""
    try:
        with open_regular(root, parts) as handle:
            raw = handle.read(MAX_PICTURE_BYTES + 1)
        if len(raw) > MAX_PICTURE_BYTES:
            return None
        with Image.open(io.BytesIO(raw)) as picture:
            picture.draft("RGB", (width, width))
            jpeg = small_jpeg(picture, width)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return jpeg_uri(jpeg)


def jpeg_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def decoded_uri(picture: Decoded) -> str | None:
    """The thumbnail of a picture already decoded (by the contact sheet), None if it cannot
    be made."""
    try:
        return jpeg_uri(small_jpeg(picture, THUMB_WIDTH))
    except (OSError, ValueError):
        return None


def picture_uri(data_dir: Path, project_id: str, image_file: str) -> str | None:
    """The thumbnail of a sentence's picture (`image_file` relative to its project)."""
    root = ids.project_dir(data_dir, project_id)
    return data_uri(root, PurePosixPath(image_file).parts, THUMB_WIDTH)


class Thumbnails:
    """The thumbnails of a batch's pictures, made while the contact sheet has each picture
    decoded (`keep`), so the pictures artifact decodes no file a second time; a picture the
    sheet did not decode is read as before (`uri`). Holds at most `budget` bytes of them,
    what one artifact can embed."""

    def __init__(
        self, wanted: set[tuple[str, str]], budget: int | None = None, *, draft: bool = False
    ) -> None:
        self.wanted = wanted  # (project id, image file) of the pictures the artifact shows
        self.budget = MAX_ARTIFACT_BYTES if budget is None else budget
        self.made: dict[tuple[str, str], str] = {}
        self.draft = draft  # the sheet decodes drafts: a sentence's picture is its draft

    def keep(self, sentence: Sentence, picture: Decoded) -> None:
        shown = sentence.draft_file if self.draft else sentence.image_file
        key = (sentence.project_id, shown or "")
        if key not in self.wanted or key in self.made or self.budget <= 0:
            return
        uri = decoded_uri(picture)
        if uri is not None:
            self.made[key] = uri
            self.budget -= len(uri)

    def uri(self, data_dir: Path, project_id: str, image_file: str) -> str | None:
        made = self.made.get((project_id, image_file))
        return made if made is not None else picture_uri(data_dir, project_id, image_file)


def cell(text: object) -> str:
    """Text safe inside one markdown table cell."""
    shown = " ".join(str(text).split())
    return shown.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def short(text: str, limit: int = PROMPT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lines(paragraphs: Iterable[str], width: int = LINE_CHARS) -> str:
    """One table cell of paragraphs, each broken into lines of at most `width` characters,
    joined by `<br>` (an empty paragraph is an empty line)."""
    shown: list[str] = []
    for paragraph in paragraphs:
        wrapped = textwrap.wrap(" ".join(paragraph.split()), width)
        shown += [cell(line) for line in wrapped] or [""]
    return "<br>".join(shown)


class Gallery:
    """Markdown table rows with thumbnails, within MAX_ARTIFACT_BYTES of embedded images."""

    HEADER = ("| picture | sentence | text and prompt |", "|---|---|---|")

    def __init__(self, budget: int | None = None) -> None:
        self.budget = MAX_ARTIFACT_BYTES if budget is None else budget
        self.rows: list[str] = []
        self.left_out = 0

    @property
    def full(self) -> bool:
        """A thumbnail no longer fitted: the rest are named, not read (a batch of thousands
        would otherwise decode every picture only to leave its thumbnail out)."""
        return self.left_out > 0

    def named(self, image_file: str) -> str:
        """The cell of a picture left out unread because the gallery is full."""
        self.left_out += 1
        return f"`{cell(image_file)}`"

    def image(self, uri: str | None, alt: str, image_file: str | None) -> str:
        if uri is None:
            return "missing" if image_file is None else f"unreadable `{cell(image_file)}`"
        if len(uri) > self.budget:
            self.left_out += 1
            return f"`{cell(image_file)}`"
        self.budget -= len(uri)
        return f"![{cell(alt)}]({uri})"

    def add(self, picture: str, about: Sequence[str], text: str, prompt: str) -> None:
        """A row: the picture's cell, the sentence's label, status, seed and seconds (a line
        each), its text and prompt."""
        words = [short(text), "", f"prompt: {short(prompt)}"] if prompt else [short(text)]
        cells = [picture, lines(about, STATUS_CHARS), lines(words)]
        self.rows.append("| " + " | ".join(cells) + " |")

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", ""]
        if not self.rows:
            return "\n".join([*lines, "No picture in this batch."]) + "\n"
        lines += [*self.HEADER, *self.rows]
        if self.left_out:
            lines += [
                "",
                f"{self.left_out} thumbnail(s) left out to keep this artifact small;"
                " their files are named instead.",
            ]
        return "\n".join(lines) + "\n"

"""Validation of ids that end up in file paths, and safe path building.

Paths built from validated ids are joined, not resolved: a validated id has no separator and
no `..`, and resolving would follow a link planted at the path (a picture written "to"
`images/s01.png -> ../../../storyboard.duckdb` would overwrite the store). Reading and writing
below the data directory goes through storyboard.files, which refuses links.
"""

from __future__ import annotations

import re
from pathlib import Path

from storyboard.errors import InvalidIdError

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
ID_RULE = "1-64 ASCII letters, digits, '_' or '-', starting with a letter or digit"


def validate_id(value: object, what: str = "id") -> str:
    """Return `value` if it is a safe id, else raise InvalidIdError naming it."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidIdError(f"invalid {what} {shown}: use {ID_RULE}")
    return value


def path_under(root: Path, *parts: str) -> Path:
    """Join `parts` under `root` and refuse any result that escapes it."""
    base = root.resolve()
    candidate = base.joinpath(*parts).resolve()
    if not candidate.is_relative_to(base):
        raise InvalidIdError(f"path {candidate} escapes {base}")
    return candidate


IMAGES_DIR = "images"
DRAFTS_DIR = "drafts"  # inside IMAGES_DIR: `images/drafts/{sentence}.png`
THUMBS_DIR = "thumbs"


def image_parts(project_id: str, sentence_id: str) -> tuple[str, str, str, str]:
    """`projects/{project}/images/{sentence}.png` below the data directory, as components."""
    project = validate_id(project_id, "project id")
    sentence = validate_id(sentence_id, "sentence id")
    return ("projects", project, IMAGES_DIR, f"{sentence}.png")


def draft_parts(project_id: str, sentence_id: str) -> tuple[str, str, str, str, str]:
    """`projects/{project}/images/drafts/{sentence}.png` below the data directory, as
    components: beside the final picture, never in its place."""
    projects, project, images, name = image_parts(project_id, sentence_id)
    return (projects, project, images, DRAFTS_DIR, name)


def thumb_parts(project_id: str, sentence_id: str) -> tuple[str, str, str, str]:
    """`projects/{project}/thumbs/{sentence}.jpg` below the data directory, as components."""
    return ("projects", validate_id(project_id, "project id"), *project_thumb_parts(sentence_id))


def project_thumb_parts(sentence_id: str) -> tuple[str, str]:
    """`thumbs/{sentence}.jpg` below a project's directory, as components."""
    return (THUMBS_DIR, f"{validate_id(sentence_id, 'sentence id')}.jpg")


def image_path(data_dir: Path, project_id: str, sentence_id: str) -> Path:
    """`data/projects/{project}/images/{sentence}.png`, built from validated ids (not resolved)."""
    return data_dir.resolve().joinpath(*image_parts(project_id, sentence_id))


def project_dir(data_dir: Path, project_id: str) -> Path:
    """`data/projects/{project}` (not resolved below the data directory)."""
    return data_dir.resolve() / "projects" / validate_id(project_id, "project id")

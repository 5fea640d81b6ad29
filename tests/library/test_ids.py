from pathlib import Path

import pytest

from storyboard.errors import InvalidIdError
from storyboard.ids import image_path, path_under, project_dir, validate_id


@pytest.mark.parametrize("good", ["p1", "Sentence_01", "a-b", "X" * 64, "0"])
def test_safe_ids_pass(good: str) -> None:
    assert validate_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc",
        "a/b",
        "/abs",
        "a\\b",
        "a\x00b",
        "X" * 65,
        "-lead",
        "_lead",
        ".hidden",
        "ｐ1",  # fullwidth look-alike
        "p1\u200b",  # zero-width space
        "pé",
        " p1",
        None,
        12,
    ],
)
def test_unsafe_ids_are_refused_with_the_rule(bad: object) -> None:
    with pytest.raises(InvalidIdError, match="sentence id") as info:
        validate_id(bad, "sentence id")
    assert "letters, digits" in str(info.value)


def test_image_path_stays_under_data(tmp_path: Path) -> None:
    path = image_path(tmp_path, "proj", "s1")
    assert path == tmp_path.resolve() / "projects" / "proj" / "images" / "s1.png"
    assert project_dir(tmp_path, "proj") == tmp_path.resolve() / "projects" / "proj"


def test_image_path_refuses_traversal(tmp_path: Path) -> None:
    with pytest.raises(InvalidIdError):
        image_path(tmp_path, "..", "s1")
    with pytest.raises(InvalidIdError):
        image_path(tmp_path, "proj", "../../x")


def test_path_under_refuses_escape(tmp_path: Path) -> None:
    assert path_under(tmp_path, "a", "b") == tmp_path.resolve() / "a" / "b"
    with pytest.raises(InvalidIdError, match="escapes"):
        path_under(tmp_path, "..", "outside")
    with pytest.raises(InvalidIdError, match="escapes"):
        path_under(tmp_path, "/etc/passwd")


def test_path_under_refuses_symlink_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(InvalidIdError):
        path_under(root, "link", "x.png")

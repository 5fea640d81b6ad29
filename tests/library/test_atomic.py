"""Atomic writes: all-or-nothing, for pictures and Parquet exports; temp files of killed writes
are removed at batch start, a live writer's never are."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyboard.atomic import is_temp_name, write_atomic
from storyboard.doctor import TEMP_FILE_MIN_AGE_S, remove_stale_temp_files
from storyboard.errors import StoreError, UnsafePathError
from storyboard.store import Store
from tests.support.paths import REPO
from tests.support.store import seeded_store

OLD = TEMP_FILE_MIN_AGE_S + 5

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from storyboard import atomic

def die_before_rename(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = die_before_rename  # the process is killed between writing and renaming
atomic.write_atomic(Path(sys.argv[1]), ("projects", "p1", "images", "s1.png"), b"half" * 1000)
"""


def images(data_dir: Path, project: str = "p1") -> Path:
    folder = data_dir / "projects" / project / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def aged(path: Path, data: bytes = b"half a picture", age_s: float = OLD) -> Path:
    path.write_bytes(data)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_the_temp_file_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        cwd=REPO,
        check=False,
        timeout=60,
    )
    assert done.returncode == -9
    [left] = list(images(tmp_path).iterdir())
    assert is_temp_name(left.name) and left.name.startswith(".s1.png.")
    aged(left, left.read_bytes())

    assert remove_stale_temp_files(tmp_path) == 1
    assert list(images(tmp_path).iterdir()) == []


def test_only_our_old_unlocked_temp_files_go(tmp_path: Path) -> None:
    folder = images(tmp_path)
    other = images(tmp_path, "p2")
    thumbs = tmp_path / "projects" / "p2" / "thumbs"
    thumbs.mkdir()
    stale = [
        aged(folder / ".s1.png.0123456789abcdef.tmp"),
        aged(other / ".s9.png.k3j_x9q2.tmp"),
        aged(thumbs / ".s9.jpg.0123456789abcdef.tmp"),
    ]
    young = aged(folder / ".s2.png.fedcba9876543210.tmp", age_s=1)
    kept = [
        young,
        aged(folder / "s3.png", b"a finished picture"),
        aged(folder / ".notes.tmp"),
        aged(folder / "s4.png.0123456789abcdef.tmp"),  # no leading dot: not our name
    ]
    target = aged(tmp_path / "precious")
    (folder / ".s5.png.aaaaaaaaaaaaaaaa.tmp").symlink_to(target)

    assert remove_stale_temp_files(tmp_path) == 3

    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert target.read_bytes() == b"half a picture"
    assert (folder / ".s5.png.aaaaaaaaaaaaaaaa.tmp").is_symlink()  # a link is not ours either
    assert remove_stale_temp_files(tmp_path, min_age_s=0) == 1  # the young one, on request


def test_a_temp_file_a_writer_holds_is_never_removed(tmp_path: Path) -> None:
    # A slow write of another batch: old by its mtime, but its writer holds the lock.
    temp = aged(images(tmp_path) / ".s1.png.0123456789abcdef.tmp")
    with temp.open("rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        assert remove_stale_temp_files(tmp_path) == 0
        assert temp.exists()
    assert remove_stale_temp_files(tmp_path) == 1


def test_write_atomic_holds_the_lock_while_it_writes(tmp_path: Path) -> None:
    # The lock must be taken on the temp file, not released before the rename.
    seen: list[int] = []
    real_replace = os.replace

    def check_then_replace(src: str, dst: str, **kwargs: object) -> None:
        seen.append(remove_stale_temp_files(tmp_path, min_age_s=0))
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", check_then_replace)
        write_atomic(tmp_path, ("projects", "p1", "images", "s1.png"), b"picture")
    assert seen == [0]
    assert (images(tmp_path) / "s1.png").read_bytes() == b"picture"


def test_nothing_to_clean(tmp_path: Path) -> None:
    assert remove_stale_temp_files(tmp_path / "missing") == 0
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "p1").symlink_to(tmp_path)  # a linked project is skipped
    assert remove_stale_temp_files(tmp_path) == 0


def test_write_atomic_creates_and_replaces(tmp_path: Path) -> None:
    parts = ("projects", "p1", "images", "s1.png")
    write_atomic(tmp_path, parts, b"first")
    target = write_atomic(tmp_path, parts, b"second")
    assert target == tmp_path.joinpath(*parts)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["s1.png"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_write_atomic_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "s1.png"
    target.mkdir()  # the rename onto a directory fails after the data was written
    (target / "keep").write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomic(tmp_path, ("s1.png",), b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.png"]
    assert (target / "keep").read_bytes() == b"old"


@pytest.mark.parametrize("part", ["..", ".", "", "a/b", "nul\x00"])
def test_write_atomic_refuses_components_that_are_not_plain_names(
    tmp_path: Path, part: str
) -> None:
    with pytest.raises(UnsafePathError, match="not a plain file or folder name"):
        write_atomic(tmp_path, ("images", part), b"x")
    assert os.listdir(tmp_path) in ([], ["images"])


def export_store(tmp_path: Path) -> Store:
    folder = tmp_path / "data"
    folder.mkdir()
    return seeded_store(folder, sentences=2)


def test_an_export_is_written_by_the_one_atomic_writer(tmp_path: Path) -> None:
    store = export_store(tmp_path)
    target = tmp_path / "out" / "sentences.parquet"
    seen: list[list[str]] = []
    real_replace = os.replace

    def look_then_replace(src: str, dst: str, **kwargs: object) -> None:
        seen.append(sorted(os.listdir(target.parent)))
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", look_then_replace)
        assert store.export("sentences", target) == 2
    [before] = seen
    assert len(before) == 1 and is_temp_name(before[0]) and before[0].startswith(".sentences.")
    assert os.listdir(target.parent) == ["sentences.parquet"]
    assert target.stat().st_mode & 0o777 == 0o644  # as pictures; mkstemp's 0600 before


def test_a_failed_export_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    store = export_store(tmp_path)
    target = tmp_path / "sentences.parquet"
    target.write_bytes(b"old export")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", fail)
        with pytest.raises(StoreError, match=r"cannot write .*sentences.parquet.*No space"):
            store.export("sentences", target)
    assert target.read_bytes() == b"old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "sentences.parquet"]

"""Temp files of killed writes are removed at batch start; a live writer's never are."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storyboard.doctor import TEMP_FILE_MIN_AGE_S, remove_stale_temp_files
from storyboard.files import is_temp_name, write_atomic

OLD = TEMP_FILE_MIN_AGE_S + 5

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from storyboard import files

def die_before_rename(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = die_before_rename  # the process is killed between writing and renaming
files.write_atomic(Path(sys.argv[1]), ("projects", "p1", "images", "s1.png"), b"half" * 1000)
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
        cwd=Path(__file__).parent.parent,
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
    stale = [aged(folder / ".s1.png.0123456789abcdef.tmp"), aged(other / ".s9.png.k3j_x9q2.tmp")]
    young = aged(folder / ".s2.png.fedcba9876543210.tmp", age_s=1)
    kept = [
        young,
        aged(folder / "s3.png", b"a finished picture"),
        aged(folder / ".notes.tmp"),
        aged(folder / "s4.png.0123456789abcdef.tmp"),  # no leading dot: not our name
    ]
    target = aged(tmp_path / "precious")
    (folder / ".s5.png.aaaaaaaaaaaaaaaa.tmp").symlink_to(target)

    assert remove_stale_temp_files(tmp_path) == 2

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

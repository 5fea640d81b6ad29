"""Writing a file all-or-nothing, never through a link (POSIX, synchronous).

Used for finished pictures (below the data directory) and for Parquet exports (into the
folder the export was asked for: that folder is the trusted root). `write_atomic` writes
`.{name}.{16 hex}.tmp` next to the final name (folders reached through storyboard.files, so a
link among them is refused), holds an exclusive `flock` on it while writing, fsyncs, renames it
over the final name (a rename replaces a link found there, never its target) and fsyncs the
directory. `remove_stale_temp` deletes such files left by a killed writer: only names of that
pattern, older than a minimum age and not locked, so a writer that is still alive is never hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from storyboard.errors import UnsafePathError
from storyboard.files import READ_FLAGS, check_component, directory, stamp

# `.{final name}.{random}.tmp`: ours (16 hex digits) and mkstemp's of the writer before it.
TEMP_NAME = re.compile(r"\.(?P<final>[^/\x00]+)\.[A-Za-z0-9_]{6,32}\.tmp")


def write_atomic(root: Path, parts: Sequence[str], data: bytes) -> Path:
    """Write `data` to `root/parts...` all-or-nothing; missing folders are created.

    A link at the final name is replaced by the file (its target is untouched); a link
    among the folders is refused with UnsafePathError. Returns the path written.
    """
    write_stamped(root, parts, data)
    return root.joinpath(*parts)


def write_stamped(root: Path, parts: Sequence[str], data: bytes) -> str:
    """`write_atomic`, returning the written file's `storyboard.files.stamp`, taken before the
    rename: a writer replacing the file after it cannot lend it its own."""
    if not parts:
        raise UnsafePathError(f"{root} names a folder, not a file")
    name = check_component(parts[-1])
    with directory(root, parts[:-1], create=True) as dir_fd:
        temp = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=dir_fd,
        )
        try:
            with os.fdopen(fd, "wb") as handle:
                # Held until closed, i.e. until after the rename: remove_stale_temp skips it.
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), 0o644)
                os.fsync(handle.fileno())
                written = stamp(os.fstat(handle.fileno()))
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        # Makes the rename itself durable.
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    return written


def is_temp_name(name: str) -> bool:
    """True for the name of a temp file `write_atomic` writes (or its predecessor wrote)."""
    return TEMP_NAME.fullmatch(name) is not None


def remove_stale_temp(
    dir_fd: int,
    *,
    min_age_s: float,
    clock: Callable[[], float] = time.time,
    only: Collection[str] | None = None,
) -> list[str]:
    """Delete the temp files in the folder `dir_fd` whose writer is gone; return their names.

    A file is deleted only when its name is ours (and in `only`, when given), it is a regular
    file older than `min_age_s` and no writer holds its lock.
    """
    removed: list[str] = []
    now = clock()
    for name in sorted(os.listdir(dir_fd)):
        if not is_temp_name(name) or (only is not None and name not in only):
            continue
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # renamed meanwhile, or a link: not ours to touch
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age_s:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            # The name must still be the file we locked, not one renamed onto it since.
            current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    return removed

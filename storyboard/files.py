"""Disk access below a trusted root that never follows a symbolic link (POSIX, synchronous).

A path is a trusted root (the data directory or a project's directory: configuration, which
may itself be a link) plus components below it. Each component is opened relative to its
parent's descriptor with O_NOFOLLOW, so a link anywhere below the root -- there beforehand or
swapped in during the call -- is refused with UnsafePathError, never followed: nothing outside
the root is read, and nothing is written through a link. Files are checked on the opened
descriptor (fstat), so a FIFO or a device is refused without blocking, and the file checked is
the file read.

`write_atomic` writes `.{name}.{16 hex}.tmp` next to the final name, holds an exclusive
`flock` on it while writing, fsyncs, renames it over the final name (a rename replaces a link
found there, never its target) and fsyncs the directory. `remove_stale_temp` deletes such
files left by a killed writer: only names of that pattern, older than a minimum age and not
locked, so a writer that is still alive is never hit.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from storyboard.errors import UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# `.{final name}.{random}.tmp`: ours (16 hex digits) and mkstemp's of the writer before it.
TEMP_NAME = re.compile(r"\.(?P<final>[^/\x00]+)\.[A-Za-z0-9_]{6,32}\.tmp")


def _shown(root: Path, parts: Sequence[str]) -> str:
    return str(root.joinpath(*parts))


def check_component(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\x00" in part:
        raise UnsafePathError(f"path component {part!r} is not a plain file or folder name")
    return part


def _open_below(dir_fd: int, part: str, flags: int, shown: str) -> int:
    try:
        return os.open(check_component(part), flags, dir_fd=dir_fd)
    except OSError as exc:
        # Linux answers a link under O_NOFOLLOW with ELOOP, FreeBSD with EMLINK.
        if exc.errno in (errno.ELOOP, errno.EMLINK) or (
            exc.errno == errno.ENOTDIR and _is_link(dir_fd, part)
        ):
            raise UnsafePathError(
                f"{shown} is a symbolic link, which is never followed below the data "
                "directory; replace the link with the real file or folder",
                link=True,
            ) from exc
        raise


def _is_link(dir_fd: int, part: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir(root: Path, parts: Sequence[str], *, create: bool = False) -> int:
    """A descriptor of `root/parts...`, no component below `root` followed if a link.

    With `create`, missing folders are made (0o755). The caller closes the descriptor.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(check_component(part), 0o755, dir_fd=fd)
            child = _open_below(fd, part, _DIR_FLAGS, _shown(root, parts[: depth + 1]))
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def directory(root: Path, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    fd = open_dir(root, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def open_regular(root: Path, parts: Sequence[str]) -> BinaryIO:
    """`root/parts...` opened for reading: a regular file reached through no link.

    Raises UnsafePathError for a link or anything but a regular file (a FIFO never blocks:
    it is opened non-blocking and refused), IsADirectoryError for a folder, and the usual
    FileNotFoundError / NotADirectoryError.
    """
    if not parts:
        raise UnsafePathError(f"{root} names a folder, not a file")
    shown = _shown(root, parts)
    with directory(root, parts[:-1]) as dir_fd:
        fd = _open_below(dir_fd, parts[-1], _READ_FLAGS, shown)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", shown)
        if not stat.S_ISREG(mode):
            raise UnsafePathError(
                f"{shown} is not a regular file (a FIFO, socket or device); "
                "replace it with an image file"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_atomic(root: Path, parts: Sequence[str], data: bytes) -> Path:
    """Write `data` to `root/parts...` all-or-nothing; missing folders are created.

    A link at the final name is replaced by the file (its target is untouched); a link
    among the folders is refused with UnsafePathError. Returns the path written.
    """
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
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        # Makes the rename itself durable.
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    return root.joinpath(*parts)


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
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
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

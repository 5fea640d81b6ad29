"""Disk access below a trusted root that never follows a symbolic link (POSIX, synchronous).

A path is a trusted root (the data directory or a project's directory: configuration, which
may itself be a link) plus components below it. Each component is opened relative to its
parent's descriptor with O_NOFOLLOW, so a link anywhere below the root -- there beforehand or
swapped in during the call -- is refused with UnsafePathError, never followed: nothing outside
the root is read, and nothing is written through a link. Files are checked on the opened
descriptor (fstat), so a FIFO or a device is refused without blocking, and the file checked is
the file read. Writing a file all-or-nothing through these folders is storyboard.atomic's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from storyboard.errors import UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Non-blocking, so opening a FIFO returns at once (it is then refused); reset once checked.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
        fd = _open_below(dir_fd, parts[-1], READ_FLAGS, shown)
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


def stamp(status: os.stat_result) -> str:
    """A file's identity as text: inode, size and modification time. Every write through
    storyboard.atomic makes a new file renamed over the old one, so a rewritten picture gets
    another stamp even within the clock's resolution."""
    return f"{status.st_ino}-{status.st_size}-{status.st_mtime_ns}"

"""Reuse of pictures already made from exactly the same graph.

The key is the canonical hash of the final graph (prompt, seed, size, steps, LoRA, reference image
hashes, workflow), which the store records on every completed image job. A sentence whose graph
hashes the same as a picture on disk gets that picture without touching the GPU. Only a file
that still carries the hash in its PNG text (image.picture_hash: the current key or the one
older pictures have) is trusted: a picture that has since been replaced (its sentence
re-rendered) is a miss, not a wrong hit. The file is read without following links
(storyboard.files).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from storyboard import ids
from storyboard.errors import InvalidIdError, UnsafePathError
from storyboard.files import open_regular
from storyboard.image import picture_hash
from storyboard.store import ImageJob, Store


def cached_picture(
    store: Store, graph_hash: str, data_dir: Path, *, max_bytes: int
) -> bytes | None:
    """The bytes of a stored picture rendered from `graph_hash`, or None."""
    return picture_of(store.find_render(graph_hash), graph_hash, data_dir, max_bytes=max_bytes)


def picture_of(
    job: ImageJob | None, graph_hash: str, data_dir: Path, *, max_bytes: int
) -> bytes | None:
    """`cached_picture` for the job the store found (`find_render`, or a claim's
    `made_before`): its picture if it still carries `graph_hash`, else None."""
    if job is None or job.result_file is None:
        return None
    try:
        root = ids.project_dir(data_dir, job.project_id)
        with open_regular(root, PurePosixPath(job.result_file).parts) as handle:
            data = handle.read(max_bytes + 1)
    except (InvalidIdError, UnsafePathError, OSError):
        return None
    if len(data) > max_bytes:
        return None
    return data if picture_hash(data) == graph_hash else None

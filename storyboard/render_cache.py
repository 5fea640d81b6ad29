"""Reuse of pictures already made from exactly the same graph.

The key is the canonical hash of the final graph (prompt, seed, size, LoRA, reference image
hashes, workflow), which the store records on every completed image job. A sentence whose graph
hashes the same as a picture on disk gets that picture without touching the GPU. Only a file
that still carries the hash in its PNG text is trusted: a picture that has since been replaced
(its sentence re-rendered) is a miss, not a wrong hit.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from storyboard import ids
from storyboard.errors import InvalidIdError
from storyboard.store import Store

HASH_KEY = "workflow_hash"  # the PNG text key pipeline.provenance writes


def cached_picture(store: Store, graph_hash: str, data_dir: Path) -> bytes | None:
    """The bytes of a stored picture rendered from `graph_hash`, or None."""
    job = store.find_render(graph_hash)
    if job is None or job.result_file is None:
        return None
    try:
        path = ids.path_under(ids.project_dir(data_dir, job.project_id), job.result_file)
        data = path.read_bytes()
    except (InvalidIdError, OSError):
        return None
    return data if picture_hash(data) == graph_hash else None


def picture_hash(data: bytes) -> str | None:
    """The graph hash a finished PNG records, read from its header chunks only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Pillow writes text chunks before the image data: `info` has them without decoding.
            value = image.info.get(HASH_KEY)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return value if isinstance(value, str) else None

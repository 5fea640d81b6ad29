"""Finding, and on request repairing, what crashed or killed runs leave behind.

    findings = examine(store, data_dir, stale_after_s=600)           # report only
    findings = examine(store, data_dir, stale_after_s=600, repair=True)

What it looks for (each a `Finding.kind`):

- `dead-run-job`    an image job `running` for a run whose process on this machine is gone,
                    or (with `lease_s`) whose lease in the store expired
                    (storyboard.run_lock), however young.
- `stale-job`       an image job still `running` after `stale_after_s`: its run died.
- `stale-sentence`  a sentence `generating` with no live job behind it.
- `missing-image`   a sentence whose recorded image file is gone or does not decode.
- `orphan-image`    a file under `data/projects/*/images/` that no sentence records (as its
                    picture or its draft, `images/drafts/`).
- `temp-file`       a temporary file of an atomic write older than `stale_after_s`
                    (a process died between writing and renaming it).

Repairs: a dead run's jobs are released (no attempt spent), stale jobs are failed, and
their sentences put back to `pending` (still dirty);
a missing image makes its sentence dirty again; orphan images are moved, never deleted, to
`data/projects/{project}/orphaned-images/`; stale temp files are deleted (they are never a
finished picture). The Prefect side (a `gpu` slot held by no live run) is checked by
`flows.doctor_gpu`, since this library does not talk to Prefect.

`remove_stale_temp_files(data_dir)` is the temp-file repair alone, cheap enough for every
batch to run at its start: only files named as storyboard.atomic names its temp files, older
than `TEMP_FILE_MIN_AGE_S` and not locked by a writer, so a concurrent batch's write in
progress is never touched.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from storyboard import atomic, files, image
from storyboard.errors import UnsafePathError
from storyboard.ids import DRAFTS_DIR, IMAGES_DIR, THUMBS_DIR
from storyboard.run_lock import Holder, dead_runs, holder, release_dead_runs
from storyboard.store import Store
from storyboard.store.models import Sentence

ORPHAN_DIR = "orphaned-images"
KINDS = (
    "dead-run-job",
    "stale-job",
    "stale-sentence",
    "missing-image",
    "orphan-image",
    "temp-file",
)
# A live writer holds its temp file's lock; the age only covers the instant between creating
# the file and locking it, and file systems where locks do not reach other hosts.
TEMP_FILE_MIN_AGE_S = 60.0


@dataclass(frozen=True)
class Finding:
    kind: str
    project_id: str | None
    sentence_id: str | None
    detail: str
    path: Path | None = None
    repaired: bool = False


def _utcnow() -> datetime:
    return datetime.now(UTC)


def examine(
    store: Store,
    data_dir: Path,
    *,
    stale_after_s: float,
    repair: bool = False,
    lease_s: float | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> list[Finding]:
    """Every problem found (and, with `repair`, fixed), in a stable order. `lease_s`: runs
    whose lease is older are dead too (STORYBOARD_RUN_LEASE_S)."""
    if stale_after_s < 0:
        raise ValueError(f"stale_after_s must not be negative, got {stale_after_s}")
    now = clock()
    cutoff = now - timedelta(seconds=stale_after_s)
    findings = _stale_work(store, cutoff, lease_s)
    if repair and findings:
        release_dead_runs(store, lease_s=lease_s)
        store.reset_stale(stale_after_s)
        findings = [replace(f, repaired=True) for f in findings]
    sentences = {p.id: store.sentences(p.id) for p in store.projects()}
    missing = _missing_images(sentences, data_dir)
    if repair:
        for finding in missing:
            assert finding.project_id is not None and finding.sentence_id is not None
            store.mark_dirty(finding.project_id, [finding.sentence_id])
        missing = [replace(f, repaired=True) for f in missing]
    files = _stray_files(sentences, data_dir, cutoff)
    if repair:
        files = [_repair_file(f, data_dir) for f in files]
    return findings + missing + files


def _stale_work(store: Store, cutoff: datetime, lease_s: float | None) -> list[Finding]:
    found: list[Finding] = []
    live: set[tuple[str, str]] = set()
    jobs = store.running_jobs()
    dead = set(dead_runs(job.run_id for job in jobs))
    expired = set(store.expired_leases(lease_s)) if lease_s is not None else set()
    for job in jobs:
        if job.run_id in dead or (job.run_id in expired and holder(job.run_id) is not Holder.LIVE):
            why = (
                "the run's process on this machine is gone"
                if job.run_id in dead
                else f"the run's lease expired (not renewed for {lease_s:g} s)"
            )
            found.append(
                Finding(
                    "dead-run-job",
                    job.project_id,
                    job.sentence_id,
                    f"job {job.id} (run {job.run_id}, attempt {job.attempt}): {why}",
                )
            )
            continue
        if job.started_at >= cutoff:
            live.add((job.project_id, job.sentence_id))
            continue
        found.append(
            Finding(
                "stale-job",
                job.project_id,
                job.sentence_id,
                f"job {job.id} (run {job.run_id}, attempt {job.attempt}) running since "
                f"{job.started_at:%Y-%m-%d %H:%M:%S} UTC",
            )
        )
    for project in store.projects():
        for sentence in store.sentences(project.id):
            key = (sentence.project_id, sentence.id)
            if sentence.status == "generating" and key not in live:
                found.append(
                    Finding(
                        "stale-sentence",
                        sentence.project_id,
                        sentence.id,
                        "generating, but no live image job",
                    )
                )
    return found


def recorded_path(data_dir: Path, sentence: Sentence) -> Path | None:
    """Where the sentence's image file is, from the path the store recorded.

    The pipeline records it relative to the project directory (`images/x.png`), as the
    store documents; records relative to the data directory (`projects/{p}/images/x.png`)
    are accepted too.
    """
    if not sentence.image_file:
        return None
    recorded = Path(sentence.image_file)
    if recorded.is_absolute():
        return recorded
    if recorded.parts[:2] == ("projects", sentence.project_id):
        return data_dir / recorded
    return data_dir / "projects" / sentence.project_id / recorded


def _decodes(path: Path) -> bool:
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return image.decodes(data)


def _missing_images(sentences: dict[str, list[Sentence]], data_dir: Path) -> list[Finding]:
    found: list[Finding] = []
    for project_sentences in sentences.values():
        for sentence in project_sentences:
            path = recorded_path(data_dir, sentence)
            if path is None:
                continue
            if not path.is_file():
                detail = f"records {sentence.image_file}, which does not exist"
            elif not _decodes(path):
                detail = f"records {sentence.image_file}, which is not a readable image"
            else:
                continue
            found.append(Finding("missing-image", sentence.project_id, sentence.id, detail, path))
    return found


def _is_temp(path: Path) -> bool:
    return atomic.is_temp_name(path.name)


def remove_stale_temp_files(
    data_dir: Path,
    *,
    min_age_s: float = TEMP_FILE_MIN_AGE_S,
    clock: Callable[[], float] = time.time,
) -> int:
    """Delete the temp files killed writes left in `data/projects/*/images/`, `.../drafts/`
    and `.../thumbs/`; return how many.

    No link is followed (a project, images or thumbs folder that is a link is skipped).
    """
    projects = data_dir / "projects"
    try:
        names = sorted(
            entry.name for entry in os.scandir(projects) if entry.is_dir(follow_symlinks=False)
        )
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    folders = ((IMAGES_DIR,), (IMAGES_DIR, DRAFTS_DIR), (THUMBS_DIR,))
    for name, folder in itertools.product(names, folders):
        try:
            with files.directory(data_dir, ("projects", name, *folder)) as written:
                removed += len(atomic.remove_stale_temp(written, min_age_s=min_age_s, clock=clock))
        except (UnsafePathError, FileNotFoundError, NotADirectoryError):
            continue
    return removed


def _stray_files(
    sentences: dict[str, list[Sentence]], data_dir: Path, cutoff: datetime
) -> list[Finding]:
    projects_dir = data_dir / "projects"
    if not projects_dir.is_dir():
        return []
    found: list[Finding] = []
    for images in sorted(projects_dir.glob("*/images")):
        project_id = images.parent.name
        project = sentences.get(project_id, [])
        known = {
            path.resolve()
            for sentence in project
            if (path := recorded_path(data_dir, sentence)) is not None
        }
        known |= {
            (data_dir / "projects" / project_id / sentence.draft_file).resolve()
            for sentence in project
            if sentence.draft_file
        }
        for path in sorted(p for p in images.rglob("*") if p.is_file()):
            if _is_temp(path):
                modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                if modified < cutoff:
                    detail = "temporary file of an interrupted write"
                    found.append(Finding("temp-file", project_id, None, detail, path))
            elif path.resolve() not in known:
                owner = "unknown project" if project_id not in sentences else "no sentence"
                detail = f"recorded by {owner}"
                found.append(Finding("orphan-image", project_id, None, detail, path))
    return found


def _repair_file(finding: Finding, data_dir: Path) -> Finding:
    path = finding.path
    assert path is not None and finding.project_id is not None
    if finding.kind == "temp-file":
        # The same guarded delete as at batch start: never a file a live writer holds.
        with files.directory(path.parent, ()) as folder:
            gone = bool(atomic.remove_stale_temp(folder, min_age_s=0.0, only={path.name}))
        detail = "; deleted" if gone else "; kept: a writer still holds it"
        return replace(finding, repaired=gone, detail=finding.detail + detail)
    target_dir = data_dir / "projects" / finding.project_id / ORPHAN_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    counter = 0
    while target.exists():
        counter += 1
        target = target_dir / f"{path.stem}.{counter}{path.suffix}"
    os.replace(path, target)
    return replace(finding, repaired=True, detail=f"{finding.detail}; moved to {target}")

"""The batch's artifacts: live progress (done/total), the final table, the pictures and a
summary.

At the end of a batch that rendered (not a dry run) each project's contact sheet is redrawn
(storyboard.contact_sheet) and shown in the summary; the pictures artifact puts a thumbnail of
every finished picture beside its sentence, prompt, seed, seconds and status
(flows.batch_pictures). Seeds are text everywhere: the browser rounds numbers above 2**53.

Every artifact call, and the contact sheet, is best effort: a Prefect API failing mid-batch
costs a warning, never a sentence (the store is the truth; the artifacts only show it). Once
the API is found unreachable, no more artifact calls are made (tasks.api_reach), and the
progress artifact is updated from a thread of its own, so a call that waits out the client's
retries never holds up a lane.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import State
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from flows.batch_pictures import SHEET_WIDTH, Gallery, Thumbnails, data_uri, short
from storyboard.contact_sheet import write_contact_sheet
from storyboard.scheduler.outcome import NOT_ATTEMPTED, Outcome, Status
from storyboard.store import GpuTime, Sentence, Store
from tasks.api_reach import check_reach, recorded
from tasks.progress import best_effort, run_progress_text

# Artifact keys: Prefect keeps one history per key, so a batch's and an on-demand run's
# artifacts each get their flow's own (`BatchReport.keys`).
BATCH_KEYS = "image-batch"
ON_DEMAND_KEYS = "generate-image"
PROGRESS_KEY = f"{BATCH_KEYS}-progress"
RESULTS_KEY = f"{BATCH_KEYS}-results"
SUMMARY_KEY = f"{BATCH_KEYS}-summary"
PICTURES_KEY = f"{BATCH_KEYS}-pictures"
PICTURE_KEY = f"{ON_DEMAND_KEYS}-picture"  # an on-demand run's one picture
PROGRESS_INTERVAL_S = 0.5
CLOSE_WAIT_S = 1.0  # for the progress artifact's last update in flight
FAILED_STATUSES: tuple[Status, ...] = ("failed", "invalid")
SHOWN_FAILURES = 20


# Who in this process follows batches as they run (the `storyboard render` progress bar):
# called with (report, None) when a batch has loaded its sentences, then (report, outcome)
# per sentence; `report.lanes()` (once set) says what each lane renders now.
Listener = Callable[["BatchReport", Outcome | None], None]
_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


@contextmanager
def _registered(registry: list[Any], callback: Any) -> Iterator[None]:
    with _listeners_lock:
        registry.append(callback)
    try:
        yield
    finally:
        with _listeners_lock:
            registry.remove(callback)


def listening(listener: Listener) -> AbstractContextManager[None]:
    return _registered(_listeners, listener)


# Who in this process wants to know when a batch has ended (its claims released, its store
# closed), with its final state: `storyboard render` ends there when the API is gone.
Ended = Callable[[State[Any]], None]
_ended: list[Ended] = []


def on_end(callback: Ended) -> AbstractContextManager[None]:
    return _registered(_ended, callback)


def batch_ended(state: State[Any]) -> None:
    with _listeners_lock:
        callbacks = list(_ended)
    for callback in callbacks:
        callback(state)


def _tell(report: BatchReport, outcome: Outcome | None) -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        best_effort("batch listener", listener, report, outcome)


class BatchReport:
    def __init__(
        self,
        total: int,
        *,
        dry_run: bool,
        store: Store | None = None,
        data_dir: Path | None = None,
        run_id: str | None = None,
        gpu_hour_price: float | None = None,
        draft: bool = False,
        keys: str = BATCH_KEYS,
    ) -> None:
        self.total = total
        self.keys = keys  # the artifacts' key prefix: the flow's name
        self._noun = "batch" if keys == BATCH_KEYS else "on-demand run"
        self.draft = draft  # a draft pass: its pictures are drafts, its sheets draft sheets
        # The run's GPU time, read from the store at `publish` (every attempt's execution).
        self.run_id, self.gpu_hour_price = run_id, gpu_hour_price
        self.gpu: GpuTime | None = None
        self.gpu_lanes: dict[str, GpuTime] = {}  # per lane, when the run had several
        self.dry_run = dry_run
        # Both given: the pictures artifact and the contact sheets (a dry run makes neither).
        self.store = store
        self.data_dir = data_dir
        self.sheets: dict[str, Path] = {}
        self.outcomes: list[Outcome] = []
        self._last_update = 0.0
        self._started = time.monotonic()
        # What each lane renders now, for the progress text (tasks.progress.LaneBoard.text).
        self.lanes: Callable[[], str] | None = None
        _tell(self, None)
        self._progress = ProgressArtifact(
            recorded(
                "batch progress artifact",
                create_progress_artifact,
                progress=100.0 if total == 0 else 0.0,
                key=f"{self.keys}-progress",
                description=self._progress_text(),
            )
        )

    def _progress_text(self) -> str:
        return run_progress_text(
            len(self.outcomes),
            self.total,
            time.monotonic() - self._started,
            verb="validated" if self.dry_run else "done",
            lanes=self.lanes() if self.lanes is not None else "",
            failed=len(self.failed),
        )

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        _tell(self, outcome)
        now = time.monotonic()
        # Throttled: each update is an API call, sent by the artifact's own thread.
        if now - self._last_update >= PROGRESS_INTERVAL_S or len(self.outcomes) == self.total:
            self._last_update = now
            self._progress.offer(self._percent(), self._progress_text())

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * len(self.outcomes) / self.total

    @property
    def counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in FAILED_STATUSES]

    @property
    def not_attempted(self) -> int:
        return sum(1 for o in self.outcomes if o.status == NOT_ATTEMPTED)

    def publish(self) -> None:
        """Final values of every artifact (none once the API is found gone: the contact sheets
        are still drawn)."""
        self._progress.close()
        if self.store is not None and self.run_id is not None and not self.dry_run:
            self.gpu = best_effort("GPU time", self.store.gpu_seconds_of_run, self.run_id)
            lanes = best_effort("GPU time per lane", self.store.gpu_seconds_by_lane, self.run_id)
            self.gpu_lanes = lanes if lanes is not None and len(lanes) > 1 else {}
        check_reach()
        self._progress.update(self._percent(), self._progress_text())
        rows = [
            {
                "sentence": f"{o.project_id}/{o.sentence_id}",
                "status": o.status,
                "render s": o.seconds,
                "queue s": o.queue_s,
                "attempts": o.attempts,
                "seed": None if o.seed is None else str(o.seed),
                "image": o.image_file,
                "error": o.error,
            }
            for o in sorted(self.outcomes, key=lambda o: (o.project_id, o.sentence_id))
        ]
        recorded(
            "results table artifact",
            create_table_artifact,
            table=rows,
            key=f"{self.keys}-results",
            description=f"One row per sentence of this {self._noun}",
        )
        if self.store is not None and self.data_dir is not None and not self.dry_run:
            self._pictures(self.store, self.data_dir)
        recorded(
            "summary artifact",
            create_markdown_artifact,
            markdown=self.markdown(),
            key=f"{self.keys}-summary",
            description=f"Image {self._noun} summary",
        )

    def _pictures(self, store: Store, data_dir: Path) -> None:
        """Redraw each project's contact sheet, then publish the thumbnails artifact."""
        projects = sorted({o.project_id for o in self.outcomes})
        thumbnails = Thumbnails(
            {(o.project_id, made) for o in self.outcomes if (made := shown_picture(o)) is not None},
            draft=self.draft,
        )
        for project_id in projects:
            path = best_effort(
                f"contact sheet of {project_id}",
                write_contact_sheet,
                store,
                data_dir,
                project_id,
                on_decoded=thumbnails.keep,
                draft=self.draft,
            )
            if path is not None:
                self.sheets[project_id] = path
        sentences: dict[tuple[str, str], Sentence] = {}
        for project_id in projects:
            found = best_effort(f"sentences of {project_id}", store.sentences, project_id)
            sentences.update({(s.project_id, s.id): s for s in found or []})
        recorded(
            "pictures artifact",
            create_markdown_artifact,
            markdown=self.gallery(data_dir, sentences, thumbnails),
            key=f"{self.keys}-pictures",
            description="Every picture of this batch beside its sentence",
        )

    def gallery(
        self,
        data_dir: Path,
        sentences: dict[tuple[str, str], Sentence],
        thumbnails: Thumbnails | None = None,
    ) -> str:
        return pictures_markdown(self.outcomes, data_dir, sentences, thumbnails)

    def markdown(self) -> str:
        counts = self.counts
        title = (
            "Dry run (validation only)"
            if self.dry_run
            else "Draft pass (the finals stay dirty)"
            if self.draft
            else "Image batch"
        )
        lines = [
            f"# {title}",
            "",
            f"{self.total} sentence(s)",
            "",
            "| status | count |",
            "|---|---|",
        ]
        lines += [f"| {status} | {count} |" for status, count in sorted(counts.items())]
        # Render time only (not queue wait, not storing), and only of pictures ComfyUI made.
        seconds = [o.seconds for o in self.outcomes if o.status != "cached" and o.seconds]
        if seconds:
            lines += ["", f"Mean render time per image: {sum(seconds) / len(seconds):.2f} s"]
        if self.gpu is not None:
            lines += ["", f"GPU time of this run: {self.gpu.text(self.gpu_hour_price)}"]
            lines += [
                f"- lane {lane}: {t.text(self.gpu_hour_price)}" for lane, t in self.lane_times
            ]
        for project_id, path in sorted(self.sheets.items()):
            uri = data_uri(path.parent, [path.name], SHEET_WIDTH)
            heading = "Drafts" if self.draft else "Storyboard"
            lines += ["", f"## {heading} {project_id}", "", f"`{path}`"]
            if uri is not None:
                lines += ["", f"![contact sheet of {project_id}]({uri})"]
        failed = self.failed
        if failed:
            lines += ["", "## Failures", ""]
            for outcome in failed[:SHOWN_FAILURES]:
                error = (outcome.error or "").replace("\n", " ").replace("|", "\\|")
                lines.append(f"- `{outcome.project_id}/{outcome.sentence_id}`: {error}")
            if len(failed) > SHOWN_FAILURES:
                lines.append(f"- ... and {len(failed) - SHOWN_FAILURES} more (see the table)")
        return "\n".join(lines) + "\n"

    @property
    def lane_times(self) -> list[tuple[str, GpuTime]]:
        """Each lane's GPU time in this run, by name; none for a run on one lane."""
        return sorted(self.gpu_lanes.items())

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "outcomes": [asdict(o) for o in self.outcomes],
            "gpu": None if self.gpu is None else asdict(self.gpu),
            "gpu_lanes": {lane: asdict(time) for lane, time in self.lane_times},
        }


class ProgressArtifact:
    """The run's progress artifact (`artifact_id`; None when it could not be made), updated
    by a thread of its own with the latest value offered: the threads that offer it feed the
    GPUs, and an update to an API that went away waits out the client's retries."""

    def __init__(self, artifact_id: Any) -> None:
        self._id = artifact_id
        self._lock = threading.Lock()
        self._latest: tuple[float, str] | None = None
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def offer(self, percent: float, text: str) -> None:
        with self._lock:
            if self._closed or self._id is None:
                return
            self._latest = (percent, text)
            if self._thread is None:
                # In the run's context: its warning, if it has one, is the run's.
                context = contextvars.copy_context()
                self._thread = threading.Thread(
                    target=context.run, args=(self._run,), name="progress-artifact", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                latest, self._latest = self._latest, None
                if self._closed:
                    return
            if latest is not None:
                self.update(*latest)

    def update(self, percent: float, text: str) -> None:
        """One update, now, on this thread; none more once one has failed (warned once)."""
        if self._id is None:
            return
        if recorded("batch progress update", _update_progress, self._id, percent, text) is None:
            self._id = None

    def close(self) -> None:
        """No more updates from the thread. One it is making is waited for a moment, so the
        final value is sent last; one that waits out the client's retries is left to them."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(CLOSE_WAIT_S)


def _update_progress(artifact_id: Any, percent: float, text: str) -> bool:
    # The artifact's PATCH alone. Not prefect.artifacts.update_progress_artifact: its client is
    # never closed, and leaves a socket to the API open per call. Nor the client's
    # update_artifact: it also emits an event, and an update still in flight as the process
    # exits (`close` waits only a moment) emits it once Prefect's events worker can no longer
    # start, a traceback after the batch's last line. The artifact itself is what the UI shows.
    update = ArtifactUpdate(data=percent, description=text)
    with get_client(sync_client=True) as client:
        client.request(
            "PATCH",
            "/artifacts/{id}",
            path_params={"id": artifact_id},
            json=update.model_dump(mode="json", exclude_unset=True),
        )
    return True


def shown_picture(o: Outcome) -> str | None:
    """The picture an outcome shows: none for a sentence this batch did not make one for."""
    return o.image_file if o.status in ("completed", "cached", "stale") else None


def pictures_markdown(
    outcomes: Iterable[Outcome],
    data_dir: Path,
    sentences: dict[tuple[str, str], Sentence],
    thumbnails: Thumbnails | None = None,
    title: str = "Pictures of this batch",
) -> str:
    """The pictures artifact: each outcome's thumbnail beside its sentence."""
    gallery = Gallery()
    thumbnails = thumbnails or Thumbnails(set())
    for o in sorted(outcomes, key=lambda o: (o.project_id, o.sentence_id)):
        sentence = sentences.get((o.project_id, o.sentence_id))
        label = f"{o.project_id}/{o.sentence_id}"
        made = shown_picture(o)
        if made is not None and gallery.full:
            picture = gallery.named(made)
        else:
            uri = None if made is None else thumbnails.uri(data_dir, o.project_id, made)
            picture = gallery.image(uri, label, o.image_file)
        # A failed sentence's seed is the one it rendered with: it stays on the sentence.
        seed = o.seed if o.seed is not None else sentence.seed if sentence else None
        about = [
            label,
            o.status if o.error is None else f"{o.status}: {short(o.error, 120)}",
            *([] if seed is None else [f"seed {seed}"]),
            *([] if o.seconds is None else [f"render {o.seconds:.2f} s"]),
        ]
        gallery.add(
            picture,
            about,
            sentence.text if sentence else "",
            sentence.image_prompt if sentence else "",
        )
    return gallery.markdown(title)


def picture_markdown(outcome: Outcome, data_dir: Path, sentence: Sentence | None) -> str:
    """An on-demand run's picture artifact: its row as the batch's pictures artifact shows it,
    and in words when the run made no picture."""
    label = f"{outcome.project_id}/{outcome.sentence_id}"
    sentences = {} if sentence is None else {(outcome.project_id, outcome.sentence_id): sentence}
    markdown = pictures_markdown([outcome], data_dir, sentences, title=f"Picture of {label}")
    if shown_picture(outcome) is None:
        why = outcome.error or outcome.status
        markdown += f"\nNo picture from this run ({outcome.status}): {why}\n"
    return markdown


def publish_picture(outcome: Outcome, data_dir: Path, sentence: Sentence | None) -> None:
    """The on-demand run's picture artifact (best effort, as every artifact)."""
    recorded(
        "picture artifact",
        create_markdown_artifact,
        markdown=picture_markdown(outcome, data_dir, sentence),
        key=PICTURE_KEY,
        description=f"The picture of {outcome.project_id}/{outcome.sentence_id} this run made",
    )

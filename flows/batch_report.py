"""The batch's artifacts: live progress (done/total), the final table and a summary.

Every artifact call is best effort: a Prefect API failing mid-batch costs a warning, never a
sentence (the store is the truth; the artifacts only show it).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.lane_feed import NOT_ATTEMPTED, Outcome, Status
from tasks.progress import best_effort

PROGRESS_KEY = "image-batch-progress"
RESULTS_KEY = "image-batch-results"
SUMMARY_KEY = "image-batch-summary"
PROGRESS_INTERVAL_S = 0.5
FAILED_STATUSES: tuple[Status, ...] = ("failed", "invalid")
SHOWN_FAILURES = 20


class BatchReport:
    def __init__(self, total: int, *, dry_run: bool) -> None:
        self.total = total
        self.dry_run = dry_run
        self.outcomes: list[Outcome] = []
        self._last_update = 0.0
        self._artifact_id = best_effort(
            "batch progress artifact",
            create_progress_artifact,
            progress=100.0 if total == 0 else 0.0,
            key=PROGRESS_KEY,
            description=self._progress_text(),
        )

    def _progress_text(self) -> str:
        verb = "validated" if self.dry_run else "done"
        return f"{len(self.outcomes)}/{self.total} sentences {verb}"

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        now = time.monotonic()
        # Throttled: an update is an API call, and this runs on the thread feeding the GPU.
        if now - self._last_update >= PROGRESS_INTERVAL_S or len(self.outcomes) == self.total:
            self._last_update = now
            self._publish_progress()

    def _publish_progress(self) -> None:
        # None once its creation or an update failed (warned once): no more calls, since
        # each may wait out the client's retries on the thread feeding the GPU.
        if self._artifact_id is None:
            return
        percent = 100.0 if self.total == 0 else 100.0 * len(self.outcomes) / self.total
        done = best_effort(
            "batch progress update",
            update_progress_artifact,
            artifact_id=self._artifact_id,
            progress=percent,
            description=self._progress_text(),
        )
        if done is None:
            self._artifact_id = None

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
        """Final values of every artifact."""
        self._publish_progress()
        rows = [
            {
                "sentence": f"{o.project_id}/{o.sentence_id}",
                "status": o.status,
                "render s": o.seconds,
                "queue s": o.queue_s,
                "attempts": o.attempts,
                "seed": o.seed,
                "image": o.image_file,
                "error": o.error,
            }
            for o in sorted(self.outcomes, key=lambda o: (o.project_id, o.sentence_id))
        ]
        best_effort(
            "results table artifact",
            create_table_artifact,
            table=rows,
            key=RESULTS_KEY,
            description="One row per sentence of this batch",
        )
        best_effort(
            "summary artifact",
            create_markdown_artifact,
            markdown=self.markdown(),
            key=SUMMARY_KEY,
            description="Image batch summary",
        )

    def markdown(self) -> str:
        counts = self.counts
        title = "Dry run (validation only)" if self.dry_run else "Image batch"
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
        failed = self.failed
        if failed:
            lines += ["", "## Failures", ""]
            for outcome in failed[:SHOWN_FAILURES]:
                error = (outcome.error or "").replace("\n", " ").replace("|", "\\|")
                lines.append(f"- `{outcome.project_id}/{outcome.sentence_id}`: {error}")
            if len(failed) > SHOWN_FAILURES:
                lines.append(f"- ... and {len(failed) - SHOWN_FAILURES} more (see the table)")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "outcomes": [asdict(o) for o in self.outcomes],
        }

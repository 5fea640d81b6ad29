"""`storyboard render`: the main job from a terminal, and the `storyboard` console entry point.

    storyboard render [PROJECT] [--limit N] [--force] [--dry-run] [--draft]

runs the `image-batch` flow in this process: on Prefect's embedded API, or recorded on the
server PREFECT_API_URL names when it is set. A progress bar shows done/total, the ETA and the
sentence each lane renders now, with a line per finished sentence above it (plain lines when
stderr is not a terminal); a table of every sentence follows. Exit status 0 only if every
sentence completed (rendered, reused, or valid in a dry run); 1 otherwise, with the run's
message on one line, never a traceback. Ctrl-C or SIGTERM ends the batch at once (its jobs
given back, its prompts off the server) with the INTERRUPTED line and 130 / 143.

The library's parser (storyboard.cli) gets `render` through its `extra` hook: the library
never imports this layer. Prefect is imported only when a batch runs, so other commands stay
quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from storyboard import cli
from storyboard.errors import StoryboardError
from storyboard.ids import validate_id

if TYPE_CHECKING:
    from prefect import State

    from flows.batch_report import BatchReport
    from storyboard.scheduler.outcome import Outcome

DONE_STATUSES = ("completed", "cached", "valid")
INTERRUPTED = "image-batch: interrupted; its unfinished sentences stay dirty"
DESCRIPTION = (
    "Render the dirty sentences (all with --force) of PROJECT, or of every project, with the"
    " image-batch flow: embedded Prefect, or the server PREFECT_API_URL names. Exit status 0"
    " only if every sentence completed."
)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--limit must be at least 1, got {value}")
    return value


def _project(text: str) -> str:
    try:
        return validate_id(text, "project id")
    except StoryboardError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "project", nargs="?", type=_project, help="only this project (default: all projects)"
    )
    parser.add_argument(
        "--limit", type=_limit, metavar="N", help="at most N sentences (in position order)"
    )
    parser.add_argument(
        "--force", action="store_true", help="render every sentence, not only the dirty ones"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every sentence against ComfyUI; render and change nothing",
    )
    parser.add_argument(
        "--draft",
        action="store_true",
        help="draw a quick draft of every sentence whose draft is missing or stale"
        " (STORYBOARD_DRAFT_STEPS, same size and seed) into images/drafts/ and draft-sheet.png;"
        " the finals stay dirty",
    )
    parser.set_defaults(handler=render_command)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render the dirty sentences (the image-batch flow) with a progress bar",
        description=DESCRIPTION,
    )
    add_arguments(parser)


class Progress:
    """The terminal's view of one batch: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, stream: Any = None, *, live: bool | None = None) -> None:
        from rich.console import Console

        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.console = Console(file=self.stream, force_terminal=self.live or None)
        self.outcomes: list[Outcome] = []
        self.total = 0
        self.started = time.monotonic()
        self.report: BatchReport | None = None
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, report: BatchReport, outcome: Outcome | None) -> None:
        self.report = report
        self.total = report.total
        if outcome is None:
            self.started = time.monotonic()
            self._start_bar()
            return
        self.outcomes.append(outcome)
        label = f"{outcome.project_id}/{outcome.sentence_id} {outcome.status}"
        if self._bar is not None:
            self._bar.update(self._task, completed=len(self.outcomes), total=self.total)
            self._bar.console.print(label, highlight=False)  # above the bar, kept on screen
        else:
            done = len(self.outcomes)
            now = self.now()
            failed = f", {self.failed} failed" if self.failed else ""
            line = f"[{done}/{self.total}{failed}] {label}{self._eta(done)}"
            print(line + (f"; rendering {now}" if now and done < self.total else ""),
                  file=self.stream, flush=True)  # fmt: skip

    @property
    def failed(self) -> int:
        """Sentences of this batch that failed so far: shown beside done/total."""
        return sum(1 for o in self.outcomes if o.status == "failed")

    def now(self) -> str:
        """What each lane renders now (`lane: project/sentence`), as the batch keeps it."""
        lanes = self.report.lanes if self.report is not None else None
        return lanes() if lanes is not None else ""

    def _eta(self, done: int) -> str:
        left = self.total - done
        if left <= 0 or done == 0:
            return ""
        return f" (ETA {(time.monotonic() - self.started) / done * left:.0f} s)"

    def _start_bar(self) -> None:
        if not self.live or self._bar is not None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            RenderableColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        view = self

        class Now(RenderableColumn):
            """Drawn at every refresh: the sentence each lane renders at this moment."""

            def render(self, task: Any) -> Text:
                return Text(view.now())

        class Failed(RenderableColumn):
            """How many sentences failed so far; nothing while none has."""

            def render(self, task: Any) -> Text:
                return Text(f"{view.failed} failed", style="red") if view.failed else Text("")

        self._bar = Progress(
            TextColumn("rendering"),
            BarColumn(),
            MofNCompleteColumn(),
            Failed(),
            TimeRemainingColumn(),
            Now(),
            console=self.console,
        )
        self._task = self._bar.add_task("batch", total=self.total)
        self._bar.start()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def table(self) -> str:
        from storyboard.commands.store import format_table

        rows = [
            [
                f"{o.project_id}/{o.sentence_id}",
                o.status,
                "" if o.seed is None else str(o.seed),  # as text: exact above 2**53
                "" if o.seconds is None else f"{o.seconds:.2f}",
                o.error or o.image_file or "",
            ]
            for o in sorted(self.outcomes, key=lambda o: (o.project_id, o.sentence_id))
        ]
        return format_table(["sentence", "status", "seed", "render s", "image / error"], rows)


@contextmanager
def _quiet_console_logs() -> Iterator[None]:
    """Prefect's INFO lines would tear the bar: its console handlers show warnings only while
    the bar runs (the run's logs in the UI keep everything)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [
        h
        for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs")
        for h in logging.getLogger(name).handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def render(args: argparse.Namespace, *, progress: Progress | None = None) -> int:
    """Run image-batch with the command's options; 0 only if every sentence completed."""
    # The embedded API's start limit and telemetry are set by importing this package
    # (flows/__init__.py), before prefect.
    from flows.batch_report import listening, on_end
    from flows.image_batch import api_url, image_batch
    from tasks.api_reach import REACH

    if api_url() is None:
        # Only here: importing the API server's module costs ~1 s of CPU, wasted on a
        # batch that reports to a Prefect server.
        from flows.embedded_api import use_embedded_api

        use_embedded_api()
    view = progress if progress is not None else Progress()

    def end_without_api(state: State[Any]) -> None:
        """The batch has ended, its claims released and its store closed, with its Prefect
        API gone: say what it did and exit now. Prefect would first try to record the run's
        end, its logs and every event again, each waiting out its retries: minutes."""
        if REACH.gone is None:
            return
        view.stop()
        code = _finish(view, state)
        print(f"image-batch: not recorded in Prefect: {REACH.gone}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    try:
        with _quiet_console_logs(), listening(view), on_end(end_without_api):
            state = image_batch(
                project_id=args.project,
                limit=args.limit,
                force=args.force,
                dry_run=args.dry_run,
                draft=args.draft,
                return_state=True,
            )
    except RuntimeError as exc:
        # Prefect's client says so with a RuntimeError; anything else is a bug to show whole.
        if str(exc).startswith("Failed to reach API"):
            fix = "start that Prefect server, or unset PREFECT_API_URL to run on the embedded API"
        elif str(exc).startswith("Timed out while attempting to connect to ephemeral"):
            fix = "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or use a Prefect server"
        else:
            raise
        print(f"error: {str(exc).rstrip('.')}: {fix}", file=sys.stderr)
        return 1
    finally:
        view.stop()
    return _finish(view, state)


def _finish(view: Progress, state: State[Any]) -> int:
    """Print the table and the run's message; the exit status: 0 only if every sentence
    completed."""
    if view.outcomes:
        print(view.table())
    report = view.report
    if report is not None and report.gpu is not None and report.gpu.attempts:
        print(f"GPU time: {report.gpu.text(report.gpu_hour_price)}")
        for lane, time_on in report.lane_times:
            print(f"  lane {lane}: {time_on.text(report.gpu_hour_price)}")
    print(f"image-batch: {state.name}: {state.message}")
    every_done = all(o.status in DONE_STATUSES for o in view.outcomes)
    return 0 if state.is_completed() and every_done else 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: the batch ends the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signum


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread for the block. Python's default would end
    the process on the spot: no jobs given back, and the embedded API left running for good.
    During the flow run Prefect's own handler comes first; it sends the signal again to this
    one once the flow has ended."""

    def terminated(signum: int, frame: object) -> None:
        raise Terminated(signum)

    try:
        before = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: no handler of ours, Python's default stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def render_command(args: argparse.Namespace) -> int:
    """`render` as a command: `render`, ended by Ctrl-C or SIGTERM with the INTERRUPTED line
    and 128 + the signal's number (130, 143), as a shell reports a process a signal ended."""
    from prefect.exceptions import TerminationSignal

    with _sigterm_as_interrupt():
        try:
            return render(args)
        except (KeyboardInterrupt, TerminationSignal) as exc:
            # The batch has already given back its jobs and prompts.
            print(INTERRUPTED, file=sys.stderr)
            return 128 + int(getattr(exc, "signal", signal.SIGINT))


def main(argv: Sequence[str] | None = None) -> int:
    """The `storyboard` console entry point: the library's commands and `render`."""
    return cli.main(argv, extra=[register])


def render_main(argv: Sequence[str] | None = None, *, prog: str = "storyboard render") -> int:
    """`render` on its own (`python -m flows.image_batch` runs it)."""
    parser = cli.Parser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return render_command(args)
    except StoryboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""One store file, shared by the content store and the job ledger.

Opening it creates its folder and brings the schema up to date; every public
method of the classes built on `Tables` is then one transaction (see
`connection`, also for `keep_open_s`: how long the file stays open between
transactions, 0 = closed after each). Rows are read into the pydantic models
of `models`.
"""

# SQL here is assembled only from constant column lists; values always go through parameters.
# ruff: noqa: S608

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from storyboard.backoff import default_backoff
from storyboard.errors import NotFoundError, StoreError
from storyboard.store.connection import BATCH_MAX_HOLD_S, Connection, Database
from storyboard.store.migrations import apply_migrations
from storyboard.store.models import Sentence

T = TypeVar("T")

SENTENCE_COLUMNS = ", ".join(Sentence.model_fields)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Tables:
    """The DuckDB file under both halves of the store: transactions, clock, row reading."""

    def __init__(
        self,
        path: Path,
        *,
        lock_timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Callable[[int], float] = default_backoff,
        clock: Callable[[], datetime] = _utcnow,
        keep_open_s: float = 0.0,
        max_hold_s: float = BATCH_MAX_HOLD_S,
    ) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._db = Database(
            self.path,
            lock_timeout_s=lock_timeout_s,
            sleep=sleep,
            backoff=backoff,
            keep_open_s=keep_open_s,
            max_hold_s=max_hold_s,
        )
        self._clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for {self.path}: {exc}") from exc
        self._run(lambda con: apply_migrations(con, self._now()))

    def close(self) -> None:
        """Let go of a file kept open (`keep_open_s`); the next call opens it again."""
        self._db.close()

    def _now(self) -> datetime:
        # TIMESTAMP columns hold naive UTC.
        return self._clock().astimezone(UTC).replace(tzinfo=None)

    def _run(self, op: Callable[[Connection], T]) -> T:
        return self._db.run(op)

    @staticmethod
    def _rows(con: Connection, model: type[Any], sql: str, params: Sequence[object]) -> list[Any]:
        cursor = con.execute(sql, params)
        names = [d[0] for d in cursor.description or ()]
        return [
            model.model_validate(dict(zip(names, row, strict=True))) for row in cursor.fetchall()
        ]

    def _sentence(self, con: Connection, project_id: str, sentence_id: str) -> Sentence:
        found = self._rows(
            con,
            Sentence,
            f"SELECT {SENTENCE_COLUMNS} FROM sentences WHERE project_id = ? AND id = ?",
            [project_id, sentence_id],
        )
        if not found:
            raise NotFoundError(f"no sentence {sentence_id!r} in project {project_id!r}")
        return found[0]  # type: ignore[no-any-return]

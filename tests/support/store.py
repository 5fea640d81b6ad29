"""Shared builders for the store tests: a real DuckDB file per test, a settable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from storyboard.store import Character, Project, SentenceInput, Store


class Clock:
    """A clock the test moves by hand, for staleness without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sentence(sentence_id: str, position: int, **fields: object) -> SentenceInput:
    data: dict[str, object] = {
        "id": sentence_id,
        "project_id": "p1",
        "position": position,
        "text": f"Sentence {sentence_id}.",
        "image_prompt": f"a quiet harbour, picture {sentence_id}",
    }
    data.update(fields)
    return SentenceInput.model_validate(data)


def seeded_store(tmp_path: Path, *, sentences: int = 3, **options: object) -> Store:
    """A store with project p1, characters ana and ben, and sentences s1..sN."""
    store = Store(tmp_path / "store.duckdb", **options)  # type: ignore[arg-type]
    store.upsert(
        projects=[Project(id="p1", name="Project one", lora_name="style.safetensors")],
        characters=[
            Character(id="ana", project_id="p1", name="Ana", reference_images=["refs/ana.png"]),
            Character(id="ben", project_id="p1", name="Ben"),
        ],
        sentences=[sentence(f"s{i}", i) for i in range(1, sentences + 1)],
    )
    return store

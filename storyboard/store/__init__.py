"""The sentence store: projects, characters, sentences and image jobs in DuckDB.

Paths the store holds (character reference images, image files) are relative
to the project's directory, `data/projects/{project}/`.
"""

from storyboard.store.connection import default_backoff
from storyboard.store.interchange import TABLES, Table
from storyboard.store.migrations import MIGRATIONS, SCHEMA_VERSION
from storyboard.store.models import (
    IMAGE_INPUTS,
    SENTENCE_STATUSES,
    Character,
    ImageJob,
    ImportResult,
    JobStatus,
    Project,
    RenderInputs,
    Sentence,
    SentenceInput,
    SentenceStatus,
)
from storyboard.store.store import RELEASED_ERROR, STALE_ERROR, Store

__all__ = [
    "IMAGE_INPUTS",
    "MIGRATIONS",
    "RELEASED_ERROR",
    "SCHEMA_VERSION",
    "SENTENCE_STATUSES",
    "STALE_ERROR",
    "TABLES",
    "Character",
    "ImageJob",
    "ImportResult",
    "JobStatus",
    "Project",
    "RenderInputs",
    "Sentence",
    "SentenceInput",
    "SentenceStatus",
    "Store",
    "Table",
    "default_backoff",
]

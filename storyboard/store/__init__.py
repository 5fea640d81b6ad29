"""The sentence store: projects, characters, sentences and image jobs in DuckDB.

Paths the store holds (character reference images, image files) are relative
to the project's directory, `data/projects/{project}/`.

`Store` (store.py: content) inherits `JobLedger` (ledger.py: image jobs); both
stand on `tables.Tables`, one file with one transaction per call.
"""

from storyboard.store.interchange import TABLES, Table
from storyboard.store.ledger import (
    RELEASED_ERROR,
    STALE_ERROR,
    Claimed,
    Completion,
    GpuTime,
    JobLedger,
)
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
    RunLease,
    Sentence,
    SentenceInput,
    SentenceStatus,
)
from storyboard.store.store import Store

__all__ = [
    "IMAGE_INPUTS",
    "MIGRATIONS",
    "RELEASED_ERROR",
    "SCHEMA_VERSION",
    "SENTENCE_STATUSES",
    "STALE_ERROR",
    "TABLES",
    "Character",
    "Claimed",
    "Completion",
    "GpuTime",
    "ImageJob",
    "ImportResult",
    "JobLedger",
    "JobStatus",
    "Project",
    "RenderInputs",
    "RunLease",
    "Sentence",
    "SentenceInput",
    "SentenceStatus",
    "Store",
    "Table",
]

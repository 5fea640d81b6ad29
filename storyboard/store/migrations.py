"""The schema as an ordered, append-only list of migrations.

Each applied migration is recorded in `_migrations`; opening a store applies
the ones it has not seen, in order, in one transaction. Never edit or reorder
an entry that has shipped: append a new one.

No FOREIGN KEY constraints: DuckDB refuses to update or upsert a referenced
parent row, which would break re-importing a project. References are checked
by the store in the same transaction that writes them.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import duckdb

from storyboard.errors import StoreError


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial schema",
        """
        CREATE TABLE projects (
            id            VARCHAR PRIMARY KEY,
            name          VARCHAR NOT NULL,
            lora_name     VARCHAR,
            lora_strength DOUBLE NOT NULL DEFAULT 1.0,
            created_at    TIMESTAMP NOT NULL,
            updated_at    TIMESTAMP NOT NULL
        );
        CREATE TABLE characters (
            project_id       VARCHAR NOT NULL,
            id               VARCHAR NOT NULL,
            name             VARCHAR NOT NULL,
            reference_images VARCHAR[] NOT NULL,
            lora_name        VARCHAR,
            lora_strength    DOUBLE,
            created_at       TIMESTAMP NOT NULL,
            updated_at       TIMESTAMP NOT NULL,
            PRIMARY KEY (project_id, id)
        );
        CREATE TABLE sentences (
            project_id      VARCHAR NOT NULL,
            id              VARCHAR NOT NULL,
            position        INTEGER NOT NULL,
            text            VARCHAR NOT NULL,
            image_prompt    VARCHAR NOT NULL,
            negative_prompt VARCHAR,
            character_ids   VARCHAR[] NOT NULL,
            lora_name       VARCHAR,
            lora_strength   DOUBLE,
            seed            BIGINT,
            image_file      VARCHAR,
            image_dirty     BOOLEAN NOT NULL DEFAULT TRUE,
            status          VARCHAR NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'generating', 'completed', 'failed')),
            last_error      VARCHAR,
            image_revision  INTEGER NOT NULL DEFAULT 1,
            created_at      TIMESTAMP NOT NULL,
            updated_at      TIMESTAMP NOT NULL,
            PRIMARY KEY (project_id, id)
        );
        CREATE TABLE image_jobs (
            id            VARCHAR PRIMARY KEY,
            project_id    VARCHAR NOT NULL,
            sentence_id   VARCHAR NOT NULL,
            status        VARCHAR NOT NULL
                CHECK (status IN ('running', 'completed', 'failed')),
            attempt       INTEGER NOT NULL,
            prompt_id     VARCHAR,
            run_id        VARCHAR NOT NULL,
            started_at    TIMESTAMP NOT NULL,
            finished_at   TIMESTAMP,
            duration_s    DOUBLE,
            seed          BIGINT,
            workflow_hash VARCHAR,
            result_file   VARCHAR,
            error         VARCHAR,
            revision      INTEGER NOT NULL
        );
        CREATE INDEX image_jobs_sentence ON image_jobs (project_id, sentence_id);
        """,
    ),
    Migration(
        2,
        "image job queue wait and render time",
        # duration_s stays the whole attempt, start to end; queue_s is the wait in the
        # server's queue and render_s the prompt's own execution, so a busy shared server's
        # queue is not counted as render time.
        """
        ALTER TABLE image_jobs ADD COLUMN queue_s DOUBLE;
        ALTER TABLE image_jobs ADD COLUMN render_s DOUBLE;
        """,
    ),
    Migration(
        3,
        "released image jobs",
        # A job given back (its run ended, its lane went away) is not a failed attempt: it
        # gets a status of its own. DuckDB cannot alter a CHECK constraint, so the table is
        # copied; jobs released before are recognised by the error text they were given.
        """
        CREATE TABLE image_jobs_3 (
            id            VARCHAR PRIMARY KEY,
            project_id    VARCHAR NOT NULL,
            sentence_id   VARCHAR NOT NULL,
            status        VARCHAR NOT NULL
                CHECK (status IN ('running', 'completed', 'failed', 'released')),
            attempt       INTEGER NOT NULL,
            prompt_id     VARCHAR,
            run_id        VARCHAR NOT NULL,
            started_at    TIMESTAMP NOT NULL,
            finished_at   TIMESTAMP,
            duration_s    DOUBLE,
            seed          BIGINT,
            workflow_hash VARCHAR,
            result_file   VARCHAR,
            error         VARCHAR,
            revision      INTEGER NOT NULL,
            queue_s       DOUBLE,
            render_s      DOUBLE
        );
        INSERT INTO image_jobs_3 SELECT id, project_id, sentence_id,
            CASE WHEN status = 'failed'
                AND error = 'released: the run ended before this attempt finished'
                THEN 'released' ELSE status END,
            attempt, prompt_id, run_id, started_at, finished_at, duration_s, seed,
            workflow_hash, result_file, error, revision, queue_s, render_s
            FROM image_jobs;
        DROP INDEX image_jobs_sentence;
        DROP TABLE image_jobs;
        ALTER TABLE image_jobs_3 RENAME TO image_jobs;
        CREATE INDEX image_jobs_sentence ON image_jobs (project_id, sentence_id);
        """,
    ),
    Migration(
        4,
        "run leases",
        # A run's heartbeat: renewed while it may hold claims, so a run on another machine
        # that stops renewing is known dead within the lease, and ended once it let go of
        # them (storyboard.run_lock).
        """
        CREATE TABLE run_leases (
            run_id     VARCHAR PRIMARY KEY,
            host       VARCHAR NOT NULL,
            pid        INTEGER NOT NULL,
            renewed_at TIMESTAMP NOT NULL,
            ended_at   TIMESTAMP
        );
        """,
    ),
    Migration(
        5,
        "drafts",
        # A draft is a quick render of the same prompt and seed, kept beside the final: the
        # sentence records it with the revision it was made from (stale once that moves on),
        # and a job says which of the two it made, so the render cache never hands a draft
        # to a final pass.
        """
        ALTER TABLE sentences ADD COLUMN draft_file VARCHAR;
        ALTER TABLE sentences ADD COLUMN draft_revision INTEGER;
        ALTER TABLE image_jobs ADD COLUMN draft BOOLEAN DEFAULT FALSE;
        UPDATE image_jobs SET draft = FALSE;
        """,
    ),
    Migration(
        6,
        "image job lanes",
        # The lane an attempt ran on, so a batch over several GPUs tells what each one cost.
        """
        ALTER TABLE image_jobs ADD COLUMN lane VARCHAR;
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def apply_migrations(
    con: duckdb.DuckDBPyConnection,
    now: datetime,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Apply the migrations `con` has not seen; return the versions applied.

    Runs inside the caller's transaction, so a failing migration leaves the
    file as it was.
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    applied = dict(con.execute("SELECT version, name FROM _migrations").fetchall())
    known = {m.version: m.name for m in migrations}
    newer = sorted(set(applied) - set(known))
    if newer:
        raise StoreError(
            f"the database has schema version {newer[-1]}, newer than this program knows "
            f"({migrations[-1].version}); upgrade storyboard"
        )
    for version, name in applied.items():
        if known[version] != name:
            raise StoreError(
                f"migration {version} was recorded as {name!r} but this program calls it "
                f"{known[version]!r}; migrations are append-only"
            )
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        con.execute(migration.sql)
        con.execute(
            "INSERT INTO _migrations VALUES (?, ?, ?)",
            [migration.version, migration.name, now],
        )
        done.append(migration.version)
    return done

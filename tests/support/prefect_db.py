"""A Prefect database migrated once per test session and copied wherever a test starts a
Prefect API on a fresh SQLite file.

Migrating a fresh file costs ~8 s of CPU, every time: the session's test APIs and each embedded
API a test boots would pay it again and again on a 2-core machine. What those tests check does
not depend on the migration (one test, the first batch run from the shell, still boots on a
fresh home as a user's first run does).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

from benchmarks.run import migrate_prefect_db
from tests.support.paths import FIXTURES

# The file name Prefect's ephemeral API uses under PREFECT_HOME by default.
HOME_DATABASE = "prefect.db"

# A trust store of one self-signed certificate (no key anywhere), trusted by nothing.
TRUST_STORE = FIXTURES / "trust-store.pem"

# Told to every Prefect a test starts: no telemetry, and no block types registered at start.
# Registering them costs ~2 s of CPU on each fresh home (a test API, an embedded API) and none
# of our flows needs them there: a block that is saved (the webhook's) registers its own type.
# And a small trust store: every Prefect client (several per batch: the flow's, each task's,
# each concurrency lease's) and every httpx client without one of its own loads its CA
# bundle into a new TLS context, ~40 ms of CPU for certifi's 117 certificates and ~1 ms for
# this one. No test speaks TLS: every API and simulator is plain http on 127.0.0.1.
QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_API_SSL_CERT_FILE": str(TRUST_STORE),
    "SSL_CERT_FILE": str(TRUST_STORE),
}


def migrated_template(shared: Path) -> Path:
    """The session's migrated database in `shared`, made by whichever test process asks first
    (the others wait on the lock), so parallel workers migrate once between them."""
    template = shared / "prefect-migrated.db"
    with (shared / "prefect-migrated.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            # Renamed into place only once whole: a waiter never copies half a file.
            migrate_prefect_db(shared / "prefect-template-home").replace(template)
    return template


def seed_home(home: Path, template: Path) -> Path:
    """`home` as a Prefect home whose ephemeral API finds its database migrated."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, home / HOME_DATABASE)
    return home


@contextlib.contextmanager
def harness_databases(template: Path) -> Iterator[None]:
    """While open, Prefect's test harness starts its server on a copy of `template`.

    The harness makes a fresh folder with `mkdtemp` and points its server at
    `prefect-test.db` in it; the copy is put there first. Should a Prefect release name the
    file otherwise, the copy goes unused and the harness migrates as it always did.
    """
    import prefect.testing.utilities as harness

    make_folder = harness.mkdtemp

    def folder_with_database() -> str:
        folder = make_folder()
        shutil.copyfile(template, Path(folder) / "prefect-test.db")
        return folder

    harness.mkdtemp = folder_with_database  # type: ignore[assignment]
    try:
        yield
    finally:
        harness.mkdtemp = make_folder

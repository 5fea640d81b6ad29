"""The Prefect layer. Importing any flow module first sets the embedded API's defaults.

They must be in the environment before `prefect` is imported (its settings are read then), and
every entry point (`storyboard render`, a direct call of a flow in a fresh process, a worker's
flow run) imports this package first, so this is the one place they are set; a value already
in the environment (a server's own setting) wins.

- Booting the embedded (ephemeral) API, migrating a fresh SQLite file, can pass Prefect's 20 s
  start limit on a small, busy machine.
- The embedded API's telemetry heartbeat writes to its SQLite file while the batch does and dies
  on "database is locked" with a traceback in the terminal.
"""

from __future__ import annotations

import os

EMBEDDED_API_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

for _name, _value in EMBEDDED_API_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

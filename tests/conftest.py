"""Test-wide isolation: no test reads the user's configuration or Prefect home."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports prefect, so no test touches ~/.prefect or phones home.
_PREFECT_HOME = tempfile.mkdtemp(prefix="storyboard-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
for _name in list(os.environ):
    if _name.startswith("STORYBOARD_") or _name in ("COMFYUI_URL", "COMFYUI_WS_URL"):
        del os.environ[_name]

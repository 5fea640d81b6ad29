"""Where the repository and the captured test data are, however deep a test module sits."""

from __future__ import annotations

from pathlib import Path

# tests/support/paths.py -> the repository root is three levels up.
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

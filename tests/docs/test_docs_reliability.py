"""docs/RELIABILITY.md cites tests by name: every cited test must exist, or the matrix lies."""

from __future__ import annotations

import re

from tests.support.paths import REPO

ABBREVIATIONS = {
    "R": "tests/flows/test_reliability_runs.py",
    "I": "tests/store/test_reliability_input.py",
    "D": "tests/library/test_doctor.py",
}
CITATION = re.compile(r"((?:tests/[\w/]+\.py)|\b[RID])::(\w+)")


def cited_tests(text: str) -> set[tuple[str, str]]:
    return {(ABBREVIATIONS.get(f, f), name) for f, name in CITATION.findall(text)}


def test_every_test_the_reliability_matrix_cites_exists() -> None:
    cited = cited_tests((REPO / "docs" / "RELIABILITY.md").read_text(encoding="utf-8"))
    assert len(cited) > 50
    missing = []
    for file, name in sorted(cited):
        path = REPO / file
        source = path.read_text(encoding="utf-8") if path.is_file() else ""
        if not re.search(rf"^(async )?def {name}\(", source, re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, "cited in docs/RELIABILITY.md but not found:\n" + "\n".join(missing)


def test_the_citation_pattern_reads_both_forms() -> None:
    text = "| a | b | R::test_x, tests/test_y.py::test_z[SIGTERM] | PASS |"
    assert cited_tests(text) == {
        ("tests/flows/test_reliability_runs.py", "test_x"),
        ("tests/test_y.py", "test_z"),
    }

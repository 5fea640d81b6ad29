"""The scheduler is a room of the library: it imports neither Prefect nor the layers above."""

from __future__ import annotations

import ast
from pathlib import Path

import storyboard.scheduler

FORBIDDEN = ("prefect", "flows", "tasks")


def test_the_scheduler_imports_no_prefect_no_flows_no_tasks() -> None:
    package = Path(storyboard.scheduler.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{module.name} imports {name}"

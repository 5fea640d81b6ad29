"""A tiny project for the reliability tests: small frames, a few sentences, fast retries.

The Prefect test API comes from tests/conftest.py, the settings pattern from
`tests.support.flows`, the `sim_thread` and `tiny` fixtures from tests/flows/conftest.py. Here
the project has no characters and no LoRA unless a test adds them, so a test controls exactly
what reaches the simulator. Renders are counted per sentence from the graphs the simulator
received (each sentence's prompt is unique).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from storyboard import ids
from storyboard.settings import Settings
from storyboard.simulator import ComfyUISimulator, SimulatorThread
from storyboard.store import Project, SentenceInput, Store
from tests.support.flows import storyboard_env

PROJECT = "rp"


def prompt_of(sentence_id: str) -> str:
    return f"reliability test picture of sentence {sentence_id}"


@dataclass
class Tiny:
    settings: Settings
    store: Store
    sim_thread: SimulatorThread
    sentence_ids: list[str]

    @property
    def sim(self) -> ComfyUISimulator:
        return self.sim_thread.sim

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def image(self, sentence_id: str) -> Path:
        return ids.image_path(self.data_dir, PROJECT, sentence_id)

    def sentence(self, sentence_id: str) -> Any:
        return self.store.get_sentence(PROJECT, sentence_id)

    def prompts_for(self, text: str) -> list[str]:
        """Prompt ids of every graph the simulator accepted that carries `text` verbatim."""
        return [pid for pid, graph in list(self.sim.graphs.items()) if carries(graph, text)]

    def submissions(self, sentence_id: str) -> int:
        return len(self.prompts_for(prompt_of(sentence_id)))

    def runs(self, sentence_id: str, status: str | None = None) -> list[Any]:
        wanted = set(self.prompts_for(prompt_of(sentence_id)))
        return [
            r
            for r in list(self.sim.runs)
            if r.prompt_id in wanted and (status is None or r.status == status)
        ]


def carries(graph: dict[str, Any], text: str) -> bool:
    return any(
        value == text
        for node in graph.values()
        if isinstance(node, dict)
        for value in (node.get("inputs") or {}).values()
    )


def decodes(path: Path) -> bool:
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return False
    return True


def make_tiny(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sim_thread: SimulatorThread,
    sentences: int = 3,
    **env: str,
) -> Tiny:
    values = {
        "STORYBOARD_WIDTH": "256",
        "STORYBOARD_HEIGHT": "144",
        # An answer from the simulator thread can take seconds on a loaded machine; a test of
        # a server down at the start sets its own.
        "STORYBOARD_STARTUP_WAIT_S": "10",
        "STORYBOARD_IMAGE_TIMEOUT_S": "10",
        "STORYBOARD_ATTEMPTS": "3",
        **env,
    }
    settings = storyboard_env(monkeypatch, tmp_path / "data", sim_thread.url, **values)
    store = Store(settings.database, lock_timeout_s=settings.store_lock_timeout_s)
    sentence_ids = [f"s{i}" for i in range(1, sentences + 1)]
    store.upsert(
        projects=[Project(id=PROJECT, name="Reliability")],
        sentences=[
            SentenceInput(
                id=sid,
                project_id=PROJECT,
                position=i,
                text=f"Sentence {sid}.",
                image_prompt=prompt_of(sid),
            )
            for i, sid in enumerate(sentence_ids)
        ],
    )
    return Tiny(settings, store, sim_thread, sentence_ids)

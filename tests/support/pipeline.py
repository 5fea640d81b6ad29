"""A pipeline rig for the picture tests: a seeded store, reference files, a simulator and a
lane session on it; and what `store_image` does with one picture."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from storyboard import pipeline
from storyboard.lane import Lane, LaneSession
from storyboard.pipeline import PipelineConfig, Prepared, Rendered
from storyboard.simulator import SimulatorConfig, SimulatorThread
from storyboard.store import Character, Project, SentenceInput, Store
from storyboard.workflow import Workflow, load_workflow
from tests.support.paths import REPO

FRAME = (64, 36)  # rendered at 64x48
REFERENCE = "refs/ana.png"


def png(size: tuple[int, int], colour: str = "orange") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def save_picture(store: Store, rendered: Rendered, config: PipelineConfig) -> pipeline.Stored:
    """What `store_image` does with one picture: write it, then record it."""
    return pipeline.record_pictures(store, [pipeline.write_picture(store, rendered, config)])[0]


@dataclass
class Rig:
    sim_thread: SimulatorThread
    session: LaneSession
    store: Store
    config: PipelineConfig

    def workflow(self, name: str) -> Workflow:
        return load_workflow(REPO / "workflows" / "image" / name)

    def uploaded(self) -> list[str]:
        return self.sim_thread.sim.files.input_files()

    def prepare(self, sentence_id: str, workflow: str = "flux-2.json", **kw: Any) -> Prepared:
        resolved = pipeline.resolve(self.store, "p1", sentence_id)
        return pipeline.prepare(self.session, self.workflow(workflow), resolved, self.config, **kw)

    def render(self, prepared: Prepared, attempt: int = 1, *, reuse: bool = False) -> Rendered:
        claimed = pipeline.claim(
            self.store, prepared, run_id="run-1", attempt=attempt, stale_after_s=60, reuse=reuse
        )
        assert claimed is not None
        return pipeline.render(self.session, self.store, prepared, claimed, self.config)


@contextmanager
def make_rig(tmp_path: Path, sim_config: SimulatorConfig) -> Iterator[Rig]:
    data_dir = tmp_path / "data"
    (data_dir / "projects" / "p1" / "refs").mkdir(parents=True)
    (data_dir / "projects" / "p1" / REFERENCE).write_bytes(png((40, 40), "teal"))
    store = Store(tmp_path / "store.duckdb")
    store.upsert(
        projects=[Project(id="p1", name="P")],
        characters=[Character(id="ana", project_id="p1", name="Ana", reference_images=[REFERENCE])],
        sentences=[
            SentenceInput(
                id="s1",
                project_id="p1",
                position=1,
                text="t",
                image_prompt="ana at sea",
                character_ids=["ana"],
                seed=11,
            ),
            SentenceInput(
                id="s2",
                project_id="p1",
                position=2,
                text="t",
                image_prompt="a lighthouse",
                seed=12,
            ),
        ],
    )
    config = PipelineConfig(
        data_dir=data_dir,
        workflow_path=Path("unused.json"),
        frame=FRAME,
        image_timeout_s=20,
        max_download_bytes=10_000_000,
        max_image_pixels=10_000_000,
        max_reference_bytes=1_000_000,
    )
    with SimulatorThread(sim_config) as sim_thread:
        lane = Lane(name="test", comfyui_url=sim_thread.url, ws_url=sim_thread.ws_url)
        with LaneSession(lane, request_timeout_s=10) as session:
            yield Rig(sim_thread, session, store, config)

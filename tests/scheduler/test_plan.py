"""The plan of a batch (storyboard.scheduler.plan): which lanes can render each sentence, read
from each lane's /object_info, and the affinity key that keeps a model warm. Servers are
plain /object_info snapshots here, and the store a few rows in memory."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from storyboard.comfyui.objectinfo import ObjectInfo
from storyboard.errors import ComfyUIConnectionError
from storyboard.scheduler.plan import Inventories, plan
from storyboard.simulator.config import DEFAULT_MODELS, base_object_info, object_info_with
from storyboard.store import Character, Project, Sentence
from storyboard.workflow import load_workflow

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = load_workflow(ROOT / "workflows" / "image" / "flux-2.json")
FRAME = (1024, 576)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
NOIR = "storyboard_noir_v1.safetensors"
WATERCOLOR = "storyboard_watercolor_v1.safetensors"


def info(loras: list[str]) -> ObjectInfo:
    return object_info_with(base_object_info(), {**DEFAULT_MODELS, "loras": loras}, [])


class Rows:
    """The three store calls the plan makes, over rows in memory."""

    def __init__(self, sentences: list[Sentence]) -> None:
        self.rows = sentences

    def get_project(self, project_id: str) -> Project:
        return Project(id=project_id, name="P")

    def characters(self, project_id: str) -> list[Character]:
        return []

    def sentences(self, project_id: str) -> list[Sentence]:
        return [s for s in self.rows if s.project_id == project_id]


@pytest.fixture
def store() -> Rows:
    loras = (NOIR, WATERCOLOR, NOIR, "nowhere_v9.safetensors")
    return Rows(
        [
            Sentence(
                id=f"s{n}",
                project_id="p",
                position=n,
                text="t",
                image_prompt="a",
                lora_name=lora,
                created_at=NOW,
                updated_at=NOW,
            )
            for n, lora in enumerate(loras)
        ]
    )


def targets(*ids: str) -> list[tuple[str, str, Any]]:
    return [("p", sentence_id, None) for sentence_id in ids]


def test_each_sentence_goes_only_to_the_lanes_with_its_lora(store: Rows) -> None:
    lanes: Inventories = {"a": lambda: info([NOIR, WATERCOLOR]), "b": lambda: info([WATERCOLOR])}
    noir, water, noir_again = plan(lanes, store, WORKFLOW, FRAME, targets("s0", "s1", "s2"))
    assert noir.lanes == {"a"} and water.lanes == {"a", "b"}
    assert noir.refused is None and water.refused is None
    # Same LoRA, strength and references: one affinity key, the model stays warm.
    assert noir.key == noir_again.key != water.key


def test_a_sentence_no_lane_can_render_is_refused_naming_each_lane(store: Rows) -> None:
    def silent() -> ObjectInfo:
        raise ComfyUIConnectionError("connection refused")

    lanes: Inventories = {"a": lambda: info([NOIR]), "b": silent}
    [nowhere] = plan(lanes, store, WORKFLOW, FRAME, targets("s3"))
    assert nowhere.lanes == frozenset()
    assert nowhere.refused is not None
    assert "LoRA 'nowhere_v9.safetensors'" in nowhere.refused
    assert "lane 'a' lacks" in nowhere.refused
    assert "lane 'b': no /object_info (connection refused)" in nowhere.refused


def test_one_lane_is_not_asked_prepare_validates_there(store: Rows) -> None:
    def never() -> ObjectInfo:
        raise AssertionError("a lone lane's /object_info was read")

    [nowhere] = plan({"only": never}, store, WORKFLOW, FRAME, targets("s3"))
    assert (nowhere.lanes, nowhere.refused) == (frozenset({"only"}), None)


def test_each_lanes_object_info_is_read_once_per_lora(store: Rows) -> None:
    reads: list[str] = []

    def counted(name: str) -> Any:
        def read() -> ObjectInfo:
            reads.append(name)
            return info([NOIR, WATERCOLOR])

        return read

    plan({"a": counted("a"), "b": counted("b")}, store, WORKFLOW, FRAME,
         targets("s0", "s1", "s2"))  # fmt: skip
    assert sorted(reads) == ["a", "a", "b", "b"]  # two LoRAs, two lanes


def test_reference_paths_given_for_the_render_make_the_affinity_key(store: Rows) -> None:
    lanes: Inventories = {"a": lambda: info([NOIR]), "b": lambda: info([NOIR])}
    plain, with_refs = plan(
        lanes, store, WORKFLOW, FRAME, [("p", "s0", None), ("p", "s2", ["x.png", "x.png"])]
    )
    assert plain.key != with_refs.key
    assert isinstance(with_refs.key, tuple) and with_refs.key[2] == ("x.png",)  # deduplicated

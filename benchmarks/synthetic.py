"""A synthetic storyboard of N dirty sentences, seeded through the store's own upsert API.

It looks like a real one to the pipeline: three characters with reference images (the demo's
pictures), a project LoRA, one character with its own LoRA, and sentences that cycle through
no character, one, two and three characters, so references are read, hashed and uploaded
(once per server) and LoRAs are resolved exactly as in production.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from storyboard.ids import path_under, project_dir
from storyboard.store import Character, Project, SentenceInput, Store

PROJECT_ID = "bench"
_CAST = (
    ("mara", "mara.png", None),
    ("tobi", "tobi.png", None),
    ("captain", "captain.png", "storyboard_noir_v1.safetensors"),
)
_CASTINGS: tuple[list[str], ...] = ([], ["mara"], ["mara", "tobi"], ["captain"], ["tobi"])


def seed(store: Store, data_dir: Path, n: int) -> None:
    """Put project `bench` with `n` dirty sentences into `store`, references under `data_dir`."""
    root = project_dir(data_dir, PROJECT_ID)
    characters = []
    for character_id, picture, lora in _CAST:
        relative = f"refs/{picture}"
        target = path_under(root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(
            (resources.files("storyboard.store") / "demo_refs" / picture).read_bytes()
        )
        characters.append(
            Character(
                id=character_id,
                project_id=PROJECT_ID,
                name=character_id.title(),
                reference_images=[relative],
                lora_name=lora,
                lora_strength=0.5 if lora else None,
            )
        )
    sentences = [
        SentenceInput(
            id=f"s{i:05d}",
            project_id=PROJECT_ID,
            position=i,
            text=f"Sentence number {i} of the benchmark storyboard.",
            image_prompt=(
                f"storyboard frame {i}: a lighthouse on a cliff at dusk, waves, wide shot,"
                " watercolor, soft light"
            ),
            character_ids=_CASTINGS[i % len(_CASTINGS)],
        )
        for i in range(n)
    ]
    project = Project(
        id=PROJECT_ID,
        name="Benchmark storyboard",
        lora_name="storyboard_watercolor_v1.safetensors",
        lora_strength=0.8,
    )
    store.upsert(projects=[project], characters=characters, sentences=sentences)

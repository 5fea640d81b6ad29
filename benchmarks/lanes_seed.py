"""The mixed storyboard of the warm-model scenario: 3 style LoRAs x 4 reference sets, shuffled.

Every one of the 12 (LoRA, reference set) pairs appears about equally often, at shuffled
positions (a fixed random seed, so every run sees the same storyboard): in position order
nearly every sentence differs from the one before it, which is what a feed blind to warm
models pays for. The LoRA is the sentence's own (`lora_name`), the references are its
characters' pictures (the demo's), so the pipeline resolves both as in production.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from benchmarks.synthetic import PROJECT_ID
from storyboard.ids import path_under, project_dir
from storyboard.store import Character, Project, SentenceInput, Store

LORAS = (
    ("storyboard_noir_v1.safetensors", 0.7),
    ("storyboard_watercolor_v1.safetensors", 0.8),
    ("tiny_sd15_lora.safetensors", 0.6),
)
_CAST = (("mara", "mara.png"), ("tobi", "tobi.png"), ("captain", "captain.png"))
REFERENCE_SETS: tuple[tuple[str, ...], ...] = (
    ("mara",),
    ("tobi",),
    ("captain",),
    ("mara", "tobi"),
)
SHUFFLE_SEED = 12


def mixed_pairs(n: int) -> list[tuple[int, int]]:
    """(LoRA index, reference-set index) per position, every pair about n / 12 times."""
    pairs = [(k % len(LORAS), (k // len(LORAS)) % len(REFERENCE_SETS)) for k in range(n)]
    random.Random(SHUFFLE_SEED).shuffle(pairs)
    return pairs


def seed_mixed(store: Store, data_dir: Path, n: int) -> None:
    """Put project `bench` with `n` dirty sentences of mixed LoRAs and references into `store`."""
    root = project_dir(data_dir, PROJECT_ID)
    characters = []
    for character_id, picture in _CAST:
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
            )
        )
    sentences = []
    for i, (lora, refs) in enumerate(mixed_pairs(n)):
        name, strength = LORAS[lora]
        sentences.append(
            SentenceInput(
                id=f"s{i:05d}",
                project_id=PROJECT_ID,
                position=i,
                text=f"Sentence number {i} of the mixed benchmark storyboard.",
                image_prompt=f"storyboard frame {i}: a harbour at night, rain, wide shot",
                character_ids=list(REFERENCE_SETS[refs]),
                lora_name=name,
                lora_strength=strength,
            )
        )
    project = Project(id=PROJECT_ID, name="Mixed benchmark storyboard")
    store.upsert(projects=[project], characters=characters, sentences=sentences)

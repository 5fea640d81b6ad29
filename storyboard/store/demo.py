"""A small demo storyboard: one project, three characters, eight sentences.

Seeding is an upsert, so running it again is harmless; it also copies the
characters' reference images into the project directory, where the store's
relative paths point (`data/projects/lighthouse/refs/*.png`).
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from storyboard.errors import StoreError
from storyboard.ids import path_under, project_dir
from storyboard.store.models import Character, Project, SentenceInput
from storyboard.store.store import Store

DEMO_PROJECT = "lighthouse"

PROJECT = Project(
    id=DEMO_PROJECT,
    name="The Last Lamp",
    lora_name="storyboard_watercolor_v1.safetensors",
    lora_strength=0.8,
)

CHARACTERS = (
    Character(
        id="mara",
        project_id=DEMO_PROJECT,
        name="Mara, the lighthouse keeper",
        reference_images=["refs/mara.png"],
    ),
    Character(
        id="tobi",
        project_id=DEMO_PROJECT,
        name="Tobi, her grandson",
        reference_images=["refs/tobi.png"],
    ),
    Character(
        id="captain",
        project_id=DEMO_PROJECT,
        name="Captain Ilse Varga",
        reference_images=["refs/captain.png"],
        lora_name="storyboard_noir_v1.safetensors",
        lora_strength=0.4,
    ),
)

_MARA = "Mara, a weathered woman in her sixties with a long grey braid and a yellow oilskin coat"
_TOBI = "Tobi, a ten-year-old boy with messy dark hair and a red knitted scarf"
_CAPTAIN = "Captain Ilse Varga, a broad-shouldered fishing captain in a navy pea coat and cap"

_SCRIPT: tuple[tuple[str, str, list[str]], ...] = (
    (
        "Every night for forty years, Mara climbed the hundred steps to light the lamp.",
        f"{_MARA} climbing a narrow spiral iron staircase inside a white lighthouse at dusk, "
        "warm lantern light from above, long shadows, seen from below, quiet and determined mood",
        ["mara"],
    ),
    (
        "This winter her grandson Tobi came to stay, and he followed her up every step.",
        f"{_TOBI} following {_MARA} up the lighthouse stairs, he carries a small tin lantern, "
        "cosy amber light, soft focus background, gentle smile on his face",
        ["mara", "tobi"],
    ),
    (
        "From the gallery they could see the whole bay, black water and a thin silver moon.",
        f"wide shot from the lighthouse gallery at night, {_MARA} and {_TOBI} seen from behind "
        "leaning on the iron railing, a vast dark bay below, a thin crescent moon, "
        "silver reflections on the water, cold blue palette",
        ["mara", "tobi"],
    ),
    (
        "One evening the great lamp flickered, coughed, and went dark.",
        "the huge Fresnel lens of a lighthouse lamp room going dark, the last glow of the bulb "
        "fading inside the glass prisms, dust in the air, dramatic low-key lighting, close-up",
        [],
    ),
    (
        "Out in the fog, a fishing boat was feeling its way home.",
        f"a small red fishing boat in thick sea fog at night, {_CAPTAIN} at the wheel peering "
        "ahead, a single masthead light, waves breaking on hidden rocks nearby, tense atmosphere",
        ["captain"],
    ),
    (
        "Mara sent Tobi running down for the old oil lamp while she cleaned the lens.",
        f"{_TOBI} running down a spiral staircase holding an antique brass oil lamp, motion blur "
        "on the steps, urgent expression, warm and cold light mixing, dynamic diagonal composition",
        ["tobi"],
    ),
    (
        "Together they lit the flame, and a beam of gold swept across the water again.",
        f"{_MARA} and {_TOBI} in the lamp room lighting an old oil lamp together, a golden beam "
        "of light sweeping out over the foggy sea through the windows, faces lit from below, "
        "hopeful and triumphant",
        ["mara", "tobi"],
    ),
    (
        "At dawn the captain walked up the hill with a basket of fish to say thank you.",
        f"{_CAPTAIN} climbing a grassy hill path towards a white lighthouse at sunrise, carrying "
        f"a wicker basket of fish, {_MARA} and {_TOBI} waiting at the door, pink and gold sky, "
        "peaceful ending",
        ["captain", "mara", "tobi"],
    ),
)

SENTENCES = tuple(
    SentenceInput(
        id=f"s{number:02d}",
        project_id=DEMO_PROJECT,
        position=number,
        text=text,
        image_prompt=prompt,
        negative_prompt="text, watermark, extra fingers" if number == 8 else None,
        character_ids=characters,
    )
    for number, (text, prompt, characters) in enumerate(_SCRIPT, start=1)
)


def _copy_reference(name: str, target: Path) -> None:
    data = (resources.files("storyboard.store") / "demo_refs" / name).read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def seed_demo(store: Store, data_dir: Path) -> Project:
    """Put the demo storyboard into `store` and its reference images under `data_dir`."""
    root = project_dir(data_dir, DEMO_PROJECT)
    try:
        for character in CHARACTERS:
            for relative in character.reference_images:
                _copy_reference(Path(relative).name, path_under(root, relative))
    except OSError as exc:
        raise StoreError(f"cannot copy the demo reference images into {root}: {exc}") from exc
    store.upsert(projects=[PROJECT], characters=CHARACTERS, sentences=SENTENCES)
    return PROJECT

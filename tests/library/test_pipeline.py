"""Pipeline steps that need no server: what a sentence's picture is made from."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.pipeline import choose_lora, error_text, resolve, with_uploaded_images
from storyboard.store import Store
from storyboard.store.demo import DEMO_PROJECT, seed_demo
from storyboard.workflow import LoraChoice


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "db.duckdb")
    seed_demo(store, tmp_path)
    return store


def test_lora_sentence_over_character_over_project(store: Store) -> None:
    project = store.get_project(DEMO_PROJECT)
    sentence = next(s for s in store.sentences(DEMO_PROJECT) if s.character_ids)
    characters = store.characters_for(DEMO_PROJECT, sentence.character_ids)
    no_char_lora = [c.model_copy(update={"lora_name": None}) for c in characters]

    own = sentence.model_copy(update={"lora_name": "own.safetensors", "lora_strength": 0.3})
    assert choose_lora(own, characters, project) == LoraChoice("own.safetensors", 0.3)

    with_char = sentence.model_copy(update={"lora_name": None})
    char_lora = [
        c.model_copy(update={"lora_name": "c.safetensors", "lora_strength": None})
        for c in characters
    ]
    assert choose_lora(with_char, char_lora, project) == LoraChoice(
        "c.safetensors", project.lora_strength
    )
    assert choose_lora(with_char, no_char_lora, project) == LoraChoice(
        str(project.lora_name), project.lora_strength
    )
    bare = project.model_copy(update={"lora_name": None})
    assert choose_lora(with_char, no_char_lora, bare) is None


def test_resolve_takes_the_characters_references_or_the_override(store: Store) -> None:
    sentence = next(s for s in store.sentences(DEMO_PROJECT) if s.character_ids)
    expected = [
        path
        for c in store.characters_for(DEMO_PROJECT, sentence.character_ids)
        for path in c.reference_images
    ]

    resolved = resolve(store, DEMO_PROJECT, sentence.id)
    assert list(resolved.references) == list(dict.fromkeys(expected))
    assert resolved.revision == sentence.image_revision
    assert resolved.prompt == sentence.image_prompt

    override = resolve(store, DEMO_PROJECT, sentence.id, reference_paths=["refs/a.png"] * 2)
    assert override.references == ("refs/a.png",)


@pytest.mark.parametrize(
    "spec",
    [[["old.png"], {}], ["COMBO", {"options": ["old.png"]}]],
    ids=["list-encoding", "combo-encoding"],
)
def test_uploaded_images_become_valid_load_image_choices(spec: list[object]) -> None:
    info = {"LoadImage": {"input": {"required": {"image": spec}}}}

    patched = with_uploaded_images(info, ["storyboard/abc.png"])

    image = patched["LoadImage"]["input"]["required"]["image"]
    choices = image[0] if isinstance(image[0], list) else image[1]["options"]
    assert choices == ["old.png", "storyboard/abc.png"]
    assert info["LoadImage"]["input"]["required"]["image"] == spec  # the original is untouched


def test_error_text_is_one_bounded_line_with_the_type_of_foreign_errors() -> None:
    assert error_text(KeyError("x")) == "KeyError: 'x'"
    assert len(error_text(ValueError("y" * 10_000))) == 2000

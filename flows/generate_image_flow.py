"""`generate-image`: one sentence on request (the Prefect form of the `image/generate` event).

Overrides of prompt, seed and LoRA are written to the sentence first (the store stays the
truth: the image always matches the stored sentence); reference paths, relative to the
project's directory, replace the characters' references for this render only.
"""

from __future__ import annotations

from typing import Any

from prefect import State, flow

from flows.image_batch import batch_context, run_targets, thread_pool
from flows.lane_feed import Target
from storyboard.ids import validate_id
from storyboard.settings import load_settings


@flow(
    name="generate-image",
    task_runner=thread_pool(),
    persist_result=False,
)
def generate_image_flow(
    project_id: str,
    sentence_id: str,
    prompt: str | None = None,
    reference_paths: list[str] | None = None,
    lora: str | None = None,
    lora_strength: float | None = None,
    seed: int | None = None,
) -> State[dict[str, Any]]:
    """Render one sentence now, whether or not it is dirty."""
    validate_id(project_id, "project id")
    validate_id(sentence_id, "sentence id")
    settings = load_settings()
    with batch_context(settings, only_dirty=False) as ctx:

        def load() -> list[Target]:
            changes: dict[str, Any] = {}
            if prompt is not None:
                changes["image_prompt"] = prompt
            if seed is not None:
                changes["seed"] = seed
            if lora is not None:
                changes["lora_name"] = lora
            if lora_strength is not None:
                changes["lora_strength"] = lora_strength
            if changes:
                ctx.store.update_sentence(project_id, sentence_id, **changes)
            else:
                ctx.store.get_sentence(project_id, sentence_id)  # NotFoundError names it
            return [Target(project_id, sentence_id, reference_paths)]

        return run_targets(ctx, load, dry_run=False)


if __name__ == "__main__":  # pragma: no cover
    generate_image_flow.serve(name="on-demand")

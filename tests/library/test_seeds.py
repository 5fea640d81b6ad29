"""One seed range, 0 .. 2**63 - 1: what the store keeps is what a graph may get."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from storyboard.seeds import SEED_MAX, random_seed
from storyboard.workflow import SEED_MAX as WORKFLOW_SEED_MAX
from storyboard.workflow import RenderParams
from tests.support.store import seeded_store, sentence


def test_the_range_is_the_store_s_signed_bigint() -> None:
    assert SEED_MAX == 2**63 - 1
    assert WORKFLOW_SEED_MAX is SEED_MAX


def test_a_user_seed_above_the_range_is_refused_naming_it_and_the_range() -> None:
    with pytest.raises(ValueError) as caught:
        RenderParams(prompt="a cat", width=64, height=64, seed=2**63)
    message = str(caught.value)
    assert str(2**63) in message and str(SEED_MAX) in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="outside"):
        RenderParams(prompt="a cat", width=64, height=64, seed=-1)
    assert RenderParams(prompt="a cat", width=64, height=64, seed=SEED_MAX).seed == SEED_MAX


def test_every_seed_a_graph_may_get_can_be_stored(tmp_path: Path) -> None:
    # The store's model holds the same bound, and its BIGINT column keeps the largest.
    store = seeded_store(tmp_path)
    store.upsert_sentences([sentence("s1", 1, seed=SEED_MAX)])
    assert store.get_sentence("p1", "s1").seed == SEED_MAX
    with pytest.raises(pydantic.ValidationError, match="seed"):
        sentence("s1", 1, seed=SEED_MAX + 1)


def test_drawn_seeds_stay_in_the_range() -> None:
    seeds = {random_seed() for _ in range(200)}
    assert len(seeds) > 190
    assert all(0 <= seed <= SEED_MAX for seed in seeds)

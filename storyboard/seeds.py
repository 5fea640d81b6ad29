"""The one seed range of the project: 0 .. 2**63 - 1.

ComfyUI's seed inputs accept 0 .. 2**64 - 1, but the store keeps every seed (of a
sentence, of an image job) in a signed 64-bit BIGINT, so the store decides: a
seed we draw stays in this range, and one a user gives above it is refused
before it reaches a graph. (The store's own model enforces the same bound.)
"""

from __future__ import annotations

import secrets

SEED_MAX = 2**63 - 1


def random_seed() -> int:
    return secrets.randbelow(SEED_MAX + 1)


def check_seed(seed: int) -> int:
    """`seed` itself, or ValueError naming it and the range."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(
            f"seed {seed} is outside 0..{SEED_MAX} (2**63 - 1, the largest the store keeps); "
            "choose a seed in that range"
        )
    return seed

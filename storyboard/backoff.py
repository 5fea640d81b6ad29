"""The one backoff policy of every retry loop in the library.

Four loops wait for something to come back: the store's lock wait, the
WebSocket reconnect, waiting for ComfyUI to come up, and waiting for a
finished prompt's history. Each asks `errors.is_retryable` whether to go on,
stays inside its own time bound, and sleeps `backoff(attempt)` seconds before
retry `attempt` (1 = the first retry). `backoff` is a parameter of each of
them (like websockets' reconnect `backoff`), so a test passes a fast one;
their default is `default_backoff` at one of the two scales below.

The delay doubles from `first_s` up to `cap_s` and is jittered down to half,
so two processes (or clients) that failed together do not retry in step.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

Backoff = Callable[[int], float]
"""Seconds to sleep before retry `attempt` (1 = the first retry)."""


def default_backoff(attempt: int, *, first_s: float = 0.005, cap_s: float = 0.25) -> float:
    """`first_s`, twice that, ... capped at `cap_s`; each jittered to 50-100 %.

    The default scale is for local contention (a DuckDB lock another process
    holds for milliseconds); `NETWORK_BACKOFF` is the scale for a server.
    """
    return min(first_s * 2.0 ** max(attempt - 1, 0), cap_s) * random.uniform(0.5, 1.0)


# A ComfyUI restart takes 10-30 s: retrying faster than every few seconds only adds noise.
NETWORK_BACKOFF: Backoff = functools.partial(default_backoff, first_s=0.25, cap_s=5.0)

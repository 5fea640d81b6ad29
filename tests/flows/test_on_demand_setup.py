"""flows.setup against a real Prefect API: a limit per lane by name, a pool that fits on-demand."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from flows.setup import POOL, ensure_pool_and_limits, pool_limit
from storyboard.lane import lanes_from_settings
from storyboard.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_setup_creates_a_limit_of_one_per_lane_and_a_pool_with_on_demand_headroom() -> None:
    settings = load_settings(
        comfyui_urls=["left=http://127.0.0.1:8188", "right=http://10.0.0.2:8188"]
    )
    lanes = lanes_from_settings(settings)
    ensure_pool_and_limits(lanes)
    ensure_pool_and_limits(lanes)  # idempotent
    with get_client(sync_client=True) as client:
        limits = {
            tag: client.read_concurrency_limit_by_tag(tag) for tag in ("gpu-left", "gpu-right")
        }
        pool = client.read_work_pool(POOL)
    assert {tag: limit.concurrency_limit for tag, limit in limits.items()} == {
        "gpu-left": 1,
        "gpu-right": 1,
    }
    # One batch plus two on-demand runs per lane: a second flow run never waits at the pool.
    assert pool_limit(lanes) == 5
    assert pool.concurrency_limit == 5

"""Hostile answers: every exchange has a total deadline and every body a byte cap.

The simulator's `trickle_view_next` (a file announced in full, then sent one byte
at a time) and `endless_history_next` (a JSON body that never ends), over real
loopback sockets. The asyncio guard around each call only keeps a regression from
hanging the suite; the assertions are on what the client raises and when.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from storyboard.comfyui import queries
from storyboard.comfyui.client import DROP_NOTICE_S
from storyboard.comfyui.transport import MAX_JSON_BYTES
from storyboard.errors import ComfyUIConnectionError, ComfyUIProtocolError
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import client_for, graph

GUARD_S = 5.0


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=1, step_s=0.0), port=0) as server:
        yield server


async def test_a_view_that_trickles_fails_at_the_total_deadline(sim: ComfyUISimulator) -> None:
    async for comfy in client_for(sim.url, request_timeout_s=1.0):
        result = await comfy.run(graph(seed=1), timeout_s=10)
        sim.faults.trickle_view_next(1, byte_every_s=0.3)  # each read well within 1 s
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ComfyUIConnectionError, match=r"within 1s") as caught:
            async with asyncio.timeout(GUARD_S):
                await comfy.download(result.images[0], max_bytes=10_000_000)
        # The total deadline, then at most the wait for the socket to tell a server gone
        # (ComfyUIClient._when_up: it was not, so the error stands).
        assert loop.time() - began < 2.0 + DROP_NOTICE_S
        assert isinstance(caught.value.__cause__, TimeoutError)
        # The next download is not affected.
        assert (await comfy.download(result.images[0], max_bytes=10_000_000)).startswith(b"\x89PNG")


async def test_an_endless_history_body_fails_at_the_cap_without_growing(
    sim: ComfyUISimulator,
) -> None:
    sim.faults.endless_history_next(1)
    # One read: a body over the cap is retryable, and a second read would get the real entry.
    async for comfy in client_for(sim.url, request_timeout_s=GUARD_S * 2, history_attempts=1):
        tracemalloc.start()
        try:
            # The cap: 8 MiB, and room for the graph we sent, which the entry carries.
            cap = queries.answer_cap(MAX_JSON_BYTES, len(json.dumps(graph(seed=2))))
            with pytest.raises(ComfyUIProtocolError, match=f"more than {cap} bytes"):
                async with asyncio.timeout(GUARD_S):
                    await comfy.run(graph(seed=2), timeout_s=10)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * MAX_JSON_BYTES


async def test_the_answers_about_a_large_prompt_of_ours_are_read_whatever_the_caps(
    sim: ComfyUISimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caps far below what this prompt's history entry and queue entry carry: each answer
    # about it is allowed what we sent on top of its cap (as ComfyUI escapes it: "é" is
    # "\u00e9", six bytes).
    monkeypatch.setattr(queries, "MAX_JSON_BYTES", 64 * 1024)
    monkeypatch.setattr(queries, "MAX_QUEUE_BYTES", 64 * 1024)
    big = graph(seed=3)
    text_nodes = [n for n in big.values() if n["class_type"] == "CLIPTextEncode"]
    text_nodes[0]["inputs"]["text"] = "é" * 50_000  # 300 kB in the server's JSON
    async for comfy in client_for(sim.url):
        async with asyncio.timeout(GUARD_S * 2):
            result = await comfy.run(big, timeout_s=10)
            assert result.images
            # While it was ours the queue's cap grew with it; once done, it is the base again.
            assert await comfy.queue() == ([], [])
    assert queries.answer_cap(100, 7) == 114

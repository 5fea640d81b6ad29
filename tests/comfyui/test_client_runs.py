"""The client against the simulator over real loopback sockets: runs, events, races, faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from storyboard.comfyui import (
    Cached,
    ComfyUIClient,
    Event,
    Finished,
    NodeExecuting,
    Preview,
    Progress,
    Queued,
    Started,
)
from storyboard.comfyui.events import QueueStatus
from storyboard.comfyui.waiting import MAX_RESUBMITS
from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ComfyUITimeoutError,
    ComfyUIUnavailableError,
    ComfyUIValidationError,
    is_retryable,
)
from storyboard.simulator import SimulatorConfig, serve_simulator
from storyboard.simulator.simulator import ComfyUISimulator
from tests.support.clients import RequestLog, client_for, graph

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def sim() -> AsyncIterator[ComfyUISimulator]:
    async with serve_simulator(SimulatorConfig(steps=3, step_s=0.005), port=0) as server:
        yield server


@pytest.fixture
def requests() -> RequestLog:
    return RequestLog()


@pytest.fixture
async def comfy(sim: ComfyUISimulator, requests: RequestLog) -> AsyncIterator[ComfyUIClient]:
    async for client in client_for(sim.url, requests):
        yield client


async def test_run_reports_events_in_order_and_returns_the_saved_image(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    events: list[Event] = []
    result = await comfy.run(graph(seed=1), timeout_s=10, on_event=events.append)

    pid = result.prompt_id
    assert pid == pid.lower() and len(pid) == 36
    assert events[0] == Queued(pid, 0)
    assert events[1] == Started(pid)
    assert isinstance(events[2], Cached)
    assert [e.value for e in events if isinstance(e, Progress)] == [1, 2, 3]
    assert NodeExecuting(pid, "9") in events
    assert events[-1] == Finished(pid)
    assert not result.cached
    (image,) = result.images
    assert image.type == "output"
    data = await comfy.download(image, max_bytes=10_000_000)
    assert data.startswith(PNG)
    assert [(run.prompt_id, run.status) for run in sim.runs] == [(pid, "success")]


async def test_live_previews_arrive_as_decoded_frames(sim: ComfyUISimulator) -> None:
    events: list[Event] = []
    async for comfy in client_for(sim.url, previews=True):
        result = await comfy.run(graph(seed=7), timeout_s=10, on_event=events.append)
    previews = [e for e in events if isinstance(e, Preview)]
    assert len(previews) == 3  # one per sampler step
    signatures = {"png": PNG, "jpeg": b"\xff\xd8\xff"}  # decoded: the bytes match the format
    assert all(p.data.startswith(signatures[p.image_format]) for p in previews)
    assert [(run.prompt_id, run.status) for run in sim.runs] == [(result.prompt_id, "success")]


async def test_socket_is_open_before_the_prompt_is_posted(sim: ComfyUISimulator) -> None:
    # The simulator never replays messages: a socket opened after POST /prompt would
    # miss them and the run would only end at its timeout. Record the order too.
    order: list[str] = []

    async def record_request(request: httpx.Request) -> None:
        order.append(f"{request.method} {request.url.path}")

    async def recording_connect(uri: str, **options: Any) -> ClientConnection:
        order.append("websocket")
        return await ws_connect(uri, **options)

    async with (
        httpx.AsyncClient(event_hooks={"request": [record_request]}) as http,
        ComfyUIClient(sim.url, http=http, connect=recording_connect) as comfy,
    ):
        await comfy.run(graph(seed=2), timeout_s=10)
    assert order.index("websocket") < order.index("POST /prompt")


async def test_many_runs_share_one_socket_and_never_overlap(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    # Queue three prompts up front (the flows queue the next while one renders).
    ids = [await comfy.submit(graph(seed=10 + n)) for n in range(3)]
    results = [await comfy.wait(pid, timeout_s=10) for pid in ids]

    assert [r.prompt_id for r in results] == ids
    assert all(len(r.images) == 1 for r in results)
    assert len({r.images[0].filename for r in results}) == 3
    assert comfy.websocket_connections == 1
    assert sim.max_in_flight(comfy.client_id) <= 3


async def test_resubmitting_the_same_graph_is_reported_as_cached(comfy: ComfyUIClient) -> None:
    first = await comfy.run(graph(seed=3), timeout_s=10)
    again = await comfy.run(graph(seed=3), timeout_s=10)
    assert not first.cached
    assert again.cached
    assert again.images == first.images


async def test_unknown_lora_is_a_validation_error_listing_the_choices(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    with pytest.raises(ComfyUIValidationError) as caught:
        await comfy.run(graph(lora="missing.safetensors"), timeout_s=10)
    message = str(caught.value)
    assert "node 10 (LoraLoaderModelOnly) input lora_name: Value not in list" in message
    assert "got 'missing.safetensors'" in message
    assert "'storyboard_noir_v1.safetensors'" in message
    assert not is_retryable(caught.value)
    assert sim.runs == []


async def test_unknown_node_class_is_a_validation_error(comfy: ComfyUIClient) -> None:
    bad = graph()
    bad["3"]["class_type"] = "KSamplerDoesNotExist"
    with pytest.raises(ComfyUIValidationError, match=r"missing_node_type.*KSamplerDoesNotExist"):
        await comfy.run(bad, timeout_s=10)


async def test_execution_error_carries_node_and_message(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.fail_next(1, "CUDA out of memory")
    with pytest.raises(ComfyUIExecutionError) as caught:
        await comfy.run(graph(seed=4), timeout_s=10)
    assert caught.value.node_id == "3"
    assert caught.value.node_type == "KSampler"
    assert caught.value.prompt_id == sim.runs[0].prompt_id  # the failed job records it
    assert "CUDA out of memory" in caught.value.exception_message
    assert is_retryable(caught.value)
    # The next run on the same client is unaffected.
    assert (await comfy.run(graph(seed=4), timeout_s=10)).images


async def test_interrupt_from_elsewhere_is_an_interrupted_error(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(1)

    async def interrupt_when_started(event: Event) -> None:
        if isinstance(event, Started):
            async with httpx.AsyncClient() as other:
                await other.post(f"{sim.url}/interrupt", json={"prompt_id": event.prompt_id})

    with pytest.raises(ComfyUIInterruptedError, match="KSampler"):
        await comfy.run(graph(seed=5), timeout_s=10, on_event=interrupt_when_started)
    assert sim.runs[-1].status == "interrupted"


async def test_a_cancel_that_lands_as_a_message_arrives_still_stops_the_prompt(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    """A stop often comes with a frame: deleting our pending prompts makes the server send a
    status frame to every client just as the runs are cancelled. Python 3.11's `wait_for`
    returns the frame and drops such a cancel, and the run went on waiting."""
    sim.faults.hang_next(1)
    run = asyncio.create_task(comfy.run(graph(seed=9), timeout_s=60))
    await _until(lambda: sim.running is not None)
    prompt_id = sim.running.prompt_id if sim.running is not None else ""
    sub = comfy._stream.subscription(prompt_id)
    assert sub is not None
    # The run waits for its next frame (asyncio.Queue keeps its waiters in `_getters`).
    await _until(lambda: sub.queue.empty() and len(sub.queue._getters) > 0)
    # In one turn of the loop: a frame for the run and the cancel.
    sub.queue.put_nowait(QueueStatus(queue_remaining=1))
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    await _until(lambda: sim.running is None)
    assert [r.status for r in sim.runs] == ["interrupted"]


async def test_timeout_interrupts_the_running_prompt(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(1)
    with pytest.raises(
        ComfyUITimeoutError, match=r"did not finish within 0\.2s; interrupted"
    ) as caught:
        await comfy.run(graph(seed=6), timeout_s=0.2)
    await _until(lambda: len(sim.runs) == 1)
    assert sim.runs[0].status == "interrupted"
    assert caught.value.prompt_id == sim.runs[0].prompt_id
    assert sim.queue()["queue_running"] == []


async def test_queue_wait_is_bounded_separately_and_removes_the_pending_prompt(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(1)
    blocker = await comfy.submit(graph(seed=7))
    waiting = await comfy.submit(graph(seed=8))
    with pytest.raises(ComfyUITimeoutError, match=r"waited in the queue for 0\.2s; removed"):
        await comfy.wait(waiting, timeout_s=10, queue_timeout_s=0.2)
    assert sim.queue()["queue_pending"] == []
    assert await comfy.cancel(blocker) == "interrupted"
    await _until(lambda: len(sim.runs) == 1)
    assert [run.prompt_id for run in sim.runs] == [blocker]
    assert sim.submissions[waiting] == 1


async def test_a_pending_prompt_someone_deletes_is_reported_not_waited_for(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    # The socket stays up, so only the idle poll can notice: without it the run would sit
    # out the whole queue budget (an hour by default).
    sim.faults.hang_next(1)
    blocker = await comfy.submit(graph(seed=22))
    waiting = await comfy.submit(graph(seed=23))
    async with httpx.AsyncClient() as other:
        await other.post(f"{sim.url}/queue", json={"delete": [waiting]})
    with pytest.raises(ComfyUIInterruptedError, match="someone removed it") as caught:
        async with asyncio.timeout(5):
            await comfy.wait(waiting, timeout_s=10, queue_timeout_s=3600)
    assert caught.value.prompt_id == waiting
    assert sim.submissions[waiting] == 1  # removed on purpose: never resubmitted
    assert await comfy.cancel(blocker) == "interrupted"


async def test_websocket_drop_mid_run_completes_without_resubmitting(
    sim: ComfyUISimulator, comfy: ComfyUIClient, requests: RequestLog
) -> None:
    sim.faults.drop_ws_next(1, after_steps=1)
    events: list[Event] = []
    result = await comfy.run(graph(seed=9), timeout_s=10, on_event=events.append)

    assert len(result.images) == 1
    assert requests.count("POST /prompt") == 1
    assert sim.submissions[result.prompt_id] == 1
    assert [run.status for run in sim.runs] == ["success"]
    assert comfy.websocket_connections >= 2
    assert events[-1] == Finished(result.prompt_id)
    # The reconnected socket keeps working for the next run.
    assert (await comfy.run(graph(seed=10), timeout_s=10)).images


async def test_history_written_late_is_waited_for(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.history_delay(0.1)
    result = await comfy.run(graph(seed=11), timeout_s=10)
    assert len(result.images) == 1


async def test_a_prompt_lost_in_every_restart_is_resubmitted_a_bounded_number_of_times(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(10)

    def restart_when_started(event: Event) -> None:
        if isinstance(event, Started):
            sim.faults.restart()

    with pytest.raises(ComfyUIInterruptedError, match="resubmitted 3 times already") as caught:
        await comfy.run(graph(seed=12), timeout_s=10, on_event=restart_when_started)
    assert caught.value.prompt_id == list(sim.graphs)[-1]
    assert len(sim.graphs) == 1 + MAX_RESUBMITS
    assert all(count == 1 for count in sim.submissions.values())


async def test_a_lost_prompt_of_another_client_is_reported_not_resubmitted(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(1)
    prompt_id = await comfy.submit(graph(seed=19))
    await _until(lambda: sim.running is not None)
    async for other in client_for(sim.url):
        sim.faults.restart()
        with pytest.raises(ComfyUIInterruptedError, match="neither queued nor in history"):
            await other.wait(prompt_id, timeout_s=10)
    assert list(sim.submissions) == [prompt_id]


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_cancelling_the_wait_stops_the_prompt_on_the_server(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.hang_next(1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await comfy.run(graph(seed=13), timeout_s=60)
    await _until(lambda: len(sim.runs) == 1)
    assert sim.runs[0].status == "interrupted"


async def test_a_short_outage_mid_run_is_ridden_out_by_reconnecting(
    sim: ComfyUISimulator, requests: RequestLog
) -> None:
    sim.faults.slow_steps(0.1)

    def outage_when_started(event: Event) -> None:
        if isinstance(event, Started):
            sim.faults.refuse_connections(0.3)

    async for comfy in client_for(sim.url, requests, backoff=lambda attempt: 0.15):
        result = await comfy.run(graph(seed=14), timeout_s=10, on_event=outage_when_started)
        assert len(result.images) == 1
        assert requests.count("POST /prompt") == 1
        # The next run goes over the socket the reader reopened after the outage.
        sim.faults.slow_steps(None)
        assert (await comfy.run(graph(seed=15), timeout_s=10)).images
        assert comfy.websocket_connections == 2


async def test_an_outage_past_the_reconnect_wait_fails_every_run_then_the_client_recovers(
    sim: ComfyUISimulator,
) -> None:
    sim.faults.hang_next(1)

    def long_outage_when_started(event: Event) -> None:
        if isinstance(event, Started):
            sim.faults.refuse_connections(2.0)

    async for comfy in client_for(sim.url, reconnect_wait_s=0.3):
        loop = asyncio.get_running_loop()
        began = loop.time()
        running = asyncio.ensure_future(
            comfy.run(graph(seed=16), timeout_s=10, on_event=long_outage_when_started)
        )
        await _until(lambda: sim.running is not None)
        queued = await comfy.submit(graph(seed=20))
        outcomes = await asyncio.gather(
            running, comfy.wait(queued, timeout_s=10), return_exceptions=True
        )
        assert loop.time() - began < 1.5  # the wait (0.3 s), not the outage (2 s)
        assert all(isinstance(o, ComfyUIUnavailableError) for o in outcomes), outcomes
        assert "STORYBOARD_RECONNECT_WAIT_S" in str(outcomes[0]) and sim.url in str(outcomes[0])
        assert not is_retryable(outcomes[0])
        assert {o.prompt_id for o in outcomes if isinstance(o, ComfyUIError)} == set(sim.graphs)
        with pytest.raises(ComfyUIUnavailableError):  # a new submit while it is still away
            await comfy.submit(graph(seed=21))
        await comfy.wait_until_up(5)
        async with httpx.AsyncClient() as other:  # free the simulated GPU
            await other.post(f"{sim.url}/interrupt", json={})
        # The same client opens a fresh socket for the next run.
        assert (await comfy.run(graph(seed=17), timeout_s=10)).images
        assert comfy.websocket_connections == 2


async def test_a_prompt_submitted_by_another_client_is_followed_by_polling(
    sim: ComfyUISimulator, comfy: ComfyUIClient
) -> None:
    sim.faults.slow_steps(0.05)
    prompt_id = await comfy.submit(graph(seed=18))
    events: list[Event] = []
    async for other in client_for(sim.url):
        result = await other.wait(prompt_id, timeout_s=10, on_event=events.append)
    assert result.prompt_id == prompt_id
    assert len(result.images) == 1
    assert events == [Started(prompt_id), Finished(prompt_id)]


async def test_closing_the_client_ends_its_waits(sim: ComfyUISimulator) -> None:
    sim.faults.hang_next(1)
    async for comfy in client_for(sim.url):
        waiting = asyncio.ensure_future(comfy.run(graph(seed=24), timeout_s=60))
        await _until(lambda: sim.running is not None)
        await comfy.aclose()
        with pytest.raises(ComfyUIConnectionError, match="was closed"):
            async with asyncio.timeout(5):
                await waiting


async def test_a_run_finishes_at_execution_success_and_a_late_run_end_is_harmless(
    sim: ComfyUISimulator,
) -> None:
    # The `executing` null frame lags 2 s behind execution_success (the real server's
    # lag is 0.4-0.5 s): a client finishing at execution_success returns before it.
    # Polls are 30 s apart, so only a frame can end the run within that.
    async for comfy in client_for(sim.url, poll_interval_s=30.0):
        await _finish_at_success_then_late_run_end(sim, comfy)


async def _finish_at_success_then_late_run_end(sim: ComfyUISimulator, comfy: ComfyUIClient) -> None:
    sim.faults.late_finish(2.0)
    first: list[Event] = []
    result = await comfy.run(graph(seed=21), timeout_s=10, on_event=first.append)
    assert result.prompt_id not in sim.run_ends_sent
    assert [e for e in first if isinstance(e, Finished)] == [Finished(result.prompt_id)]
    assert result.images and result.images[0].type == "output"

    # The late frame reaches the same client while it follows its next prompt, whose
    # steps are slowed until then.
    sim.faults.slow_steps(1.0)
    second: list[Event] = []
    following = asyncio.create_task(comfy.run(graph(seed=22), timeout_s=30, on_event=second.append))
    while result.prompt_id not in sim.run_ends_sent:
        await asyncio.sleep(0.01)
    assert not following.done()
    sim.faults.slow_steps(None)
    again = await following
    assert [e for e in second if isinstance(e, Finished)] == [Finished(again.prompt_id)]
    assert {getattr(e, "prompt_id", None) for e in second} == {again.prompt_id}
    assert first[-1] == Finished(result.prompt_id)  # nothing more reached the finished run

"""The automation of flows.webhook, on the Prefect test API (its trigger and action services
run there): a batch's picture reaches a real HTTP receiver on 127.0.0.1 as documented JSON."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from flows.image_batch import image_batch
from flows.webhook import create_image_webhook
from tests.support.flows import Project

pytestmark = pytest.mark.usefixtures("prefect_api")

DELIVERY_WAIT_S = 30.0


async def delete_automation(automation_id: UUID) -> None:
    async with get_client() as client:
        await client.delete_automation(automation_id)


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[dict[str, str], bytes]]]]:
    received: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.put((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_each_picture_is_posted_to_the_users_webhook(
    demo: Project, receiver: tuple[str, queue.Queue[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = receiver
    automation_id = asyncio.run(create_image_webhook(url, name="test-image-webhook"))
    try:
        state = image_batch(project_id=demo.project_id, limit=1, return_state=True)
        headers, body = received.get(timeout=DELIVERY_WAIT_S)
    finally:  # later tests of the session API would post to a receiver that is gone
        asyncio.run(delete_automation(automation_id))

    assert state.is_completed(), state.message
    sentence = demo.store.get_sentence(demo.project_id, "s01")
    payload = json.loads(body)
    assert headers["Content-Type"] == "application/json"
    assert payload["event"] == "storyboard.image.completed"
    assert payload["project"] == demo.project_id
    assert payload["sentence"] == "s01"
    assert payload["image_file"] == sentence.image_file
    assert payload["seed"] == str(sentence.seed)
    assert set(payload) == {
        "event",
        "id",
        "occurred",
        "project",
        "sentence",
        "image_file",
        "seed",
        "workflow_hash",
    }
    assert received.empty()  # the deprecated `image.completed` is not posted a second time

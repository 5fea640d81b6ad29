"""Tell a downstream app about each picture: a Prefect automation posting to a webhook.

    python -m flows.webhook https://example.com/hooks/storyboard [--name NAME]

creates (or replaces, by name) a `Webhook` block and an automation: its reactive trigger
fires on every `storyboard.image.completed` event and its `CallWebhook` action POSTs this
JSON (Content-Type application/json) to the URL:

    {"event": "storyboard.image.completed", "id": "<event id>", "occurred": "<ISO time>",
     "project": "lighthouse", "sentence": "s01", "image_file": "images/s01.png",
     "seed": "8555422397451639425", "workflow_hash": "<sha256 of the graph>"}

`seed` is text: JavaScript would round a number above 2**53. The server's trigger and action
services send it (the ones `prefect server start` runs, the ephemeral API's too), so the
batch never waits on the app and an app that is down costs nothing but its own call.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.webhook import Webhook
from prefect.events.actions import CallWebhook
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict
from pydantic import SecretStr

from tasks.images import IMAGE_COMPLETED

DEFAULT_NAME = "storyboard-image-completed"
# Jinja on the server: `event` is the triggering event. Quoted with tojson, so a value holding
# a quote or a newline still makes valid JSON.
PAYLOAD = (
    '{"event": {{ event.event | tojson }}, "id": {{ event.id | string | tojson }},'
    ' "occurred": {{ event.occurred.isoformat() | tojson }},'
    ' "project": {{ event.payload.project | tojson }},'
    ' "sentence": {{ event.payload.sentence | tojson }},'
    ' "image_file": {{ event.payload.image_file | tojson }},'
    ' "seed": {{ event.payload.seed_text | tojson }},'
    ' "workflow_hash": {{ event.payload.workflow_hash | tojson }}}'
)


async def create_image_webhook(url: str, name: str = DEFAULT_NAME) -> UUID:
    """The automation posting each picture's event to `url`; replaces one of the same name."""
    block = Webhook(
        method="POST",
        url=SecretStr(url),
        headers=SecretDict({"Content-Type": "application/json"}),
    )
    block_id = await block.asave(name, overwrite=True)
    try:
        old = await Automation.aread(name=name)
    except (ValueError, ObjectNotFound):
        old = None
    if old is not None:
        await old.adelete()
    automation = Automation(
        name=name,
        description=f"POST each {IMAGE_COMPLETED} event to the {name!r} webhook block",
        trigger=EventTrigger(
            expect={IMAGE_COMPLETED}, posture=Posture.Reactive, threshold=1, within=timedelta(0)
        ),
        actions=[CallWebhook(block_document_id=block_id, payload=PAYLOAD)],
    )
    created = await automation.acreate()
    assert created.id is not None  # the server gave it one
    return created.id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.webhook", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("url", help="where to POST each picture's event")
    parser.add_argument("--name", default=DEFAULT_NAME, help="the block's and automation's name")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"the webhook URL must start with http:// or https://, got {args.url!r}")
    automation_id = asyncio.run(create_image_webhook(args.url, args.name))
    print(f"automation {args.name} ({automation_id}): each {IMAGE_COMPLETED} is POSTed")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

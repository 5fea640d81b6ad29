"""Binary preview frames, as ComfyUI sends them while a sampler runs.

Only for a prompt whose `extra_data.preview_method` is set and not "none". A
client that declared `supports_preview_metadata` (its first message,
`feature_flags`) gets type 4: the event, a 4-byte JSON length, the metadata
(node and prompt ids, image_type) and the image, before the step's `progress`.
Everyone else gets type 1: the event, a 4-byte format (1 JPEG, 2 PNG) and the
image, after `progress`. A prompt without client_id previews to every socket,
as type 1.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from dataclasses import dataclass

from PIL import Image

from storyboard.simulator.graph import FrameInputs
from storyboard.simulator.hub import Hub
from storyboard.simulator.render import FrameSpec, render_frame
from storyboard.simulator.state import QueueItem

PREVIEW_FORMATS = {"JPEG": 1, "PNG": 2}
_PREVIEW_IMAGE = 1
_PREVIEW_IMAGE_WITH_METADATA = 4
_PREVIEW_WIDTH = 64


def _encode(frame: FrameInputs, image_format: str) -> bytes:
    height = max(16, _PREVIEW_WIDTH * frame.height // max(1, frame.width))
    png = render_frame(FrameSpec(_PREVIEW_WIDTH, height, "", frame.seed))
    if image_format == "PNG":
        return png
    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").save(out, format=image_format, quality=80)
    return out.getvalue()


@dataclass
class PreviewFrames:
    """One step's preview, sent in the form each recipient gets it."""

    hub: Hub
    item: QueueItem
    node_id: str
    image: bytes | None
    image_format: str

    async def send(self, *, metadata: bool) -> None:
        """The type-4 frames (`metadata`) or the type-1 frames of this step."""
        if self.image is None:
            return
        own = self.item.client_id
        for client_id in [own] if own is not None else self.hub.clients():
            if metadata == (own is not None and self.hub.wants_metadata(client_id)):
                await self.hub.send_bytes(client_id, self._frame(metadata=metadata))

    def _frame(self, *, metadata: bool) -> bytes:
        assert self.image is not None
        if not metadata:
            kind = PREVIEW_FORMATS[self.image_format]
            return struct.pack(">II", _PREVIEW_IMAGE, kind) + self.image
        info = json.dumps({
            "node_id": self.node_id, "prompt_id": self.item.prompt_id,
            "display_node_id": self.node_id, "parent_node_id": None,
            "real_node_id": self.node_id, "image_type": f"image/{self.image_format.lower()}",
        }).encode()  # fmt: skip
        return struct.pack(">II", _PREVIEW_IMAGE_WITH_METADATA, len(info)) + info + self.image


async def preview_frames(
    hub: Hub, item: QueueItem, node_id: str, frame: FrameInputs, image_format: str
) -> PreviewFrames:
    """This step's preview of `item`, rendered only when the prompt asked for previews."""
    wanted = item.extra_data.get("preview_method", "none") not in ("none", None)
    image = await asyncio.to_thread(_encode, frame, image_format) if wanted else None
    return PreviewFrames(hub, item, node_id, image, image_format)

"""Async ComfyUI client: run API-format graphs, follow their progress, fetch results.

async with ComfyUIClient("http://127.0.0.1:8188") as comfy:
    await comfy.wait_until_up(30)
    result = await comfy.run(graph, timeout_s=300, on_event=print)
    print(result.queue_s, result.render_s)  # waiting behind others, then its own execution
    png = await comfy.download(result.images[0], max_bytes=64 << 20)

`objectinfo` is ComfyUI's own graph validation over an /object_info snapshot;
`inventory` says from it what a server has (models, LoRAs, nodes), to route a graph
in a mixed farm. `ComfyUIClient(..., headers=...)` serves a server behind an
authenticating proxy; `submit(..., front=True)` queues a prompt ahead of the others.
"""

from storyboard.comfyui.client import ComfyUIClient
from storyboard.comfyui.events import (
    Cached,
    Event,
    Finished,
    NodeExecuting,
    Preview,
    Progress,
    Queued,
    Started,
)
from storyboard.comfyui.results import OutputImage, RunResult

__all__ = [
    "Cached",
    "ComfyUIClient",
    "Event",
    "Finished",
    "NodeExecuting",
    "OutputImage",
    "Preview",
    "Progress",
    "Queued",
    "RunResult",
    "Started",
]

"""One prompt's run: the WebSocket messages, the simulated work and the saved images.

What it sends follows the captured real runs (tests/fixtures/ws_trace*.jsonl):
execution_start, execution_cached (every node of the prompt whose cache key an
earlier prompt left, in graph order), then the nodes that are not cached in
ComfyUI's own order (graph.comfy_order), each with `progress_state` running and
`executing`; a sampler step sends `progress_state` (value = step, max = steps,
integers), a type-4 preview for a client that declared supports_preview_metadata,
`progress`, then a type-1 preview (format 1 JPEG or 2 PNG) for the others; an
output node sends `executed`; each finished node a `progress_state` keeping its
value. Every `progress_state` lists all nodes run so far in the prompt. A cached
output node repeats its earlier `executed` (same file names) and sends one
`progress_state` marking it finished (ComfyUI's execute() of a cached node:
_send_cached_ui, then finish_progress). The caller writes history and sends the
final status + `executing` null; with the `status` on queueing and on start, every
submission gives its sockets three `status` frames (PromptQueue.put, get, task_done).

A sampler first pays the warm-up charges (`warm`: model load, LoRA switch, new
references) as time before its first step, as a GPU server loads and patches the
model when sampling starts; the outcome records them.

The simulated GPU keeps to one clock per prompt, started when it starts: the warm-up
and every sampler step end at their due time, so the simulator's own work (messages,
previews) and a busy host (many simulators on few cores) do not lengthen a render.
For the same reason the output frame is drawn and encoded in a thread while the
sampler runs, and saved when it ends.

A node whose class has an intermediate output (ImageCropV2) saves a temp preview of
its frame and sends `executed` with it, which history lists beside SaveImage's output;
when it did not run (cached), its cached preview is sent after the others, before
`execution_success`, as ComfyUI does.

Known differences: a preview is the simulator's small placeholder frame, not a latent;
reference encodes are paid at the sampler, not at their VAEEncode nodes; a real
server encodes its PNG after the decode, on its own CPU, so its time is part of T.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from storyboard.simulator.config import BROKEN_MODELS
from storyboard.simulator.files import UnsafePathError
from storyboard.simulator.graph import (
    SAMPLERS,
    comfy_order,
    execution_order,
    frame_inputs,
    sampler_steps,
    signatures,
)
from storyboard.simulator.host import RunHost
from storyboard.simulator.previews import PreviewFrames, preview_frames
from storyboard.simulator.render import FrameSpec, bomb_png, deep_output, render_frame
from storyboard.simulator.state import QueueItem, now_ms
from storyboard.simulator.warm import Charges, charges, warm_state

OUTPUT_CLASSES = {"SaveImage": False, "PreviewImage": True}  # class -> is temp


@dataclass
class RunOutcome:
    """How one prompt's execution on the simulator ended."""

    status: str  # success | error | interrupted
    outputs: dict[str, Any] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    kept_signatures: set[str] = field(default_factory=set)
    charges: Charges = field(default_factory=Charges)


class _Stop(Exception):
    def __init__(self, kind: str, data: dict[str, Any]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.data = data


class Execution:
    def __init__(self, sim: RunHost, item: QueueItem) -> None:
        self.sim = sim
        self.item = item
        self.graph = item.graph
        self.outcome = RunOutcome(status="success")
        self.executed: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.due = 0.0  # the simulated GPU's clock (loop time): when its current work ends
        self.drawing: dict[FrameSpec, asyncio.Task[bytes]] = {}  # frames drawn ahead
        self.drawn: dict[FrameSpec, bytes] = {}  # a crop's preview and the save share a frame
        self.previewing: set[str] = set()  # nodes with an intermediate output (a preview)

    async def _send(self, kind: str, data: dict[str, Any], *, record: bool = False) -> None:
        data = {**data, "prompt_id": self.item.prompt_id}
        if record:
            self.outcome.messages.append([kind, data])
        await self.sim.hub.send(self.item.client_id, kind, data)

    async def _send_progress(self, kind: str, data: dict[str, Any]) -> None:
        # Progress of a prompt without client_id goes to everyone (captured).
        data = {**data, "prompt_id": self.item.prompt_id}
        if self.item.client_id is None:
            await self.sim.hub.broadcast(kind, data)
        else:
            await self.sim.hub.send(self.item.client_id, kind, data)

    async def _progress_state(self, node_id: str, value: float, maximum: float, state: str) -> None:
        self.states[node_id] = {
            "value": value, "max": maximum, "state": state, "node_id": node_id,
            "prompt_id": self.item.prompt_id, "display_node_id": node_id,
            "parent_node_id": None, "real_node_id": node_id,
        }  # fmt: skip
        await self._send_progress("progress_state", {"nodes": dict(self.states)})

    async def run(self) -> RunOutcome:
        keys = signatures(self.graph, self.sim.files.input_digest)
        cached = [n for n in self.graph if keys[n] in self.sim.cache_keys]
        info = self.sim.object_info()

        def is_output(node_id: str) -> bool:
            spec = info.get(self.graph[node_id]["class_type"], {})
            return bool(spec.get("output_node"))

        def has_preview(node_id: str) -> bool:
            spec = info.get(self.graph[node_id]["class_type"], {})
            return bool(spec.get("has_intermediate_output"))

        self.previewing = {n for n in self.graph if has_preview(n)}
        order = comfy_order(self.graph, self.item.outputs, set(cached), is_output)
        self.due = asyncio.get_running_loop().time()
        await self._send("execution_start", {"timestamp": now_ms()}, record=True)
        await self._send("execution_cached", {"nodes": cached, "timestamp": now_ms()}, record=True)
        try:
            for node_id in order:
                if node_id in cached:
                    # A cached node ComfyUI still stages (an output) repeats its `executed`
                    # and is marked finished: one `progress_state`, 1.0 of 1.0.
                    await self._replay_cached(node_id, keys[node_id])
                    # Integers here, as ComfyUI's finish_progress sends them (a run node's
                    # are floats): a client must take both.
                    await self._progress_state(node_id, 1, 1, "finished")
                else:
                    await self._execute_node(node_id, keys[node_id])
            # As ComfyUI's: a node with an intermediate output (ImageCropV2's preview) that
            # did not run this time repeats its cached preview, in graph order, last.
            for node_id in self.graph:
                if node_id in self.previewing and node_id not in self.executed:
                    await self._replay_cached(node_id, keys[node_id])
        except _Stop as stop:
            self.outcome.status = "error" if stop.kind == "execution_error" else "interrupted"
            await self._send(stop.kind, {**stop.data, "timestamp": now_ms()}, record=True)
            self.outcome.outputs = {}
        else:
            await self._send("execution_success", {"timestamp": now_ms()}, record=True)
        finally:
            for drawing in self.drawing.values():
                drawing.cancel()  # an unused frame (the run stopped): its thread just ends
        self.outcome.kept_signatures = {keys[n] for n in [*cached, *self.executed]}
        return self.outcome

    async def _replay_cached(self, node_id: str, key: str) -> None:
        ui = self.sim.ui_cache.get(key)
        if ui is not None:
            self.outcome.outputs[node_id] = ui
            await self._send("executed", {"node": node_id, "display_node": node_id, "output": ui})

    def _stop(self, kind: str, node_id: str, **extra: Any) -> _Stop:
        data = {"node_id": node_id, "node_type": self.graph[node_id]["class_type"],
                "executed": list(self.executed), **extra}  # fmt: skip
        return _Stop(kind, data)

    def _error(self, node_id: str, message: str, exception_type: str) -> _Stop:
        inputs = self.graph[node_id].get("inputs", {})
        return self._stop(
            "execution_error", node_id,
            exception_message=message, exception_type=exception_type, traceback=[],
            current_inputs={k: [v] for k, v in inputs.items() if not isinstance(v, list)},
            current_outputs=list(self.graph),
        )  # fmt: skip

    async def _execute_node(self, node_id: str, key: str) -> None:
        if self.item.interrupt.is_set():
            raise self._stop("execution_interrupted", node_id)
        class_type = self.graph[node_id]["class_type"]
        inputs = self.graph[node_id].get("inputs", {})
        await self._progress_state(node_id, 0.0, 1.0, "running")
        await self._send("executing", {"node": node_id, "display_node": node_id})
        for input_name, broken in BROKEN_MODELS.get(class_type, {}).items():
            if inputs.get(input_name) in broken:
                raise self._error(node_id, broken[inputs[input_name]],
                                  "safetensors._safetensors_rust.SafetensorError")  # fmt: skip
        node_failure = self.sim.faults.take_node_failure(class_type)
        if node_failure is not None:
            raise self._error(node_id, *node_failure)
        if class_type in SAMPLERS:
            await self._sample(node_id, inputs)
        if node_id in self.previewing:
            # ComfyUI's preview UI says whether the images are an animation.
            ui = {"images": await self._save_preview(), "animated": [False]}
            self.outcome.outputs[node_id] = ui
            self.sim.ui_cache[key] = ui
            await self._send("executed", {"node": node_id, "display_node": node_id, "output": ui})
        if class_type in OUTPUT_CLASSES:
            ui = {"images": await self._save(node_id, OUTPUT_CLASSES[class_type], inputs)}
            self.outcome.outputs[node_id] = ui
            self.sim.ui_cache[key] = ui
            await self._send("executed", {"node": node_id, "display_node": node_id, "output": ui})
        self.executed.append(node_id)
        # A finished node keeps its value: 1.0 of 1.0, or a sampler's steps of steps.
        last = self.states[node_id]
        await self._progress_state(node_id, last["max"], last["max"], "finished")

    async def _pause(self, seconds: float | None) -> None:
        """Simulated work; ends early (raising) when the prompt is interrupted."""
        try:
            async with asyncio.timeout(seconds):  # not wait_for: it can drop a cancel (3.11)
                await self.item.interrupt.wait()
        except TimeoutError:
            return

    async def _work_for(self, seconds: float) -> None:
        """`seconds` of GPU time on the prompt's clock: it ends at its due time, so a late
        wake-up or slow work of ours before it is caught up, not added."""
        self.due += seconds
        await self._pause(max(0.0, self.due - asyncio.get_running_loop().time()))

    async def _sample(self, node_id: str, inputs: dict[str, Any]) -> None:
        faults = self.sim.faults
        if faults.take_fail():
            raise self._error(node_id, faults.fail_message, "RuntimeError")
        permanent = faults.matching_failure(self.graph)
        if permanent is not None:
            raise self._error(node_id, permanent, "RuntimeError")
        self._draw_ahead()
        await self._warm_up(node_id)
        steps = self.sim.config.steps or sampler_steps(self.graph, node_id)
        drop_at = faults.drop_after_steps if faults.take_drop() else None
        hang = faults.take_hang()
        # Steps keep to the prompt's clock, as a GPU's do whatever the host's CPU is doing:
        # a late wake-up or a slow preview is caught up on the next step, so a render takes
        # `steps * step_s` on a loaded machine too, not that plus every delay.
        for step in range(1, steps + 1):
            if drop_at == step - 1:
                await self.sim.hub.close_client(self.item.client_id)
            await self._work_for(
                faults.step_s if faults.step_s is not None else self.sim.config.step_s
            )
            if self.item.interrupt.is_set():
                raise self._stop("execution_interrupted", node_id)
            await self._progress_state(node_id, step, steps, "running")
            frames = await self._previews(node_id)
            await frames.send(metadata=True)
            await self._send_progress("progress", {"value": step, "max": steps, "node": node_id})
            await frames.send(metadata=False)
        if drop_at == steps:
            await self.sim.hub.close_client(self.item.client_id)
        if hang:
            await self._pause(None)
            raise self._stop("execution_interrupted", node_id)

    async def _warm_up(self, node_id: str) -> None:
        config = self.sim.config
        current = warm_state(self.graph, execution_order(self.graph, self.item.outputs))
        charged = charges(self.sim.warm, current, load_s=config.load_s,
                          lora_switch_s=config.lora_switch_s,
                          reference_s=config.reference_s)  # fmt: skip
        self.sim.warm = current
        if charged.total_s > 0:  # a second sampler of the graph finds all warm: keep the first's
            self.outcome.charges = charged
            await self._work_for(charged.total_s)
            if self.item.interrupt.is_set():
                raise self._stop("execution_interrupted", node_id)

    async def _previews(self, node_id: str) -> PreviewFrames:
        frame = frame_inputs(self.graph, list(self.graph))
        return await preview_frames(
            self.sim.hub, self.item, node_id, frame, self.sim.config.preview_format
        )

    def _frame_specs(self) -> list[FrameSpec]:
        """The frames the graph's output saves, one per latent of its batch."""
        frame = frame_inputs(self.graph, execution_order(self.graph, self.item.outputs))
        references = tuple(
            ref for name in frame.references if (ref := self.sim.files.read_input(name))
        )
        return [
            FrameSpec(
                frame.width, frame.height, frame.prompt, frame.seed + index, frame.loras, references
            )
            for index in range(frame.batch_size)
        ]

    def _draw_ahead(self) -> None:
        """Start drawing the output frames in threads (once per prompt), for `_save`."""
        for spec in [] if self.drawing else self._frame_specs():
            self.drawing[spec] = asyncio.create_task(asyncio.to_thread(render_frame, spec))

    async def _drawn(self, spec: FrameSpec) -> bytes:
        if spec in self.drawn:
            return self.drawn[spec]
        drawing = self.drawing.pop(spec, None)
        data = await (drawing if drawing is not None else asyncio.to_thread(render_frame, spec))
        self.drawn[spec] = data
        return data

    async def _save_preview(self) -> list[dict[str, str]]:
        """The temp preview of an intermediate output: the frame, untouched by output faults
        (they are the SaveImage's)."""
        return [
            self.sim.files.save_image(await self._drawn(spec), "", temp=True)
            for spec in self._frame_specs()
        ]

    async def _save(self, node_id: str, temp: bool, inputs: dict[str, Any]) -> list[dict[str, str]]:
        prefix = str(inputs.get("filename_prefix", "ComfyUI"))
        images = []
        for spec in self._frame_specs():
            odd = self.sim.faults.take_output()
            if odd is not None and odd.size:
                spec = replace(spec, width=odd.size[0], height=odd.size[1])
            data = await self._drawn(spec)
            suffix = ".png"
            if odd is not None and odd.mode is not None:
                data, suffix = await asyncio.to_thread(deep_output, data, odd.mode)
            if self.sim.faults.take_corrupt():
                data = data[: len(data) // 2]
            if self.sim.faults.take_bomb():
                data = bomb_png()
            try:
                image = self.sim.files.save_image(data, prefix, temp=temp, suffix=suffix)
            except UnsafePathError as exc:
                raise self._error(
                    node_id,
                    f"Saving image outside the output folder is not allowed: {exc}",
                    "Exception",
                ) from exc
            if self.sim.faults.take_escape():
                image = {**image, "filename": "../../x.png"}
            images.append(image)
        return images

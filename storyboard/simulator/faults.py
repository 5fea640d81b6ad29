"""Fault injection: make the simulated ComfyUI misbehave the ways a real one does.

Each counter applies to the next prompts that reach the relevant point, then
runs out. Call from the simulator's event loop or from any other thread.

- `fail_next(n, message)`: the sampler node raises; the client gets
  `execution_error` (node id and type of the sampler, `message`).
- `fail_node_next(class_type, n, message, exception_type)`: the next n nodes of
  that class (a loader: `UNETLoader`, `LoraLoaderModelOnly`, ...) raise instead; the
  client gets `execution_error` with that node, message and exception type.
- `fail_matching(predicate, message)`: the sampler raises for every prompt whose
  graph satisfies `predicate` (a permanent failure of one picture); None clears it.
- `drop_ws_next(n, after_steps=k)` / `drop_websockets(after_steps=k)`: after k
  sampler steps the server closes every socket of the submitting client; the
  run itself goes on and its later messages reach nobody until it reconnects.
- `history_delay(seconds)`: `/history/{id}` stays `{}` that long after the run
  ended (the `execution_success`-before-history race, stretched).
- `late_finish(seconds)`: the `executing` frame with `node: null` follows the rest of
  the finish (`execution_success`, history, the queue status) that much later, as the
  real server's sometimes does by 0.4-0.5 s; 0 turns it off.
- `refuse_connections(seconds)`: the server stops listening (TCP connections
  are refused, open ones closed), then listens again on the same port.
- `slow_steps(step_s)`: every sampler step takes `step_s` from now on.
- `corrupt_next(n)`: the saved PNG is truncated (the run still succeeds).
- `hang_next(n)`: the sampler never finishes until the prompt is interrupted.
- `restart(down_s=0.0)`: like a ComfyUI restart: queue, history and cache are
  lost, the running prompt vanishes, every socket drops; optionally refuses
  connections for `down_s`.
- `answer_next(path, n, status=, body=, content_type=)`: the next n requests to
  `path` (with or without the /api prefix) get this canned answer instead (an
  HTML error page from a proxy, a 200 that is not JSON or lacks `prompt_id`).
- `bomb_next(n)`: the saved file is a PNG whose header claims 30000x30000 pixels.
- `escape_name_next(n)`: history and `executed` report the output file as
  `../../x.png` (a server trying to make the client read outside its folders).
- `trickle_view_next(n, byte_every_s=5.0)`: the next n `GET /view` answers
  announce the whole file (Content-Length) but send its body one byte every
  `byte_every_s` seconds (a client needs a total deadline, not a read timeout).
- `endless_history_next(n)`: the next n `GET /history/{id}` answers are a 200
  `application/json` body that never ends: `[` then chunks of spaces, streamed
  (never buffered) until the client hangs up (a client needs a byte cap).
- `output_next(n, size=(w, h), mode=None)`: the next n saved images are `size`
  instead of the graph's latent size, and/or in Pillow mode `"I;16"` (a 16-bit
  grey PNG, the frame's grey levels times 257) or `"F"` (a float TIFF, grey
  levels / 255 in 0..1, saved as `..._.tif` as history reports it; PNG cannot
  hold float). Both keep the frame's picture in their range, so a client that
  converts with the range gets it back and one that clips gets white or black.

Reading (not a fault): `ComfyUISimulator.max_in_flight(client_id=None)` is the
most prompts ever queued + running at once (of one client id, or all);
`switch_seconds()` the LoRA-switch and reference time charged over all runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CannedAnswer:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class OutputFault:
    """How the next saved image differs: its (width, height) and/or Pillow mode."""

    size: tuple[int, int] | None = None
    mode: str | None = None


OUTPUT_MODES = frozenset({"I;16", "F"})


@dataclass
class _Counter:
    remaining: int = 0

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class Faults:
    def __init__(
        self,
        *,
        on_refuse: Callable[[float], None],
        on_restart: Callable[[float], None],
    ) -> None:
        self._lock = threading.Lock()
        self._fail = _Counter()
        self._drop = _Counter()
        self._corrupt = _Counter()
        self._hang = _Counter()
        self._bomb = _Counter()
        self._escape = _Counter()
        self._trickle = _Counter()
        self._endless = _Counter()
        self._output = _Counter()
        self.trickle_byte_every_s = 5.0
        self.output_fault = OutputFault()
        self._answers: dict[str, tuple[_Counter, CannedAnswer]] = {}
        self.fail_message = "simulated sampler failure"
        self._node_failures: dict[str, tuple[_Counter, str, str]] = {}
        self._fail_if: tuple[Callable[[dict[str, Any]], bool], str] | None = None
        self.drop_after_steps = 1
        self.history_delay_s = 0.0
        self.late_finish_s = 0.0
        self.step_s: float | None = None
        self._on_refuse = on_refuse
        self._on_restart = on_restart

    def fail_next(self, n: int = 1, message: str = "simulated sampler failure") -> None:
        with self._lock:
            self._fail.remaining = n
            self.fail_message = message

    def fail_node_next(
        self,
        class_type: str,
        n: int = 1,
        message: str = "Error while deserializing header: header too large",
        exception_type: str = "safetensors._safetensors_rust.SafetensorError",
    ) -> None:
        with self._lock:
            self._node_failures[class_type] = (_Counter(n), message, exception_type)

    def take_node_failure(self, class_type: str) -> tuple[str, str] | None:
        """(message, exception type) if this node of `class_type` is to fail now."""
        with self._lock:
            found = self._node_failures.get(class_type)
            return found[1:] if found is not None and found[0].take() else None

    def fail_matching(
        self, predicate: Callable[[dict[str, Any]], bool] | None, message: str = "permanent failure"
    ) -> None:
        with self._lock:
            self._fail_if = None if predicate is None else (predicate, message)

    def matching_failure(self, graph: dict[str, Any]) -> str | None:
        """The message to fail `graph` with, if `fail_matching` selects it."""
        with self._lock:
            rule = self._fail_if
        return rule[1] if rule is not None and rule[0](graph) else None

    def drop_ws_next(self, n: int = 1, *, after_steps: int = 1) -> None:
        with self._lock:
            self._drop.remaining = n
            self.drop_after_steps = max(0, after_steps)

    def drop_websockets(self, after_steps: int = 1) -> None:
        self.drop_ws_next(1, after_steps=after_steps)

    def history_delay(self, seconds: float) -> None:
        self.history_delay_s = max(0.0, seconds)

    def late_finish(self, seconds: float) -> None:
        self.late_finish_s = max(0.0, seconds)

    def slow_steps(self, step_s: float | None) -> None:
        """Time per sampler step from now on (None: back to the configured one)."""
        self.step_s = step_s

    def corrupt_next(self, n: int = 1) -> None:
        with self._lock:
            self._corrupt.remaining = n

    def hang_next(self, n: int = 1) -> None:
        with self._lock:
            self._hang.remaining = n

    def answer_next(
        self,
        path: str,
        n: int = 1,
        *,
        status: int = 200,
        body: str | bytes = b"",
        content_type: str = "text/html",
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._answers[path.removeprefix("/api")] = (
                _Counter(n),
                CannedAnswer(status, data, content_type),
            )

    def bomb_next(self, n: int = 1) -> None:
        with self._lock:
            self._bomb.remaining = n

    def escape_name_next(self, n: int = 1) -> None:
        with self._lock:
            self._escape.remaining = n

    def trickle_view_next(self, n: int = 1, byte_every_s: float = 5.0) -> None:
        with self._lock:
            self._trickle.remaining = n
            self.trickle_byte_every_s = max(0.0, byte_every_s)

    def endless_history_next(self, n: int = 1) -> None:
        with self._lock:
            self._endless.remaining = n

    def output_next(
        self, n: int = 1, *, size: tuple[int, int] | None = None, mode: str | None = None
    ) -> None:
        if mode is not None and mode not in OUTPUT_MODES:
            raise ValueError(
                f"output_next mode must be one of {sorted(OUTPUT_MODES)}, got {mode!r}"
            )
        if size is not None and (size[0] < 1 or size[1] < 1):
            raise ValueError(f"output_next size must be positive, got {size!r}")
        with self._lock:
            self._output.remaining = n
            self.output_fault = OutputFault(size, mode)

    def refuse_connections(self, seconds: float) -> None:
        self._on_refuse(seconds)

    def restart(self, down_s: float = 0.0) -> None:
        self._on_restart(down_s)

    # The execution side consumes the counters through these.
    def take_fail(self) -> bool:
        with self._lock:
            return self._fail.take()

    def take_drop(self) -> bool:
        with self._lock:
            return self._drop.take()

    def take_corrupt(self) -> bool:
        with self._lock:
            return self._corrupt.take()

    def take_hang(self) -> bool:
        with self._lock:
            return self._hang.take()

    def take_bomb(self) -> bool:
        with self._lock:
            return self._bomb.take()

    def take_escape(self) -> bool:
        with self._lock:
            return self._escape.take()

    def take_trickle(self) -> float | None:
        """Seconds per byte for this /view answer, or None to answer normally."""
        with self._lock:
            return self.trickle_byte_every_s if self._trickle.take() else None

    def take_endless(self) -> bool:
        with self._lock:
            return self._endless.take()

    def take_output(self) -> OutputFault | None:
        with self._lock:
            return self.output_fault if self._output.take() else None

    def take_answer(self, path: str) -> CannedAnswer | None:
        with self._lock:
            found = self._answers.get(path.removeprefix("/api"))
            return found[1] if found is not None and found[0].take() else None

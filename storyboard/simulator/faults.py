"""Fault injection: make the simulated ComfyUI misbehave the ways a real one does.

Each counter applies to the next prompts that reach the relevant point, then
runs out. Call from the simulator's event loop or from any other thread.

- `fail_next(n, message)`: the sampler node raises; the client gets
  `execution_error` (node id and type of the sampler, `message`).
- `fail_matching(predicate, message)`: the sampler raises for every prompt whose
  graph satisfies `predicate` (a permanent failure of one picture); None clears it.
- `drop_ws_next(n, after_steps=k)` / `drop_websockets(after_steps=k)`: after k
  sampler steps the server closes every socket of the submitting client; the
  run itself goes on and its later messages reach nobody until it reconnects.
- `history_delay(seconds)`: `/history/{id}` stays `{}` that long after the run
  ended (the `execution_success`-before-history race, stretched).
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
        self._answers: dict[str, tuple[_Counter, CannedAnswer]] = {}
        self.fail_message = "simulated sampler failure"
        self._fail_if: tuple[Callable[[dict[str, Any]], bool], str] | None = None
        self.drop_after_steps = 1
        self.history_delay_s = 0.0
        self.step_s: float | None = None
        self._on_refuse = on_refuse
        self._on_restart = on_restart

    def fail_next(self, n: int = 1, message: str = "simulated sampler failure") -> None:
        with self._lock:
            self._fail.remaining = n
            self.fail_message = message

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

    def take_answer(self, path: str) -> CannedAnswer | None:
        with self._lock:
            found = self._answers.get(path.removeprefix("/api"))
            return found[1] if found is not None and found[0].take() else None

"""Measuring a process from the outside of the code under test.

- `ProcessSampler`: peak RSS (the kernel's VmHWM) and the most threads seen, sampled from
  /proc/self/status by a background thread (itself excluded from the count), and the name
  of every thread seen by its native id (so CPU per thread read from outside has names).
- `StoreTimer`: time spent inside `Store` methods, by wrapping the class's public methods
  for the duration of a run (the store itself is not edited; nested calls count once).
- `ApiCounter`: HTTP requests sent to the Prefect API, by wrapping httpx's transports
  (every request Prefect's clients send, sync or async, passes through one of them).
- `StackSampler`: a small sampling profiler over all threads (`sys._current_frames`), so the
  flow's worker threads are profiled too, which cProfile would miss.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from storyboard.store import Store

_STATUS = Path("/proc/self/status")


def read_status() -> dict[str, int]:
    """VmRSS/VmHWM in bytes and Threads from /proc/self/status."""
    values: dict[str, int] = {}
    for line in _STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
        elif key == "Threads":
            values[key] = int(rest.strip())
    return values


def thread_group(name: str) -> str:
    """A thread's name without its number: the lanes' or the pool's threads as one."""
    return re.sub(r"[-_]?\d+(_\d+)?$", "", name)


class ProcessSampler:
    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.max_threads = 0
        self.max_rss = 0
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _sample(self) -> None:
        status = read_status()
        self.max_threads = max(self.max_threads, status["Threads"] - 1)  # minus this sampler
        self.max_rss = max(self.max_rss, status["VmRSS"])
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self.names[thread.native_id] = thread.name

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_rss(self) -> int:
        return max(self.max_rss, read_status()["VmHWM"])


def _stored_by(name: str, args: tuple[Any, ...]) -> int:
    """How many pictures a Store call records (its arguments after `self`)."""
    if name == "complete_job":
        return 1
    if name == "complete_jobs" and len(args) > 1:
        return len(args[1])
    return 0


class StoreTimer:
    """Seconds and calls per `Store` method while active; `stored_at` = end of each
    `complete_job`, once per job of each `complete_jobs` (monotonic), i.e. when an image
    became the sentence's picture.

    `seconds` sums every call's wall time, so calls that overlap (several task threads in
    the store at once) are counted once per thread, waiting included. `busy_s` is the time at
    least one call was in progress (the union of the calls' intervals): how long the store,
    the one resource every image passes through, was occupied.
    """

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.stored_at: list[float] = []
        self.busy_s = 0.0
        self._in_calls = 0
        self._busy_since = 0.0
        self._lock = threading.Lock()
        self._depth = threading.local()

    def _enter(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._in_calls == 0:
                self._busy_since = now
            self._in_calls += 1
            return now

    def _leave(self, name: str, start: float, stored: int) -> None:
        with self._lock:
            end = time.monotonic()
            self._in_calls -= 1
            if self._in_calls == 0:
                self.busy_s += end - self._busy_since
            self.seconds[name] += end - start
            self.calls[name] += 1
            self.stored_at.extend([end] * stored)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            if depth:  # a Store method calling another: counted in its caller
                return method(*args, **kwargs)
            self._depth.value = 1
            start = self._enter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.value = 0
                self._leave(name, start, _stored_by(name, args))

        return timed

    @contextlib.contextmanager
    def active(self) -> Iterator[StoreTimer]:
        # Store inherits its job ledger: wrap what every class of the MRO defines, on Store.
        originals: dict[str, Any] = {}
        for cls in reversed(Store.__mro__[:-1]):
            for n, v in vars(cls).items():
                if callable(v) and (not n.startswith("_") or n == "__init__"):
                    originals[n] = v
        own = set(vars(Store))
        for name, method in originals.items():
            setattr(Store, name, self._wrap(name, method))
        try:
            yield self
        finally:
            for name, method in originals.items():
                if name in own:
                    setattr(Store, name, method)
                else:
                    delattr(Store, name)

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class ApiCounter:
    """Requests whose URL starts with `api_url`, by method, path (ids as {id}) and error status."""

    def __init__(self) -> None:
        self.api_url: str | None = None
        self.by_endpoint: collections.Counter[str] = collections.Counter()
        self.times: list[float] = []  # monotonic, when each counted response came back
        self._lock = threading.Lock()

    def _count(self, request: httpx.Request, response: httpx.Response) -> None:
        url = str(request.url)
        if self.api_url is None or not url.startswith(self.api_url):
            return
        path = _ID.sub("{id}", request.url.path)
        status = "" if response.status_code < 300 else f" -> {response.status_code}"
        with self._lock:
            self.by_endpoint[f"{request.method} {path}{status}"] += 1
            self.times.append(time.monotonic())

    def reset(self) -> None:
        with self._lock:
            self.by_endpoint.clear()
            self.times.clear()

    @property
    def total(self) -> int:
        return sum(self.by_endpoint.values())

    @contextlib.contextmanager
    def active(self) -> Iterator[ApiCounter]:
        sync_send = httpx.HTTPTransport.handle_request
        async_send = httpx.AsyncHTTPTransport.handle_async_request
        counter = self

        def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
            response = sync_send(self, request)
            counter._count(request, response)
            return response

        async def handle_async_request(
            self: httpx.AsyncHTTPTransport, request: httpx.Request
        ) -> httpx.Response:
            response = await async_send(self, request)
            counter._count(request, response)
            return response

        httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
        httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]
        try:
            yield self
        finally:
            httpx.HTTPTransport.handle_request = sync_send  # type: ignore[method-assign]
            httpx.AsyncHTTPTransport.handle_async_request = async_send  # type: ignore[method-assign]


def _thread_cpu_ns(native_id: int) -> int:
    """CPU time of one thread of this process (schedstat: nanoseconds on the CPU)."""
    try:
        return int(Path(f"/proc/self/task/{native_id}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class StackSampler:
    """A CPU profile over every thread: each sample charges the CPU time a thread used since
    the previous sample to the stack it is in now, so waiting threads cost nothing."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.own: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.by_thread: collections.Counter[str] = collections.Counter()
        self.own_by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-profiler", daemon=True)

    @staticmethod
    def _label(frame: Any) -> str:
        code = frame.f_code
        parts = Path(code.co_filename).parts
        short = "/".join(parts[-3:]) if "site-packages" in parts else "/".join(parts[-2:])
        return f"{code.co_name} ({short}:{code.co_firstlineno})"

    def _sample(self) -> None:
        frames = sys._current_frames()
        for thread in threading.enumerate():
            if thread is self._thread or thread.native_id is None or thread.ident not in frames:
                continue
            cpu = _thread_cpu_ns(thread.native_id)
            used = cpu - self._last.get(thread.native_id, cpu)
            self._last[thread.native_id] = cpu
            if used <= 0:
                continue
            name = thread_group(thread.name)
            self.by_thread[name] += used
            frame = frames[thread.ident]
            self.own[self._label(frame)] += used
            self.own_by_thread[name][self._label(frame)] += used
            seen: set[str] = set()
            while frame is not None:
                label = self._label(frame)
                if label not in seen:
                    seen.add(label)
                    self.inclusive[label] += used
                frame = frame.f_back

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 30) -> dict[str, Any]:
        """CPU milliseconds per function (own and inclusive) and per thread (name sans number)."""

        def ms(counter: collections.Counter[str], n: int) -> dict[str, int]:
            return {k: round(v / 1e6) for k, v in counter.most_common(n)}

        return {
            "cpu_ms_total": round(sum(self.by_thread.values()) / 1e6),
            "by_thread_ms": ms(self.by_thread, 20),
            "own_ms": ms(self.own, top),
            "inclusive_ms": ms(self.inclusive, top),
            "own_ms_by_thread": {
                name: ms(counter, 12) for name, counter in self.own_by_thread.items()
            },
        }

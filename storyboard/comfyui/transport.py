"""HTTP calls to ComfyUI with explicit timeouts, byte caps and our exception tree.

Every exchange, body included, has one total deadline (the request timeout) on
top of httpx's per-read timeout: a server that trickles a byte now and then
never holds a caller past it. Every body is streamed and capped (JSON answers
by MAX_JSON_BYTES or the caller's cap, files by the caller's): an answer that
never ends fails at the cap instead of growing the process.

Every httpx failure and every missed deadline becomes ComfyUIConnectionError,
every 5xx ComfyUIServerError and every answer that is not the JSON we expect
(or is larger than its cap) ComfyUIProtocolError, each raised `from` the
original so the cause stays visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from storyboard.errors import (
    ComfyUIConnectionError,
    ComfyUIProtocolError,
    ComfyUIServerError,
    OutputTooLargeError,
    UnsafeNameError,
)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for ComfyUI, made as httpx makes its own (SSL_CERT_FILE,
    SSL_CERT_DIR, else certifi's bundle) on first use.

    httpx builds a context per client and loads the whole CA bundle into it: ~40 ms of CPU
    with the GIL held, even for an http:// server that never uses it. A batch makes a client
    per lane, so eight lanes spent a third of a second on it before their first prompt. A
    context is safe to share between clients and threads."""
    return httpx.create_ssl_context()


def http_client() -> httpx.AsyncClient:
    """A new client for ComfyUI calls, on the shared TLS context."""
    return httpx.AsyncClient(verify=tls_context())


_OUTPUT_TYPES = ("output", "input", "temp")

# A JSON answer larger than this is not one ComfyUI gives (history entries carry the
# whole graph, 100 kB prompts included, well below it); a proxy's endless body is cut here.
MAX_JSON_BYTES = 8 * 1024 * 1024
# GET /queue lists every client's pending prompts with their graphs: a busy shared
# server's queue may be much larger than one history entry.
MAX_QUEUE_BYTES = 32 * 1024 * 1024
# /object_info of a server with many custom node packs measures tens of MB.
MAX_OBJECT_INFO_BYTES = 64 * 1024 * 1024


class Http:
    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        timeout_s: float,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.timeout_s = timeout_s
        # Per request, not on the httpx client: an injected client gets them too.
        self._headers = dict(headers or {})

    async def get_json(
        self,
        path: str,
        *,
        timeout_s: float | None = None,
        allow_404: bool = False,
        max_bytes: int = MAX_JSON_BYTES,
    ) -> Any:
        """The JSON body of a GET; None for a 404 when `allow_404`."""
        response = await self._send("GET", path, timeout_s=timeout_s, max_bytes=max_bytes)
        if response.status_code == 404 and allow_404:
            return None
        return _json_of(response, "GET", path, expect_ok=True)

    async def post_json(self, path: str, payload: Any) -> None:
        response = await self._send("POST", path, json=payload)
        if response.status_code != 200:
            raise ComfyUIProtocolError(_describe("POST", path, response))

    async def post_for_status(self, path: str, payload: Any) -> tuple[int, Any]:
        """(status, JSON body) of a POST whose 4xx answers carry meaning."""
        response = await self._send("POST", path, json=payload)
        return response.status_code, _json_of(response, "POST", path, expect_ok=False)

    async def post_form(
        self, path: str, *, files: Mapping[str, Any], data: Mapping[str, str]
    ) -> Any:
        response = await self._send("POST", path, files=files, data=data)
        return _json_of(response, "POST", path, expect_ok=True)

    async def get_bytes(self, path: str, *, params: Mapping[str, str], max_bytes: int) -> bytes:
        """Stream a body within the total deadline, aborting as soon as it exceeds `max_bytes`."""
        name = params.get("filename", path)
        url = self.base_url + path
        with _converted("GET", url, self.timeout_s):
            async with (
                asyncio.timeout(self.timeout_s),
                self.client.stream(
                    "GET", url, params=params, headers=self._headers, timeout=self.timeout_s
                ) as response,
            ):
                if response.status_code != 200:
                    failed = await _buffered(response, MAX_JSON_BYTES, "GET", path)
                    _raise_for_server_error("GET", path, failed)
                    raise ComfyUIProtocolError(
                        f"cannot fetch {name!r}: " + _describe("GET", path, failed)
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise OutputTooLargeError(_too_large(name, int(declared), max_bytes))
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise OutputTooLargeError(_too_large(name, len(body), max_bytes))
        return bytes(body)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float | None = None,
        max_bytes: int = MAX_JSON_BYTES,
        **kwargs: Any,
    ) -> httpx.Response:
        """The whole exchange within one total deadline; the body read up to `max_bytes`."""
        url = self.base_url + path
        limit = self.timeout_s if timeout_s is None else timeout_s
        with _converted(method, url, limit):
            async with (
                asyncio.timeout(limit),
                self.client.stream(
                    method, url, headers=self._headers, timeout=limit, **kwargs
                ) as streamed,
            ):
                response = await _buffered(streamed, max_bytes, method, path)
        _raise_for_server_error(method, path, response)
        return response


async def _buffered(
    response: httpx.Response, max_bytes: int, method: str, path: str
) -> httpx.Response:
    """A response whose body was read, refusing one longer than `max_bytes`."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ComfyUIProtocolError(
                f"{method} {path} answered more than {max_bytes} bytes, more than any ComfyUI "
                "answer; is the URL a ComfyUI server (and not a proxy streaming something else)?"
            )
    # aiter_bytes decoded the body already: the copy must not claim an encoding again.
    headers = [
        (key, value)
        for key, value in response.headers.multi_items()
        if key.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=bytes(body),
        request=response.request,
    )


def check_output_image(filename: str, subfolder: str, kind: str) -> None:
    """Refuse history entries whose names try to leave ComfyUI's output folders."""
    if (
        not filename
        or filename in (".", "..")
        or any(sep in filename for sep in ("/", "\\", "\x00"))
    ):
        raise UnsafeNameError(f"ComfyUI reported an unsafe output file name {filename!r}")
    check_subfolder(subfolder, "output subfolder")
    if kind not in _OUTPUT_TYPES:
        raise ComfyUIProtocolError(f"ComfyUI reported an unknown output type {kind!r}")


def check_subfolder(subfolder: str, what: str) -> None:
    parts = subfolder.replace("\\", "/").split("/")
    if (
        "\x00" in subfolder
        or subfolder.startswith(("/", "\\"))
        or ":" in subfolder
        or ".." in parts
    ):
        raise UnsafeNameError(f"unsafe {what} {subfolder!r}: it must stay inside its folder")


@contextlib.contextmanager
def _converted(method: str, url: str, limit_s: float) -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:  # the total deadline (asyncio.timeout), not httpx's
        raise ComfyUIConnectionError(
            f"{method} {url} did not complete within {limit_s:g}s (the server answers too slowly)"
        ) from exc
    except httpx.TimeoutException as exc:
        raise ComfyUIConnectionError(f"{method} {url} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise ComfyUIConnectionError(f"{method} {url} failed: {exc or type(exc).__name__}") from exc


def _raise_for_server_error(method: str, path: str, response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise ComfyUIServerError(_describe(method, path, response), response.status_code)


def _json_of(response: httpx.Response, method: str, path: str, *, expect_ok: bool) -> Any:
    if expect_ok and response.status_code != 200:
        raise ComfyUIProtocolError(_describe(method, path, response))
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ComfyUIProtocolError(
            f"{method} {path} answered {response.status_code} with a body that is not JSON "
            f"({response.headers.get('content-type', 'no content type')}): "
            f"{_snippet(response)!r}; is the URL a ComfyUI server?"
        ) from exc


def _describe(method: str, path: str, response: httpx.Response) -> str:
    return f"{method} {path} answered {response.status_code}: {_snippet(response)!r}"


def _snippet(response: httpx.Response) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return "<unreadable body>"
    try:  # keep short JSON compact, and HTML readable as one line
        text = json.dumps(json.loads(text))
    except ValueError:
        text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def _too_large(name: str, size: int, max_bytes: int) -> str:
    return (
        f"output {name!r} is larger than the download limit of {max_bytes} bytes (at least "
        f"{size}); raise STORYBOARD_MAX_DOWNLOAD_BYTES if such images are expected"
    )

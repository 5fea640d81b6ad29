"""HTTP calls to ComfyUI with explicit timeouts and our exception tree.

Every httpx failure becomes ComfyUIConnectionError, every 5xx ComfyUIServerError
and every answer that is not the JSON we expect ComfyUIProtocolError, each
raised `from` the original so the cause stays visible.
"""

from __future__ import annotations

import contextlib
import json
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

_OUTPUT_TYPES = ("output", "input", "temp")


class Http:
    def __init__(self, client: httpx.AsyncClient, base_url: str, timeout_s: float) -> None:
        self.client = client
        self.base_url = base_url
        self.timeout_s = timeout_s

    async def get_json(
        self, path: str, *, timeout_s: float | None = None, allow_404: bool = False
    ) -> Any:
        """The JSON body of a GET; None for a 404 when `allow_404`."""
        response = await self._send("GET", path, timeout_s=timeout_s)
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
        """Stream a body, aborting as soon as it exceeds `max_bytes`."""
        name = params.get("filename", path)
        with _converted("GET", self.base_url + path):
            async with self.client.stream(
                "GET", self.base_url + path, params=params, timeout=self.timeout_s
            ) as response:
                _raise_for_server_error("GET", path, response)
                if response.status_code != 200:
                    await response.aread()
                    raise ComfyUIProtocolError(
                        f"cannot fetch {name!r}: " + _describe("GET", path, response)
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
        self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        url = self.base_url + path
        with _converted(method, url):
            response = await self.client.request(
                method, url, timeout=self.timeout_s if timeout_s is None else timeout_s, **kwargs
            )
        _raise_for_server_error(method, path, response)
        return response


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
def _converted(method: str, url: str) -> Iterator[None]:
    try:
        yield
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

"""The formats of the ComfyUI server list and its request headers (parsing only).

`settings` reads the variables; this module only knows their formats, so each rule lives
in one place. Every problem is a ValueError of one line that `settings` turns into a
ConfigError naming the variable.

`STORYBOARD_COMFYUI_URLS`: `url[,url...]`, each entry optionally `name=url`. The name,
given or derived from host, port and path (`http://gpu-host:8188` -> `gpu-host-8188`),
labels the lane in logs and names its Prefect concurrency limit, so it may hold only
letters, digits, `.`, `_` and `-`, and no two servers share a name or a URL.

`STORYBOARD_COMFYUI_HEADERS`: a JSON object from lane name (or `*`, every lane) to an
object of request headers, e.g. `{"*": {"Authorization": "Bearer ..."}}`; a lane's own
entry wins over `*`. Values are secrets: no message here quotes one, and `SecretHeaders`
shows only the header names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ALL_LANES = "*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
# Headers the client itself must control: a wrong one breaks every request or the handshake.
_OWN_HEADERS = ("host", "content-length", "content-type", "transfer-encoding", "connection")
_OWN_PREFIXES = ("sec-websocket-", "upgrade")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ServerAddress:
    """One ComfyUI server of the list: its lane name and base URL (no trailing slash)."""

    name: str
    url: str


class SecretHeaders(Mapping[str, str]):
    """Request headers whose values never appear in a repr, a log line or an error."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self._headers = dict(headers or {})

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __hash__(self) -> int:
        return hash(frozenset(self._headers.items()))

    def __repr__(self) -> str:
        return "SecretHeaders(" + ", ".join(f"{name}=***" for name in self._headers) + ")"

    __str__ = __repr__


def check_base_url(url: str) -> str:
    """A ComfyUI base URL without its trailing slash, or ValueError saying what is wrong."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{redact_url(url)!r} must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError(
            f"{redact_url(url)!r} carries a user name or password, which would show in logs; "
            "put credentials in STORYBOARD_COMFYUI_HEADERS instead"
        )
    if any(char.isspace() for char in url):
        raise ValueError(f"{url!r} holds a space; a list is separated by commas")
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} is a base URL: leave out '?' and '#' parts")
    return url


def websocket_url(base_url: str) -> str:
    """ComfyUI's WebSocket beside its HTTP API: http(s)://h/p -> ws(s)://h/p/ws."""
    return "ws" + base_url.rstrip("/").removeprefix("http") + "/ws"


def redact_url(text: str) -> str:
    """`text` with the user name and password of any URL in it masked."""
    return re.sub(r"(//)[^/@\s]*@", r"\1***@", text)


def derived_name(url: str) -> str:
    """The lane name of a URL without one: host, port and path, e.g. `gpu-host-8188`."""
    parts = urlsplit(url)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    words = [parts.hostname or "", str(port), *parts.path.split("/")]
    name = re.sub(r"[^a-z0-9._-]+", "-", "-".join(w for w in words if w).lower()).strip("-.")
    if not _NAME.fullmatch(name):
        raise ValueError(f"cannot derive a lane name from {url!r}; write it as name={url}")
    return name


def parse_urls(text: str) -> tuple[ServerAddress, ...]:
    """The servers of a comma-separated list; a blank list is no list (one default server)."""
    servers: list[ServerAddress] = []
    for entry in (part.strip() for part in text.split(",")) if text.strip() else ():
        if not entry:
            raise ValueError("an entry is empty (two commas in a row, or a trailing comma)")
        name, sep, rest = entry.partition("=")
        if sep and "://" not in name:  # `name=url`; a bare URL may hold '=' in its path
            name, url = name.strip(), check_base_url(rest)
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"lane name {name!r} may hold only letters, digits, '.', '_' and '-' "
                    "(at most 63, starting with a letter or digit)"
                )
        else:
            url = check_base_url(entry)
            name = derived_name(url)
        for known in servers:
            if known.name == name:
                raise ValueError(f"two servers are named {name!r}; name them apart: name=url")
            if known.url == url:
                raise ValueError(f"{url!r} is listed twice; one lane per server")
        servers.append(ServerAddress(name, url))
    return tuple(servers)


def parse_headers(text: str) -> dict[str, dict[str, str]]:
    """Lane name (or `*`) to request headers, checked without quoting any value."""
    try:
        table: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    example = '{"*": {"Authorization": "Bearer ..."}}'
    if not isinstance(table, dict):
        raise ValueError(f"must be a JSON object of lane name to headers, e.g. {example}")
    parsed: dict[str, dict[str, str]] = {}
    for lane, headers in table.items():
        if not isinstance(headers, dict):
            raise ValueError(f"the entry of lane {lane!r} must be an object of headers: {example}")
        parsed[lane] = {check_header_name(name, lane): value for name, value in headers.items()}
        for name, value in headers.items():
            if not isinstance(value, str) or not value.isascii() or not value.isprintable():
                raise ValueError(
                    f"header {name!r} of lane {lane!r} must be a string of printable ASCII"
                )
    return parsed


def check_header_name(name: str, lane: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} (lane {lane!r}) is not a valid header name")
    lowered = name.lower()
    if lowered in _OWN_HEADERS or lowered.startswith(_OWN_PREFIXES):
        raise ValueError(f"header {name!r} (lane {lane!r}) is set by the client itself")
    return name


def unknown_lanes(table: Mapping[str, object], lanes: list[str]) -> list[str]:
    """Lane names of a header table that name no configured lane (`*` always counts)."""
    return [lane for lane in table if lane != ALL_LANES and lane not in lanes]


def headers_for(table: Mapping[str, Mapping[str, str]], lane: str) -> SecretHeaders:
    """The headers of one lane: those of `*`, then its own (a name in either case wins)."""
    merged: dict[str, str] = {}
    for source in (table.get(ALL_LANES, {}), table.get(lane, {})):
        for name, value in source.items():
            for same in [known for known in merged if known.lower() == name.lower()]:
                del merged[same]
            merged[name] = value
    return SecretHeaders(merged)

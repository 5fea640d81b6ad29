"""Lanes from configuration: STORYBOARD_COMFYUI_URLS, its names and tags, and the headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storyboard.errors import ConfigError
from storyboard.lane import DEFAULT_LIMIT_TAG, Lane, lanes_from_settings
from storyboard.servers import SecretHeaders
from storyboard.settings import load_settings

SECRET = "s3cr3t-token-9f2e"


@pytest.fixture(autouse=True)
def _empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the developer's working directory


def test_without_the_list_there_is_the_one_default_lane_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORYBOARD_COMFYUI_URL", "http://gpu:8188")
    monkeypatch.setenv("COMFYUI_WS_URL", "ws://sidecar:9000/ws")
    monkeypatch.setenv("STORYBOARD_COMFYUI_URLS", "  ")  # blank is unset
    (lane,) = lanes_from_settings(load_settings())
    assert lane == Lane("default", "http://gpu:8188", "ws://sidecar:9000/ws", DEFAULT_LIMIT_TAG)
    assert lane.limit_tag == "gpu" and len(lane.headers) == 0


def test_one_lane_per_listed_server_with_its_own_tag_and_websocket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORYBOARD_COMFYUI_URL", "http://ignored:1")
    monkeypatch.setenv(
        "STORYBOARD_COMFYUI_URLS",
        "http://GPU-Host:8188/, big=https://farm.example/comfy/3 , http://10.0.0.7",
    )
    lanes = lanes_from_settings(load_settings())
    assert [(lane.name, lane.comfyui_url, lane.ws_url, lane.limit_tag) for lane in lanes] == [
        ("gpu-host-8188", "http://GPU-Host:8188", "ws://GPU-Host:8188/ws", "gpu-gpu-host-8188"),
        ("big", "https://farm.example/comfy/3", "wss://farm.example/comfy/3/ws", "gpu-big"),
        ("10.0.0.7-80", "http://10.0.0.7", "ws://10.0.0.7/ws", "gpu-10.0.0.7-80"),
    ]


def test_names_and_tags_are_safe_as_prefect_limit_names() -> None:
    from prefect.types.names import WITHOUT_BANNED_CHARACTERS

    settings = load_settings(comfyui_urls="http://[::1]:8188/a%2Fb/c&d,http://h:1/x~y")
    for lane in lanes_from_settings(settings):
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", lane.name), lane.name
        assert re.match(WITHOUT_BANNED_CHARACTERS, lane.limit_tag), lane.limit_tag


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://a:1,,http://b:1", "an entry is empty"),
        ("http://a:1,", "an entry is empty"),
        ("gpu 1=http://a:1", "lane name 'gpu 1' may hold only"),
        ("a/b=http://a:1", "lane name 'a/b' may hold only"),
        ("x=http://a:1,x=http://b:1", "two servers are named 'x'"),
        ("http://a:1,again=http://a:1/", "'http://a:1' is listed twice"),
        ("http://h:1,http://h:1", "two servers are named 'h-1'"),
        ("ftp://a:1", "must start with http:// or https://"),
        ("gpu:8188", "must start with http:// or https://"),
        ("http://a:99999", "has an invalid port"),
        ("http://a:1/?key=v", "leave out '?' and '#' parts"),
        ("http://", "names no host"),
        ("http://a:1 http://b:1", "holds a space; a list is separated by commas"),
    ],
)
def test_a_bad_list_is_one_line_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(comfyui_urls=value)
    message = str(caught.value)
    assert "STORYBOARD_COMFYUI_URLS" in message and says in message, message
    assert "\n" not in message


def test_a_password_in_a_url_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(comfyui_urls=f"a=http://user:{SECRET}@gpu:8188")
    message = str(caught.value)
    assert "STORYBOARD_COMFYUI_HEADERS instead" in message and SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_the_websocket_override_does_not_mix_with_a_list() -> None:
    with pytest.raises(ConfigError, match=r"COMFYUI_WS_URL.*applies only without"):
        load_settings(comfyui_urls="http://a:1", comfyui_ws_url="ws://b:2/ws")


def test_headers_for_all_lanes_and_one_lane_its_own_winning() -> None:
    settings = load_settings(
        comfyui_urls="a=http://a:1,b=http://b:1",
        comfyui_headers=(
            '{"*": {"Authorization": "Bearer all", "X-Team": "art"},'
            f' "b": {{"authorization": "Bearer {SECRET}"}}}}'
        ),
    )
    a, b = lanes_from_settings(settings)
    assert dict(a.headers) == {"Authorization": "Bearer all", "X-Team": "art"}
    assert dict(b.headers) == {"X-Team": "art", "authorization": f"Bearer {SECRET}"}
    for shown in (repr(settings), str(settings), repr(b), repr(b.headers), str(b.headers)):
        assert SECRET not in shown, shown
    assert repr(b.headers) == "SecretHeaders(X-Team=***, authorization=***)"


def test_the_default_lane_takes_its_headers_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYBOARD_COMFYUI_HEADERS", '{"default": {"X-Key": "k"}}')
    (lane,) = lanes_from_settings(load_settings())
    assert lane.headers == SecretHeaders({"X-Key": "k"})


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        (f"not json {SECRET}", "is not JSON"),
        (f'["{SECRET}"]', "must be a JSON object of lane name to headers"),
        (f'{{"*": "{SECRET}"}}', "the entry of lane '*' must be an object"),
        (f'{{"*": {{"Authorization": 5, "X": "{SECRET}"}}}}', "'Authorization' of lane '*'"),
        (f'{{"*": {{"X-Key": "{SECRET}\\n"}}}}', "must be a string of printable ASCII"),
        (f'{{"*": {{"Bad Name": "{SECRET}"}}}}', "'Bad Name' (lane '*') is not a valid header"),
        (f'{{"*": {{"Host": "{SECRET}"}}}}', "'Host' (lane '*') is set by the client itself"),
        (f'{{"gpu-9": {{"X": "{SECRET}"}}}}', "names lanes ['gpu-9'] that are not configured"),
    ],
)
def test_bad_headers_are_one_line_that_never_quotes_a_value(
    monkeypatch: pytest.MonkeyPatch, headers: str, says: str
) -> None:
    monkeypatch.setenv("STORYBOARD_COMFYUI_HEADERS", headers)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "STORYBOARD_COMFYUI_HEADERS" in message and says in message, message
    assert SECRET not in message and "\n" not in message
    # Nothing chained either: a traceback would print pydantic's error, inputs and all.
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_the_list_can_be_given_in_code_as_strings() -> None:
    settings = load_settings(comfyui_urls=["a=http://a:1", "http://b:2"])
    assert [lane.name for lane in lanes_from_settings(settings)] == ["a", "b-2"]
    assert load_settings(comfyui_urls=[]).lane_names == ["default"]

"""Settings: defaults, environment names, derived values, and errors naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storyboard.errors import ConfigError
from storyboard.pipeline import PipelineConfig
from storyboard.settings import Settings, _variable_for, load_settings


@pytest.fixture(autouse=True)
def _empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the developer's working directory


def test_defaults() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.database == Path("data/storyboard.duckdb")
    assert settings.comfyui_url == "http://127.0.0.1:8188"
    assert settings.websocket_url == "ws://127.0.0.1:8188/ws"
    assert settings.workflow == Path("workflows/image/flux-2.json")
    assert settings.frame_size == (1920, 1080)
    assert settings.attempts == 3
    assert settings.retry_backoff_s == 30.0
    assert settings.image_timeout_s == 300.0
    assert settings.store_lock_timeout_s > 0
    assert settings.steps is None  # the workflow's own
    assert settings.reference_megapixels is None


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYBOARD_DATA_DIR", "/srv/board")
    monkeypatch.setenv("STORYBOARD_WIDTH", "1280")
    monkeypatch.setenv("STORYBOARD_HEIGHT", "720")
    monkeypatch.setenv("STORYBOARD_ATTEMPTS", "5")
    settings = load_settings()
    assert settings.database == Path("/srv/board/storyboard.duckdb")
    assert settings.frame_size == (1280, 720)
    assert settings.attempts == 5


def test_steps_and_reference_megapixels_reach_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORYBOARD_STEPS", "8")
    monkeypatch.setenv("STORYBOARD_REFERENCE_MEGAPIXELS", "0.05")
    config = PipelineConfig.from_settings(load_settings())
    assert (config.steps, config.reference_megapixels) == (8, 0.05)


def test_db_path_overrides_the_data_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYBOARD_DATA_DIR", "/srv/board")
    monkeypatch.setenv("STORYBOARD_DB_PATH", "/var/db/sb.duckdb")
    assert load_settings().database == Path("/var/db/sb.duckdb")


def test_comfyui_url_alias_and_websocket_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_URL", "https://gpu.example:8443/comfy/")
    settings = load_settings()
    assert settings.comfyui_url == "https://gpu.example:8443/comfy"
    assert settings.websocket_url == "wss://gpu.example:8443/comfy/ws"


def test_prefixed_url_wins_over_alias_and_ws_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_URL", "http://other:1")
    monkeypatch.setenv("STORYBOARD_COMFYUI_URL", "http://gpu:8188")
    monkeypatch.setenv("COMFYUI_WS_URL", "ws://sidecar:9000/ws/")
    settings = load_settings()
    assert settings.comfyui_url == "http://gpu:8188"
    assert settings.websocket_url == "ws://sidecar:9000/ws"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STORYBOARD_ATTEMPTS=7\nCOMFYUI_URL=http://box:8188\n")
    settings = load_settings()
    assert settings.attempts == 7
    assert settings.websocket_url == "ws://box:8188/ws"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STORYBOARD_WIDTH", "wide"),
        ("STORYBOARD_HEIGHT", "10"),
        ("STORYBOARD_ATTEMPTS", "0"),
        ("STORYBOARD_STEPS", "0"),
        ("STORYBOARD_STEPS", "4.5"),
        ("STORYBOARD_REFERENCE_MEGAPIXELS", "0"),
        ("STORYBOARD_REFERENCE_MEGAPIXELS", "17"),
        ("STORYBOARD_RETRY_BACKOFF_S", "-1"),
        ("STORYBOARD_IMAGE_TIMEOUT_S", "0"),
        ("COMFYUI_URL", "ftp://gpu"),
        ("STORYBOARD_COMFYUI_URL", "gpu:8188"),
        ("STORYBOARD_COMFYUI_WS_URL", "http://gpu/ws"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert re.search(rf"(?<![A-Z_]){variable}\b", message), message
    assert repr(value) in message


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="STORYBOARD_ATTEMPTS"):
        load_settings(attempts=0)
    assert load_settings(attempts=2).attempts == 2


def test_every_field_is_read_from_its_prefixed_variable_and_by_name() -> None:
    for field, info in Settings.model_fields.items():
        names = list(info.validation_alias.choices)  # type: ignore[union-attr]
        assert names[0] == "STORYBOARD_" + field.upper() and names[-1] == field
        assert _variable_for(field).split(" or ")[0] == names[0]
    assert _variable_for("comfyui_url") == "STORYBOARD_COMFYUI_URL or COMFYUI_URL"
    assert _variable_for("comfyui_ws_url") == "STORYBOARD_COMFYUI_WS_URL or COMFYUI_WS_URL"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("store_lock_timeout_s", "2.5", 2.5),
        ("reconnect_wait_s", "7", 7.0),
        ("max_image_pixels", "1000", 1000),
        ("workflow", "w.json", Path("w.json")),
    ],
)
def test_a_field_is_set_by_its_variable_or_in_code(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, expected: object
) -> None:
    monkeypatch.setenv("STORYBOARD_" + field.upper(), value)
    assert getattr(load_settings(), field) == expected
    assert getattr(load_settings(**{field: value}), field) == expected


def test_an_error_in_an_older_name_names_both() -> None:
    with pytest.raises(ConfigError, match=r"STORYBOARD_COMFYUI_WS_URL or COMFYUI_WS_URL"):
        load_settings(comfyui_ws_url="http://gpu/ws")


def test_a_password_in_the_single_url_is_refused_and_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMFYUI_URL", "http://admin:hunter2@gpu:8188")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "STORYBOARD_COMFYUI_URL or COMFYUI_URL" in message
    assert "http://***@gpu:8188" in message and "hunter2" not in message

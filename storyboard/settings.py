"""The one place that reads configuration (environment and `.env`).

Every variable has the prefix `STORYBOARD_`; the ComfyUI address is also read
from `COMFYUI_URL` and `COMFYUI_WS_URL`, the names of the original design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storyboard.errors import ConfigError

ENV_PREFIX = "STORYBOARD_"


def _env(name: str, *aliases: str) -> Any:
    return Field(validation_alias=AliasChoices(ENV_PREFIX + name.upper(), *aliases))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    data_dir: Path = Field(
        default=Path("data"), validation_alias=AliasChoices("STORYBOARD_DATA_DIR", "data_dir")
    )
    db_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("STORYBOARD_DB_PATH", "db_path")
    )
    comfyui_url: str = Field(
        default="http://127.0.0.1:8188",
        validation_alias=AliasChoices("STORYBOARD_COMFYUI_URL", "COMFYUI_URL", "comfyui_url"),
    )
    comfyui_ws_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "STORYBOARD_COMFYUI_WS_URL", "COMFYUI_WS_URL", "comfyui_ws_url"
        ),
    )
    workflow: Path = Field(
        default=Path("workflows/image/flux-2.json"),
        validation_alias=AliasChoices("STORYBOARD_WORKFLOW", "workflow"),
    )
    width: int = Field(
        default=1920, ge=64, le=8192, validation_alias=AliasChoices("STORYBOARD_WIDTH", "width")
    )
    height: int = Field(
        default=1080, ge=64, le=8192, validation_alias=AliasChoices("STORYBOARD_HEIGHT", "height")
    )
    attempts: int = Field(
        default=3, ge=1, le=20, validation_alias=AliasChoices("STORYBOARD_ATTEMPTS", "attempts")
    )
    retry_backoff_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        validation_alias=AliasChoices("STORYBOARD_RETRY_BACKOFF_S", "retry_backoff_s"),
    )
    image_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=24 * 3600,
        validation_alias=AliasChoices("STORYBOARD_IMAGE_TIMEOUT_S", "image_timeout_s"),
    )
    queue_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 24 * 3600,
        validation_alias=AliasChoices("STORYBOARD_QUEUE_TIMEOUT_S", "queue_timeout_s"),
    )
    reconnect_wait_s: float = Field(
        default=180.0,
        ge=0,
        le=24 * 3600,
        validation_alias=AliasChoices("STORYBOARD_RECONNECT_WAIT_S", "reconnect_wait_s"),
    )
    startup_wait_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        validation_alias=AliasChoices("STORYBOARD_STARTUP_WAIT_S", "startup_wait_s"),
    )
    max_download_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        validation_alias=AliasChoices("STORYBOARD_MAX_DOWNLOAD_BYTES", "max_download_bytes"),
    )
    max_image_pixels: int = Field(
        default=64_000_000,
        gt=0,
        validation_alias=AliasChoices("STORYBOARD_MAX_IMAGE_PIXELS", "max_image_pixels"),
    )
    max_reference_bytes: int = Field(
        default=20 * 1024 * 1024,
        gt=0,
        validation_alias=AliasChoices("STORYBOARD_MAX_REFERENCE_BYTES", "max_reference_bytes"),
    )
    store_lock_timeout_s: float = Field(
        default=30.0,
        gt=0,
        validation_alias=AliasChoices("STORYBOARD_STORE_LOCK_TIMEOUT_S", "store_lock_timeout_s"),
    )

    @field_validator("comfyui_url", "comfyui_ws_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("comfyui_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("comfyui_ws_url")
    @classmethod
    def _ws_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.db_path is None:
            object.__setattr__(self, "db_path", self.data_dir / "storyboard.duckdb")
        if self.comfyui_ws_url is None:
            ws = "ws" + self.comfyui_url.removeprefix("http")
            object.__setattr__(self, "comfyui_ws_url", ws + "/ws")
        return self

    @property
    def database(self) -> Path:
        assert self.db_path is not None
        return self.db_path

    @property
    def websocket_url(self) -> str:
        assert self.comfyui_ws_url is not None
        return self.comfyui_ws_url

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.width, self.height)


def _variable_for(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        names = [str(choice) for choice in alias.choices if str(choice).isupper()]
        return " or ".join(names)
    return ENV_PREFIX + field.upper()


_FIELD_BY_ALIAS = {
    str(choice): field
    for field, info in Settings.model_fields.items()
    if isinstance(info.validation_alias, AliasChoices)
    for choice in info.validation_alias.choices
}


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning a validation failure into ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            # pydantic reports the first alias even when another one (COMFYUI_URL) was set.
            field = _FIELD_BY_ALIAS.get(field, field)
            name = _variable_for(field) if field in Settings.model_fields else field
            lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from exc

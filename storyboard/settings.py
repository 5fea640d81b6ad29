"""The one place that reads configuration (environment and `.env`).

Every variable has the prefix `STORYBOARD_`; the ComfyUI address is also read
from `COMFYUI_URL` and `COMFYUI_WS_URL`, the names of the original design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from storyboard.errors import ConfigError

ENV_PREFIX = "STORYBOARD_"
# Names of the original design, still read after the prefixed one.
_OLDER_NAMES: dict[str, tuple[str, ...]] = {
    "comfyui_url": ("COMFYUI_URL",),
    "comfyui_ws_url": ("COMFYUI_WS_URL",),
}


def _names(field: str) -> AliasChoices:
    """Where a field is read from, in order: STORYBOARD_<FIELD>, older names, the field name.

    The field name lets code write `load_settings(width=1280)`; being an alias, it is
    also read from the environment (case-insensitively), as it always was.
    """
    return AliasChoices(ENV_PREFIX + field.upper(), *_OLDER_NAMES.get(field, ()), field)


class Settings(BaseSettings):
    # Each field's variables come from its name (`_names`), so no field spells them out.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        alias_generator=AliasGenerator(validation_alias=_names),
    )

    data_dir: Path = Path("data")
    db_path: Path | None = None
    comfyui_url: str = "http://127.0.0.1:8188"
    comfyui_ws_url: str | None = None
    workflow: Path = Path("workflows/image/flux-2.json")
    width: int = Field(default=1920, ge=64, le=8192)
    height: int = Field(default=1080, ge=64, le=8192)
    attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=30.0, ge=0, le=3600)
    image_timeout_s: float = Field(default=300.0, gt=0, le=24 * 3600)
    queue_timeout_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    reconnect_wait_s: float = Field(default=180.0, ge=0, le=24 * 3600)
    startup_wait_s: float = Field(default=30.0, ge=0, le=3600)
    max_download_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=64_000_000, gt=0)
    max_reference_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    store_lock_timeout_s: float = Field(default=30.0, gt=0)

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

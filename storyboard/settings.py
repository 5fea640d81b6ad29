"""The one place that reads configuration (environment and `.env`).

Every variable has the prefix `STORYBOARD_`; the ComfyUI address is also read
from `COMFYUI_URL` and `COMFYUI_WS_URL`, the names of the original design.

Servers: `STORYBOARD_COMFYUI_URLS` lists one ComfyUI per GPU lane (formats in
`storyboard.servers`); unset, the one server of `STORYBOARD_COMFYUI_URL` is the lane
"default", and only then does `COMFYUI_WS_URL` apply. `STORYBOARD_COMFYUI_HEADERS`
holds per-lane request headers; it stays a SecretStr here, and no error quotes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    AliasGenerator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storyboard import servers
from storyboard.errors import ConfigError
from storyboard.servers import SecretHeaders, ServerAddress

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
    # NoDecode: a comma-separated list, not the JSON pydantic-settings expects of a tuple.
    comfyui_urls: Annotated[tuple[ServerAddress, ...], NoDecode] = ()
    comfyui_headers: SecretStr | None = None
    workflow: Path = Path("workflows/image/flux-2.json")
    width: int = Field(default=1920, ge=64, le=8192)
    height: int = Field(default=1080, ge=64, le=8192)
    # Unset: the workflow's own values. The bounds are ComfyUI's own (Flux2Scheduler's steps,
    # ImageScaleToTotalPixels' megapixels), so a value here is never refused by the server.
    steps: int | None = Field(default=None, ge=1, le=4096)
    reference_megapixels: float | None = Field(default=None, ge=0.01, le=16.0)
    # A draft pass (`storyboard render --draft`): the same size and seed at fewer steps and
    # smaller references, so the final keeps the draft's composition at a fraction of its cost.
    draft_steps: int = Field(default=8, ge=1, le=4096)
    draft_reference_megapixels: float = Field(default=0.25, ge=0.01, le=16.0)
    attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=30.0, ge=0, le=3600)
    image_timeout_s: float = Field(default=300.0, gt=0, le=24 * 3600)
    queue_timeout_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    reconnect_wait_s: float = Field(default=180.0, ge=0, le=24 * 3600)
    # With several lanes, a lane whose server is away this long gives its sentences to the
    # others (it rejoins when back); the batch still waits the whole reconnect wait for one.
    lane_handoff_s: float = Field(default=30.0, ge=0, le=24 * 3600)
    # A server whose queue shows no progress this long while our prompt waits in it is stuck:
    # its lane is set aside. Longer than any one node runs without a word (a model's load).
    stall_s: float = Field(default=300.0, ge=1, le=24 * 3600)
    startup_wait_s: float = Field(default=30.0, ge=0, le=3600)
    max_download_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=64_000_000, gt=0)
    max_reference_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    store_lock_timeout_s: float = Field(default=30.0, gt=0)
    max_prompt_chars: int = Field(default=32_768, ge=100, le=1_000_000)
    # A run renews its lease in the store a few times within this; one that stops (killed
    # on another machine) has its claims taken over once it is this old.
    run_lease_s: float = Field(default=60.0, ge=5, le=3600)
    # What one GPU hour costs (any currency): set, the GPU time listings show money too.
    gpu_hour_price: float | None = Field(default=None, ge=0)

    _headers: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)

    @field_validator("comfyui_url", "comfyui_ws_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("comfyui_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return servers.check_base_url(value)

    @field_validator("comfyui_urls", mode="before")
    @classmethod
    def _server_list(cls, value: object) -> object:
        if isinstance(value, list | tuple) and all(isinstance(entry, str) for entry in value):
            value = ",".join(value)  # in code: load_settings(comfyui_urls=["a=http://..."])
        return servers.parse_urls(value) if isinstance(value, str) else value

    @field_validator("comfyui_headers")
    @classmethod
    def _header_table(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            servers.parse_headers(value.get_secret_value())
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
        if self.comfyui_urls and self.comfyui_ws_url is not None:
            raise ValueError(
                "STORYBOARD_COMFYUI_WS_URL (or COMFYUI_WS_URL) applies only without "
                "STORYBOARD_COMFYUI_URLS, whose servers each use the /ws of their own URL: "
                "unset one of them"
            )
        if self.comfyui_headers is not None:
            self._headers = servers.parse_headers(self.comfyui_headers.get_secret_value())
            unknown = servers.unknown_lanes(self._headers, self.lane_names)
            if unknown:
                raise ValueError(
                    f"STORYBOARD_COMFYUI_HEADERS names lanes {unknown} that are not configured "
                    f"(lanes: {self.lane_names}, or '*' for all)"
                )
        if self.comfyui_ws_url is None:
            object.__setattr__(self, "comfyui_ws_url", servers.websocket_url(self.comfyui_url))
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

    @property
    def lane_names(self) -> list[str]:
        """The configured servers' lane names; "default" without STORYBOARD_COMFYUI_URLS."""
        return [server.name for server in self.comfyui_urls] or ["default"]

    def headers_for(self, lane: str) -> SecretHeaders:
        """The request headers for the server of `lane` (empty when none are configured)."""
        return servers.headers_for(self._headers, lane)


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


# Fields whose values are never quoted in an error.
_SECRET_FIELDS = frozenset({"comfyui_headers"})


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning a validation failure into ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        message = _describe(exc)
    # Raised outside the handler: pydantic's error, raw inputs and secrets included, must
    # not ride along as the context of a traceback.
    raise ConfigError("invalid configuration: " + message)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across fields: its input is every raw value
            lines.append(message)
            continue
        # pydantic reports the first alias even when another one (COMFYUI_URL) was set.
        field = _FIELD_BY_ALIAS.get(str(error["loc"][0]), str(error["loc"][0]))
        name = _variable_for(field) if field in Settings.model_fields else field
        if field in _SECRET_FIELDS:  # pydantic hands back the raw text, secrets and all
            lines.append(f"{name}: {message}")
            continue
        got = servers.redact_url(repr(error.get("input")))  # a URL's password is masked
        lines.append(f"{name}: {message} (got {got})")
    return "; ".join(lines)

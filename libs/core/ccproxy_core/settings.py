"""Settings for every ccproxy process, first found wins: CLI flags, environment (``SERVER__PORT``),
secret files in ``CCPROXY_SECRETS_DIR`` (how compose keeps the sdk-worker's secrets out of its
environment), ``.env``, TOML. What each one does: README's table (a test keeps it complete)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SECRETS_DIR_ENV = "CCPROXY_SECRETS_DIR"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ccproxy"


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    max_body_bytes: int = 32 * 1024 * 1024
    forwarded_allow_ips: str = "127.0.0.1"
    header_timeout: float = 10.0
    body_timeout: float = 30.0


MIN_AUTH_TOKEN_LENGTH = 16


class SecuritySettings(BaseModel):
    auth_token: SecretStr | None = None
    internal_secret: SecretStr | None = None
    admin_token: SecretStr | None = None
    metrics_token: SecretStr | None = None
    key_cache_seconds: float = 5.0

    @field_validator("auth_token", mode="after")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        token = value.get_secret_value().strip() if value is not None else ""
        if not token:
            return None
        if len(token) < MIN_AUTH_TOKEN_LENGTH:
            raise ValueError(
                f"SECURITY__AUTH_TOKEN is too short ({len(token)} characters): use at least "
                f"{MIN_AUTH_TOKEN_LENGTH} characters (`ccproxy generate-token` makes a strong one)"
            )
        return SecretStr(token)


class AnthropicSettings(BaseModel):
    base_url: str = "https://api.anthropic.com"
    version: str = "2023-06-01"
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_connections: int = 200
    models_cache_seconds: float = 300.0


class OAuthSettings(BaseModel):
    token_url: str = "https://platform.claude.com/v1/oauth/token"
    authorize_url: str = "https://claude.ai/oauth/authorize"
    client_id: str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    scopes: str = "org:create_api_key user:profile user:inference"
    redirect_uri: str = "http://localhost:54545/callback"
    manual_redirect_uri: str = "https://console.anthropic.com/oauth/code/callback"
    refresh_margin_seconds: int = 300


class AuthSettings(BaseModel):
    claude_config_dir: Path | None = None
    use_keyring: bool = True
    api_key: SecretStr | None = None
    secret_backend: Literal["auto", "keyring", "file"] = "auto"
    strategy: Literal["round_robin", "least_recently_limited", "fill_first"] = "round_robin"
    sticky_ttl_seconds: int = 3600
    throttle_wait_seconds: float = 10.0
    default_cooldown_seconds: float = 60.0
    overload_cooldown_seconds: float = 15.0


class RedisSettings(BaseModel):
    url: str | None = None
    key_prefix: str = "ccproxy:"
    #: Short, so a Redis outage is a quick 503, not a hang.
    connect_timeout: float = 2.0
    socket_timeout: float = 5.0


class ClickHouseSettings(BaseModel):
    url: str | None = None
    database: str = "ccproxy"


class AnalyticsSettings(BaseModel):
    """The access log's path: gateway -> Redis stream -> analytics -> ClickHouse (docs/analytics.md)."""

    stream: str = "access-log"
    stream_maxlen: int = 1_000_000
    buffer_size: int = 10_000
    group: str = "analytics"
    batch_size: int = 1000
    batch_seconds: float = 1.0
    backlog_warning: int = 10_000
    retention_days: int = 0


PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"]


class ClaudeOptions(BaseModel):
    """What every SDK-mode run starts from (claude-agent-sdk's options; docs/sdk.md)."""

    cwd: str | None = None
    permission_mode: PermissionMode | None = None
    allowed_tools: list[str] = Field(default_factory=list)
    disallowed_tools: list[str] = Field(default_factory=list)
    max_turns: int | None = None
    model: str | None = None
    append_system_prompt: str | None = None
    max_thinking_tokens: int | None = None
    mcp_servers: dict[str, Any] = Field(default_factory=dict)
    add_dirs: list[str] = Field(default_factory=list)
    permission_prompt_tool_name: str | None = None
    max_budget_usd: float | None = None


class ClaudeSettings(BaseModel):
    """SDK mode: Claude Code runs on sdk-workers (docs/sdk.md)."""

    sdk_message_mode: Literal["forward", "formatted", "ignore"] = "forward"
    pretty_format: bool = True
    options: ClaudeOptions = Field(default_factory=ClaudeOptions)
    cli_path: str | None = None
    workspace_root: Path | None = None
    run_as_user: str | None = None
    overridable_options: list[str] = Field(default_factory=lambda: [
        "model", "max_turns", "cwd", "permission_mode", "disallowed_tools", "append_system_prompt",
        "max_thinking_tokens",
    ])
    queue_timeout: float = 30.0
    run_timeout: float = 900.0
    max_concurrent_runs: int = 4
    queue_name: str = "sdk:queue"
    poll_interval: float = 0.1
    session_ttl: int = 7 * 24 * 3600


class ModelRule(BaseModel):
    """A client model name matching ``match`` is sent upstream as ``target``."""

    match: str
    kind: Literal["exact", "prefix", "regex"] = "exact"
    target: str


class ModelsSettings(BaseModel):
    """How OpenAI clients' model names become Claude models (docs/openai.md)."""

    rules: list[ModelRule] = Field(default_factory=list)
    default_rules: bool = True


DEFAULT_REASONING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768}


class OpenAISettings(BaseModel):
    """The OpenAI-compatible endpoints' choices where Claude needs a value OpenAI leaves open."""

    default_max_tokens: int = 8192
    reasoning_budgets: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_REASONING_BUDGETS))
    prompt_cache: bool = True


class ResponsesSettings(BaseModel):
    """The Responses API's stored responses, in Redis per client key (docs/openai.md)."""

    retention_days: float = 30.0
    max_bytes_per_key: int = 100_000_000
    max_chain: int = 1000


class PermissionsSettings(BaseModel):
    """SDK-mode tool permissions (docs/permissions.md)."""

    timeout_seconds: float = 120.0
    keepalive_seconds: float = 15.0
    retention_seconds: float = 3600.0


class PriceOverride(BaseModel):
    """USD per million tokens (no long-context tier); unset cache prices follow Anthropic's ratios
    to ``input``: 0.1 (read), 1.25 (write), 2 (1-hour write)."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    cache_read: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write_1h: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class PricingSettings(BaseModel):
    """What tokens cost, for the access log, metrics and key budgets (docs/accounts.md)."""

    overrides: dict[str, PriceOverride] = Field(default_factory=dict)


class ServicesSettings(BaseModel):
    """Where the other services are in the stack; unset: in this process (``ccproxy serve``)."""

    forwarder_url: str | None = None
    auth_url: str | None = None
    permissions_url: str | None = None
    analytics_url: str | None = None
    gateway_url: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        env_ignore_empty=True,  # compose passes `${AUTH__API_KEY:-}` as "": unset
        toml_file=[Path(".ccproxy.toml"), Path("ccproxy.toml"), Path.home() / ".config" / "ccproxy" / "config.toml"],
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    claude: ClaudeSettings = Field(default_factory=ClaudeSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)
    permissions: PermissionsSettings = Field(default_factory=PermissionsSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)
    data_dir: Path = Field(default_factory=default_data_dir)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secrets_dir = os.environ.get(SECRETS_DIR_ENV) or None
        secret_files = NestedSecretsSettingsSource(
            file_secret_settings, secrets_dir=secrets_dir, secrets_dir_missing="error"
        )
        return init_settings, env_settings, secret_files, dotenv_settings, TomlConfigSettingsSource(settings_cls)

    def claude_config_dir(self) -> Path:
        env = os.environ.get("CLAUDE_CONFIG_DIR")
        return self.auth.claude_config_dir or (Path(env) if env else Path.home() / ".claude")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

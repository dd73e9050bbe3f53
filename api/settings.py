"""One validated settings object, read once at startup and passed down explicitly.

Every knob is an ``EDUMATRIX_*`` environment variable (or a line in ``.env``); the
README's configuration table lists them. Nothing here is a module-level global:
``Settings()`` is built by the CLI or the app factory and handed to whoever needs it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.accel import NAMES, Decision, decide

# Shortest HS256 secret we accept outside embedded mode (RFC 7518 §3.2: key >= hash size).
MIN_SECRET_BYTES = 32
_TOPIC = r"^[A-Za-z0-9._-]{1,200}$"
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "dev", "development", "test"}


class Mode(StrEnum):
    """Embedded runs on one machine with nothing installed; cluster uses real engines."""

    EMBEDDED = "embedded"
    CLUSTER = "cluster"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDUMATRIX_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path(".edumatrix"),
        description="Where embedded mode keeps its SQLite file and generated dev secret.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL; empty means SQLite in data_dir.",
    )
    db_pool_size: int = Field(default=10, ge=1, le=200)
    redis_url: str | None = Field(default=None, description="redis:// URL; unset = memory bus")
    redis_prefix: str = Field(default="emx", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset = in-process event log"
    )
    # Event log and analytics consumers (streams/events.py, streams/consumer.py).
    kafka_topic_user_actions: str = Field(default="user-actions", pattern=_TOPIC)
    kafka_topic_institution_events: str = Field(default="institution-events", pattern=_TOPIC)
    kafka_topic_analytics: str = Field(default="analytics", pattern=_TOPIC)
    kafka_topic_dead_letter: str = Field(default="events-dead-letter", pattern=_TOPIC)
    kafka_topic_partitions: int = Field(default=6, ge=1, le=1000)
    kafka_group_id: str = Field(default="edumatrix-analytics", pattern=_TOPIC)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000)
    kafka_rebalance_timeout_ms: int = Field(default=30_000, ge=1000)
    consumer_batch_size: int = Field(default=1000, ge=1, le=100_000)
    event_buffer_size: int = Field(default=10_000, ge=1, le=10_000_000)
    alert_errors_per_minute: int = Field(
        default=50, ge=1, description="errors/min in one institution that raise an alert"
    )
    alert_failed_logins_per_minute: int = Field(
        default=5, ge=1, description="failed logins/min of one user that raise an alert"
    )

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = Field(default=None, description="PEM text or path (RS256)")
    jwt_private_key: SecretStr | None = Field(
        default=None, description="PEM text or path; only `edumatrix token` uses it (RS256)"
    )
    jwt_issuer: str | None = None
    jwt_audience: str | None = None

    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    history_size: int = Field(default=100, ge=1, le=100_000)
    history_ttl_seconds: int = Field(default=600, ge=1)
    subscriber_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    presence_timeout_seconds: float = Field(
        default=15.0,
        ge=1.0,
        le=30.0,
        description="a dead process's presence members leave within 1.25x this",
    )
    ws_compression: bool = Field(
        default=False,
        description="permessage-deflate on WebSockets: compresses every frame per subscriber",
    )
    fast_paths: bool = Field(
        default=True,
        description="the one switch for every fast path of api/accel; false: stock paths only",
    )
    fast_paths_off: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated fast paths to keep off (names in api/accel)",
    )
    http_fast_path: bool = Field(
        default=True,
        description="false is the same as listing http (and so direct) in fast_paths_off",
    )
    max_subscriptions_per_connection: int = Field(default=100, ge=1)
    connection_init_timeout_seconds: float = Field(default=10.0, gt=0)
    max_query_depth: int = Field(default=10, ge=2)
    max_query_tokens: int = Field(default=2000, ge=50)
    max_aliases: int = Field(default=15, ge=1)

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None
    access_log: bool = Field(
        default=False,
        description="a log line per HTTP request and per accepted WebSocket (uvicorn's access log)",
    )

    @field_validator("allowed_origins", "fast_paths_off", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept the comma-separated form people actually type in env files."""
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("fast_paths_off")
    @classmethod
    def _known_paths(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - NAMES)
        if unknown:
            raise ValueError(f"unknown fast paths {unknown}; known: {sorted(NAMES)}")
        return value

    def decide_fast_paths(self, extensions: Iterable[object] | None = None) -> Decision:
        """Which fast paths this process runs (``api/accel``); ``extensions``: the
        schema's, once it exists."""
        off = [*self.fast_paths_off, *(() if self.http_fast_path else ("http",))]
        return decide(enabled=self.fast_paths, off=off, extensions=extensions)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith(("postgres://", "postgresql://")):
            scheme, rest = value.split("://", 1)
            return f"postgresql+asyncpg://{rest}"
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.removeprefix("sqlite:///")
        return value

    @model_validator(mode="after")
    def _check_secrets(self) -> Settings:
        """Refuse to run a shared deployment with a guessable or missing signing key."""
        if self.mode is Mode.EMBEDDED:
            return self
        if self.jwt_algorithm == "RS256":
            if not self.jwt_public_key:
                raise ValueError("EDUMATRIX_JWT_PUBLIC_KEY is required for RS256")
            return self
        if self.jwt_secret is None:
            raise ValueError(
                "EDUMATRIX_JWT_SECRET is required in cluster mode "
                "(Redis, Kafka or a non-SQLite database is configured)"
            )
        raw = self.jwt_secret.get_secret_value()
        if raw.lower() in _PLACEHOLDER_SECRETS or len(raw.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"EDUMATRIX_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes and not a "
                "placeholder; generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'"
            )
        return self

    @property
    def mode(self) -> Mode:
        on_sqlite = not self.database_url or self.database_url.startswith("sqlite")
        if on_sqlite and not self.redis_url and not self.kafka_bootstrap:
            return Mode.EMBEDDED
        return Mode.CLUSTER

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'edumatrix.db'}"

    @property
    def dev_secret_path(self) -> Path:
        return self.data_dir / "dev-jwt-secret"

    def signing_secret(self) -> tuple[str, bool]:
        """The HS256 secret and whether it was generated for development.

        Embedded mode without a configured secret keeps a random one in ``data_dir``
        so that ``edumatrix serve`` and ``edumatrix token`` in another shell agree.
        """
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value(), False
        path = self.dev_secret_path
        if path.exists():
            return path.read_text().strip(), True
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return value, True


def read_key(value: str) -> str:
    """A PEM given inline or as a path to a file holding it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).expanduser().read_text()

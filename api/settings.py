"""One validated settings object, read once at startup and passed down explicitly.

Every knob is an ``EDUMATRIX_*`` environment variable (or a line in ``.env``); the
README's configuration table lists them. Nothing here is a module-level global:
``Settings()`` is built by the CLI or the app factory and handed to whoever needs it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.accel import NAMES, Decision, decide
from api.clientinfo import TrustedProxies
from api.secret_policy import (
    GENERATE_HINT,
    is_loopback,
    secret_weakness,
    weak_secret_message,
)
from streams.redis_client import parse_redis_url

_TOPIC = r"^[A-Za-z0-9._-]{1,200}$"


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
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port (one Redis) or redis+cluster://host:port,host:port "
        "(a Redis Cluster, sharded Pub/Sub); unset = memory bus",
    )
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
    kafka_session_timeout_ms: int = Field(
        default=4_000,
        ge=1000,
        description="consumer group session: a consumer silent (or stopped, see "
        "kafka_leave_group) this long is dropped and its partitions reassigned; tansu also "
        "holds every JoinGroup for half of it, so it bounds start-up, restart and takeover "
        "(streams/kafka_group.py; was 10,000)",
    )
    kafka_leave_group: bool = Field(
        default=False,
        description="send LeaveGroup when a consumer stops, so its partitions move at once "
        "(Apache Kafka, Redpanda). Off for tansu 0.6, which can strand a group whose leader "
        "leaves while it rebalances; stopped members then expire after the session timeout",
    )
    kafka_rebalance_timeout_ms: int = Field(default=30_000, ge=1000)
    consumer_batch_size: int = Field(default=1000, ge=1, le=100_000)
    dead_letter_value_bytes: int = Field(
        default=4096,
        ge=0,
        le=65_536,
        description="bytes of a bad record's value copied into its dead letter (its full "
        "size and SHA-256 are always recorded); 16384 keeps any event-sized record whole",
    )
    dead_letter_deadline_seconds: float = Field(
        default=15.0,
        ge=0.1,
        le=50.0,
        description="how long a batch's dead letters are retried before they are parked "
        "(counted and logged; the batch is committed); under the 60 s poll interval",
    )
    event_buffer_size: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="accepted events a server holds until the broker confirms them; "
        "over: dropped and counted (edumatrix_events_dropped_total)",
    )
    kafka_request_timeout_ms: int = Field(
        default=40_000,
        ge=500,
        le=600_000,
        description="the server's event producer and topic creation: a request unanswered "
        "by then fails and its events are sent again (a hung broker may write both copies)",
    )
    kafka_retry_backoff_ms: int = Field(
        default=200,
        ge=10,
        le=60_000,
        description="first wait before the server's producer reconnects or re-sends, and "
        "before `edumatrix consume` reconnects; doubles per failure, jittered (50-100%)",
    )
    kafka_retry_backoff_max_ms: int = Field(
        default=5_000,
        ge=10,
        le=600_000,
        description="longest wait between those attempts; they go on forever",
    )
    alert_errors_per_minute: int = Field(
        default=50, ge=1, description="errors/min in one institution that raise an alert"
    )
    alert_failed_logins_per_minute: int = Field(
        default=5, ge=1, description="failed logins/min of one user that raise an alert"
    )
    # Consumer lag (streams/kafka_lag.py) and its alert rules (streams/lag_alerts.py).
    consumer_lag_interval_seconds: float = Field(
        default=2.0,
        ge=0.1,
        le=300.0,
        description="how often servers and consumers read the group's lag (broker end "
        "offsets minus the offsets stored in Postgres) into edumatrix_consumer_lag",
    )
    alert_consumer_lag: int = Field(
        default=10_000,
        ge=1,
        description="events waiting for the consumer group (all partitions) that raise "
        "the consumer_lag alert on system:status",
    )
    alert_consumer_stall_seconds: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="seconds a partition may wait with lag > 0 and no applied offset "
        "moving before the consumer_stall alert on system:status",
    )

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = Field(default=None, description="PEM text or path (RS256)")
    jwt_private_key: SecretStr | None = Field(
        default=None, description="PEM text or path; only `edumatrix token` uses it (RS256)"
    )
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="clock skew allowed when checking exp, nbf and iat; a WebSocket is "
        "accepted until exp plus this and closed (4403 'token expired') then",
    )
    jwt_max_ttl_seconds: int = Field(
        default=30 * 24 * 3600,
        ge=60,
        le=366 * 24 * 3600,
        description="tokens whose exp lies further ahead are refused; bounds a leaked token",
    )

    ssl_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain); set with ssl_keyfile to serve HTTPS/WSS"
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of ssl_certfile (unless the certfile holds it)"
    )

    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated IPs/CIDRs of proxies whose X-Forwarded-For is believed",
    )
    audit_failed_auth_per_minute: int = Field(
        default=5,
        ge=0,
        le=10_000,
        description="failed authentications audited one row each per client IP and minute; "
        "the rest become one 'limited' row with their count",
    )

    history_size: int = Field(default=100, ge=1, le=100_000)
    history_ttl_seconds: int = Field(default=600, ge=1)
    redis_pool_size: int = Field(
        default=50,
        ge=2,
        le=10_000,
        description="Redis connections per process for publishes, history and positions; "
        "when all are busy a command waits (up to the pool timeout) instead of failing",
    )
    redis_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    replay_concurrency: int = Field(
        default=16,
        ge=1,
        le=1_000,
        description="history reads for resuming subscriptions at once per process; "
        "keep it below the pool size so publishes always find a connection",
    )
    replay_queue_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="resuming subscriptions that may wait for a history read; "
        "beyond it a resume gets UNAVAILABLE with retryAfter",
    )
    replay_wait_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="how long a resume may wait and retry (Redis restarting) before "
        "UNAVAILABLE with retryAfter",
    )
    bus_reconnect_max_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=30,
        description="cap of the Redis pub/sub reconnect backoff (first retry ~50 ms); "
        "live delivery resumes at most this long after Redis is back",
    )
    subscriber_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    stream_heartbeat_seconds: float = Field(
        default=12.0,
        gt=0,
        le=300,
        description="an SSE comment (multipart: an empty part) this often on an idle "
        "HTTP stream, so proxies and clients do not time it out",
    )
    stream_reservation_seconds: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="a graphql-sse single-connection reservation whose stream is not "
        "opened by then is dropped (its connection slots freed)",
    )
    presence_timeout_seconds: float = Field(
        default=15.0,
        ge=1.0,
        le=30.0,
        description="a dead process's presence members leave within 1.25x this",
    )
    presence_history_interval_seconds: float = Field(
        default=60.0,
        ge=0.5,
        le=3600.0,
        description="how often presence is sampled for presenceHistory (one sample per "
        "interval for the whole deployment, kept an hour); tests use a second",
    )
    delivery_stats_flush_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=60.0,
        description="how often each server process adds its per-minute delivery counts "
        "to the deployment's (Redis, or memory in embedded mode)",
    )
    delivery_stats_report_window_seconds: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="a server process counts in serverProcesses while its last flush of "
        "delivery counts is at most this old",
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
    connection_init_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a WebSocket without connection_init by then is closed 4408 (both protocols)",
    )
    max_query_depth: int = Field(default=10, ge=2)
    max_query_tokens: int = Field(default=2000, ge=50)
    max_aliases: int = Field(default=15, ge=1)
    max_selections: int = Field(
        default=2000,
        ge=10,
        le=1_000_000,
        description=(
            "fields, inline fragments and fragment spreads an operation may select once "
            "its fragments are expanded (schema/limits.py): the bound on fragment bombs"
        ),
    )
    # Admission control (api/admission.py, api/body_limit.py). Rates are in the
    # `limits` notation ("20/second", "300/10 minutes"); 0 turns a limit off.
    rate_limit_user_mutations: str = Field(
        default="20/second",
        description="mutation root fields per token sub (non-service roles); over: 429",
    )
    rate_limit_service_mutations: str = Field(
        default="200/second",
        description="mutation root fields per service token sub; over: 429",
    )
    rate_limit_auth_failures_per_ip: str = Field(
        default="60/minute",
        description="failed authentications per client IP; over: 429 / close 4429, "
        "and failures are counted instead of audited one by one",
    )
    rate_limit_ws_messages: str = Field(
        default="200/second",
        description="inbound messages per WebSocket connection; over: close 4429 flood",
    )
    rate_limit_tarpit_seconds: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="an HTTP request over a rate waits this long (at most its Retry-After) "
        "before its 429, so a client that ignores Retry-After slows itself, not others",
    )
    max_connections_per_ip: int = Field(
        default=1000, ge=0, description="open WebSockets per client IP and process; 0: unlimited"
    )
    max_connections_per_subject: int = Field(
        default=50, ge=0, description="open WebSockets per token sub and process; 0: unlimited"
    )
    max_subscriptions_per_subject: int = Field(
        default=500,
        ge=0,
        description="operations open across one sub's WebSockets, per process; 0: unlimited",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=0, description="largest HTTP request body; over: 413; 0: unlimited"
    )
    # The Pusher Channels protocol endpoint (api/pusher.py, README "Coming from Pusher").
    pusher_apps: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated app_id:key:secret:institution entries; empty: the "
        "Pusher endpoints answer 'app does not exist'",
    )
    pusher_webhooks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated app_id=url entries: where each app's webhooks go "
        "(channel_occupied/vacated, member_added/removed); empty: none",
    )
    pusher_activity_timeout_seconds: int = Field(
        default=120,
        ge=5,
        le=3600,
        description="told to Pusher clients in connection_established: they ping after this "
        "long without a message; a socket silent for it plus 30 s is closed with 4201",
    )
    pusher_max_event_bytes: int = Field(
        default=10 * 1024,
        ge=256,
        le=1024 * 1024,
        description="largest event data (HTTP API, client events) and largest inbound "
        "frame on a Pusher socket, as Pusher's 10 KB",
    )
    rate_limit_pusher_client_events: str = Field(
        default="10/second",
        description="client-* events per Pusher connection (Pusher's own limit); over: the "
        "event is dropped with pusher:error 4301",
    )

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None
    access_log: bool = Field(
        default=False,
        description="a log line per HTTP request and per accepted WebSocket (uvicorn's access log)",
    )
    graphiql_persist_headers: bool = Field(
        default=False,
        description="GraphiQL keeps its headers (the bearer token) in the browser's "
        "localStorage across reloads; off: only in the open page (api/graphiql.py)",
    )

    @field_validator("allowed_origins", "fast_paths_off", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept the comma-separated form people actually type in env files."""
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("pusher_apps", "pusher_webhooks", mode="before")
    @classmethod
    def _split_apps(cls, value: object) -> object:
        if isinstance(value, str):
            return [a.strip() for a in value.split(",") if a.strip()]
        return value

    @field_validator("pusher_apps")
    @classmethod
    def _valid_apps(cls, value: list[str]) -> list[str]:
        """Refuse a malformed or weak app at startup, not at the first connection."""
        from api.pusher_apps import parse_apps

        parse_apps(value)
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        """Refuse a typo at startup rather than silently trusting nobody."""
        TrustedProxies.parse(value)
        return value

    @field_validator(
        "rate_limit_user_mutations",
        "rate_limit_service_mutations",
        "rate_limit_auth_failures_per_ip",
        "rate_limit_ws_messages",
        "rate_limit_pusher_client_events",
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        """Refuse a rate `limits` cannot read at startup, not at the first request."""
        from api.admission import parse_rate

        try:
            parse_rate(value)
        except ValueError as exc:
            raise ValueError(
                f"{exc}; write one rate like '20/second' or '300/10 minutes', or 0 for unlimited"
            ) from None
        return value.strip() or "0"

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

    @field_validator("redis_url")
    @classmethod
    def _redis_target(cls, value: str | None) -> str | None:
        """Refuse a URL redis-py would misread (several hosts in redis://) at start,
        not at the first publish."""
        if value:
            parse_redis_url(value)
        return value or None

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
        weakness = secret_weakness(self.jwt_secret.get_secret_value())
        if weakness is not None:
            raise ValueError(weak_secret_message("EDUMATRIX_JWT_SECRET", weakness))
        return self

    @model_validator(mode="after")
    def _check_webhooks(self) -> Settings:
        """Each webhook names a configured Pusher app and an http(s) URL."""
        if self.pusher_webhooks:
            from api.pusher_apps import parse_apps
            from api.pusher_webhooks import parse_webhooks

            parse_webhooks(self.pusher_webhooks, parse_apps(self.pusher_apps))
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("EDUMATRIX_SSL_KEYFILE needs EDUMATRIX_SSL_CERTFILE")
        return self

    def exposure_problem(self, host: str) -> str | None:
        """Why this configuration must not listen on ``host``, or None.

        Cluster mode already refused weak secrets at validation. Embedded mode may
        sign with a generated development secret (or any configured one) while it
        listens on loopback only; once other machines can connect, tokens must be
        unguessable, and a secret kept in a file under ``data_dir`` is not a
        deployment's secret.
        """
        if is_loopback(host) or self.jwt_algorithm == "RS256":
            return None
        if self.jwt_secret is None:
            return (
                f"listening on {host!r} (not loopback) needs EDUMATRIX_JWT_SECRET (or RS256 "
                f"keys); the generated development secret in {self.dev_secret_path} is only "
                f"for 127.0.0.1. Set one ({GENERATE_HINT}) or serve on --host 127.0.0.1"
            )
        weakness = secret_weakness(self.jwt_secret.get_secret_value())
        if weakness is not None:
            return f"listening on {host!r} (not loopback): " + weak_secret_message(
                "EDUMATRIX_JWT_SECRET", weakness
            )
        return None

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
        if not path.exists():
            _create_private(path, secrets.token_urlsafe(48) + "\n")
        elif path.stat().st_mode & 0o077:
            path.chmod(0o600)  # written world-readable by an older version
        return path.read_text().strip(), True


def _create_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read, unless ``path`` exists.

    The file is complete before it appears under its name (written to a 0600
    temporary file, then hard-linked), so a second process starting at the same
    moment (``--workers``, or ``edumatrix token`` in another shell) reads either
    nothing or the whole secret, and never replaces the first one's.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def read_key(value: str) -> str:
    """A PEM given inline or as a path to a file holding it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    return Path(value).expanduser().read_text()

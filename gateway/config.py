"""Configuration: frozen dataclasses loaded from TOML, overridden by environment and flags.

Precedence, lowest first: built-in defaults < the TOML file < ``GATEWAY_<SECTION>_<KEY>``
environment variables < command-line flags. Every key is validated once, here; the rest of
the program only sees typed values. Unknown keys and wrong types are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


def default_data_dir() -> str:
    """``$STATE_DIRECTORY`` under systemd (``StateDirectory=``), else ``./var``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return state.split(":")[0]
    return "var"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    # websockets protocol-level keepalive; the LiveStore client also pings at the RPC layer.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    # Time allowed for the opening handshake and for an idle HTTP keep-alive connection.
    open_timeout: float = 10.0
    http_keepalive_timeout: float = 5.0
    close_timeout: float = 5.0
    # Answer browser CORS preflights for the HTTP transport with Access-Control-Allow-Origin.
    cors_allow_origin: str = "*"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    backend: str = "sqlite"
    data_dir: str = field(default_factory=default_data_dir)
    # SQLite synchronous mode; "full" makes every acked push survive power loss.
    synchronous: str = "full"
    # PostgreSQL (backend = "postgres"): connection string, schema, pool, timeouts.
    dsn: str = ""
    dsn_file: str = ""
    postgres_schema: str = "gateway"
    pool_min: int = 2
    pool_max: int = 10
    statement_timeout: float = 10.0
    connect_timeout: float = 5.0
    # Seconds between checks for commits whose notification was lost (postgres).
    reconcile_interval: float = 5.0
    # A store with no live pull and no request for this long is dropped from memory (it is
    # loaded again from the log on its next request); 0 keeps every store loaded.
    unload_idle_after: float = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    # Largest inbound WebSocket message / HTTP body. The client pushes at most ~900 KB.
    max_message_bytes: int = 4 * 1024 * 1024
    # Bytes queued for one connection before it is evicted as a slow consumer (close 1013).
    send_buffer_limit: int = 8 * 1024 * 1024
    # Catch-up chunks sent ahead of the client's Acks for one pull (flow control, spec §5.6).
    catchup_window: int = 8
    max_store_id_length: int = 256
    # Largest decoded sync payload (the `payload` URL parameter), in bytes.
    max_payload_bytes: int = 16 * 1024
    # Concurrent requests (pulls + pushes) in flight on one WebSocket connection.
    max_requests_per_connection: int = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    # Production mode: every sync request must carry an acceptable credential.
    require_auth: bool = False
    # HS256/384/512 secret (>= 32 bytes in production) and the previous one during rotation.
    # Prefer the *_file keys or systemd credentials (jwt_secret, jwt_previous_secret).
    jwt_secret: str = ""
    jwt_secret_file: str = ""
    jwt_previous_secret: str = ""
    jwt_previous_secret_file: str = ""
    # PEM public keys (RS*/PS*/ES*/EdDSA) and/or a JWKS URL.
    public_key_files: tuple[str, ...] = ()
    jwks_url: str = ""
    jwks_timeout: float = 5.0
    # Shortest time between two JWKS refreshes triggered by an unknown `kid`.
    jwks_min_refresh_interval: float = 60.0
    jwks_cache_ttl: float = 3600.0
    # Accepted algorithms; never read from the token header. "none" is always refused.
    algorithms: tuple[str, ...] = ("HS256",)
    audience: str = ""
    issuer: str = ""
    # The claim naming the subject (e.g. "userId"), and an optional required `type` value.
    subject_claim: str = "sub"
    required_type: str = ""
    leeway: float = 10.0
    # Expired tokens are still accepted this long after `exp` (0 disables).
    grace_period: float = 86400.0
    # Insecure development tokens: accepted as subject "dev" only when require_auth is false.
    dev_tokens: tuple[str, ...] = ("insecure-token-change-me",)
    # Internal services send {"serverBypass": <token>}; >= 32 characters in production.
    bypass_token: str = ""
    bypass_token_file: str = ""
    # Claim listing the storeIds (or glob patterns) a subject may use; "" disables the check.
    stores_claim: str = ""
    # Browser apps that authenticate with a cookie: its name ("" disables).
    cookie_name: str = ""
    max_token_bytes: int = 8192
    # Failed attempts per client IP before it is locked out for the window.
    lockout_failures: int = 5
    lockout_window: float = 900.0
    # Addresses of reverse proxies whose X-Forwarded-For is trusted.
    trusted_proxies: tuple[str, ...] = ()
    # Pushes per second per subject (token bucket); over-limit pushes wait, never fail.
    push_rate: float = 10.0
    push_burst: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "info"
    # "plain" (one line per record, journald adds timestamps) or "json".
    format: str = "plain"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    # Serve GET /metrics (Prometheus text format) on the main port.
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "limits": LimitsConfig,
    "auth": AuthConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}

# Environment names used by the seed deployments, accepted as they are.
_ENV_ALIASES: dict[str, tuple[str, str]] = {
    "REQUIRE_AUTH": ("auth", "require_auth"),
    "JWT_SECRET": ("auth", "jwt_secret"),
    "JWT_PREVIOUS_SECRET": ("auth", "jwt_previous_secret"),
    "SERVER_BYPASS_TOKEN": ("auth", "bypass_token"),
    "AUTH_GRACE_PERIOD": ("auth", "grace_period"),
}

# Secrets that may also come from a file named by `<key>_file` or from a systemd credential
# of the same name in $CREDENTIALS_DIRECTORY (LoadCredential=).
SECRET_KEYS: tuple[tuple[str, str], ...] = (
    ("store", "dsn"),
    ("auth", "jwt_secret"),
    ("auth", "jwt_previous_secret"),
    ("auth", "bypass_token"),
)

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` or ``"500ms"``."""
    value = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit):
            number = value[: -len(unit)]
            try:
                return float(number) * _DURATION_UNITS[unit]
            except ValueError:
                break
    return float(value)


def _field_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, annotation: Any, *, from_env: bool) -> Any:
    """Check ``value`` against ``annotation``; environment strings are parsed first."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        allowed = [a for a in args if a is not type(None)]
        if type(None) in args and (
            value is None or (from_env and str(value).lower() in {"", "none", "off"})
        ):
            return None
        (inner,) = allowed
        return _coerce(key, value, inner, from_env=from_env)
    if annotation is bool:
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{key}: expected a boolean, got {value!r}")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a boolean, got {type(value).__name__}")
    if annotation is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__}")
    if annotation is float:
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
    if origin is tuple:
        if from_env and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _validate(config: Config) -> Config:
    if not 0 <= config.server.port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    if config.store.backend not in {"sqlite", "postgres"}:
        raise ConfigError(
            f"store.backend: unknown backend {config.store.backend!r} (sqlite, postgres)"
        )
    if config.store.backend == "postgres":
        if not config.store.dsn:
            raise ConfigError("store.dsn: required for the postgres backend")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,47}", config.store.postgres_schema):
            raise ConfigError("store.postgres_schema: lower-case letters, digits and _")
        if not 1 <= config.store.pool_min <= config.store.pool_max:
            raise ConfigError("store.pool_min, store.pool_max: 1 <= pool_min <= pool_max")
    if config.store.synchronous not in {"full", "normal", "extra"}:
        raise ConfigError("store.synchronous: one of full, normal, extra")
    limits = config.limits
    if limits.max_message_bytes < 1024 * 1024:
        raise ConfigError("limits.max_message_bytes: must be at least 1 MiB (spec §9)")
    for name in (
        "send_buffer_limit",
        "catchup_window",
        "max_store_id_length",
        "max_payload_bytes",
        "max_requests_per_connection",
    ):
        if getattr(limits, name) < 1:
            raise ConfigError(f"limits.{name}: must be positive")
    _validate_auth(config.auth)
    if config.log.level.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError("log.level: one of debug, info, warning, error")
    if config.log.format not in {"plain", "json"}:
        raise ConfigError("log.format: one of plain, json")
    return config


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_SECRET_BYTES = 32


def _validate_auth(auth: AuthConfig) -> None:
    if not auth.algorithms:
        raise ConfigError("auth.algorithms: at least one algorithm is required")
    for algorithm in auth.algorithms:
        if algorithm not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"auth.algorithms: {algorithm!r} is not supported")
    uses_hmac = any(a in HMAC_ALGORITHMS for a in auth.algorithms)
    uses_keys = any(a in ASYMMETRIC_ALGORITHMS for a in auth.algorithms)
    for name in ("grace_period", "leeway", "lockout_window", "jwks_timeout", "push_rate"):
        if getattr(auth, name) < 0:
            raise ConfigError(f"auth.{name}: must not be negative")
    if auth.push_burst < 1 or auth.lockout_failures < 1 or auth.max_token_bytes < 256:
        raise ConfigError("auth.push_burst, lockout_failures: positive; max_token_bytes >= 256")
    for proxy in auth.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"auth.trusted_proxies: {proxy!r} is not an IP address or network"
            ) from None
    if auth.jwks_url and not auth.jwks_url.startswith(("https://", "http://")):
        raise ConfigError("auth.jwks_url: must be an http(s) URL")
    if not auth.require_auth:
        return
    has_secret = bool(auth.jwt_secret)
    has_keys = bool(auth.public_key_files or auth.jwks_url)
    if not (has_secret or has_keys):
        raise ConfigError(
            "auth.jwt_secret: a verification key is required when auth.require_auth is true "
            "(set JWT_SECRET, auth.jwt_secret_file, auth.public_key_files or auth.jwks_url)"
        )
    if uses_hmac and not has_secret:
        raise ConfigError("auth.jwt_secret: required for the HS* algorithms in auth.algorithms")
    if uses_keys and not has_keys:
        raise ConfigError(
            "auth.public_key_files: public keys or auth.jwks_url are required for "
            "the asymmetric algorithms in auth.algorithms"
        )
    for key in ("jwt_secret", "jwt_previous_secret"):
        value = getattr(auth, key)
        if value and len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"auth.{key}: must be at least {MIN_SECRET_BYTES} bytes when require_auth is true"
            )
    if auth.bypass_token and len(auth.bypass_token) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"auth.bypass_token: SERVER_BYPASS_TOKEN must be at least {MIN_SECRET_BYTES} "
            "characters when require_auth is true"
        )


def build_config(
    file_data: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Merge file, environment and explicit overrides (in that order) into a valid Config."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for section, values in (file_data or {}).items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}]: expected a table")
        types_ = _field_types(_SECTIONS[section])
        for key, value in values.items():
            if key not in types_:
                raise ConfigError(f"{section}.{key}: unknown key")
            sections[section][key] = _coerce(f"{section}.{key}", value, types_[key], from_env=False)
    for name, value in (env or {}).items():
        alias = _ENV_ALIASES.get(name)
        if alias is not None:
            section, key = alias
            types_ = _field_types(_SECTIONS[section])
            sections[section][key] = _coerce(name, value, types_[key], from_env=True)
            continue
        if not name.startswith("GATEWAY_"):
            continue
        rest = name[len("GATEWAY_") :].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS:
            continue
        types_ = _field_types(_SECTIONS[section])
        if key not in types_:
            raise ConfigError(f"{name}: unknown key {section}.{key}")
        sections[section][key] = _coerce(name, value, types_[key], from_env=True)
    for section, values in (overrides or {}).items():
        types_ = _field_types(_SECTIONS[section])
        for key, value in values.items():
            sections[section][key] = _coerce(f"{section}.{key}", value, types_[key], from_env=False)
    _load_secrets(sections, env or {})
    built = Config(**{name: _SECTIONS[name](**values) for name, values in sections.items()})
    return _validate(built)


def _read_secret(key: str, path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None


def _load_secrets(sections: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    """Fill secrets from ``<key>_file`` or ``$CREDENTIALS_DIRECTORY/<key>`` when unset."""
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    for section, key in SECRET_KEYS:
        values = sections[section]
        if values.get(key):
            continue
        file_key = f"{key}_file"
        if values.get(file_key):
            values[key] = _read_secret(f"{section}.{file_key}", values[file_key])
        elif credentials and (Path(credentials) / key).is_file():
            values[key] = _read_secret(f"{section}.{key}", str(Path(credentials) / key))


def load_config(
    path: str | Path | None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read ``path`` (TOML) if given, then apply the environment and ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return build_config(data, os.environ if env is None else env, overrides)


def make_config(**flat: Any) -> Config:
    """Build a Config from flat keyword overrides (``port=0, data_dir=...``); for tests.

    Each keyword names a key of exactly one section. The host defaults to 127.0.0.1 and the
    port to 0 so every test server gets a free port.
    """
    flat.setdefault("host", "127.0.0.1")
    flat.setdefault("port", 0)
    overrides: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in flat.items():
        owners = [s for s, cls in _SECTIONS.items() if key in _field_types(cls)]
        if len(owners) != 1:
            raise ConfigError(f"make_config: unknown or ambiguous key {key!r}")
        overrides[owners[0]][key] = value
    return build_config(None, {}, overrides)


def as_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data (for ``check-config``)."""
    return dataclasses.asdict(config)

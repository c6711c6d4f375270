"""Configuration: the typed, validated settings of one gateway, and the live holder.

Frozen dataclasses, one per TOML section, with their defaults; :func:`validate` checks
what types alone cannot say. Reading them from a file, the environment and flags is
:mod:`gateway.configfile`'s job. The running server reads its settings through one
:class:`LiveConfig` at the point of use, so a reload (SIGHUP) swaps them in one step.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import ConfigError
from gateway.hooks import HooksConfig, validate_hooks
from gateway.rules import RulesConfig, validate_rules

StoreBackend = Literal["sqlite", "postgres"]
Synchronous = Literal["full", "normal", "extra"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["plain", "json"]


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
    # Length of the kernel's queue of connections not yet accepted (listen(2); capped by
    # net.core.somaxconn). A queue that overflows drops SYNs: clients retry them after 1 s,
    # 3 s, ... which a reconnect storm sees as timeouts.
    backlog: int = 4096
    close_timeout: float = 5.0
    # Answer browser CORS preflights for the HTTP transport with Access-Control-Allow-Origin.
    cors_allow_origin: str = "*"
    # Browser origins allowed on the sync endpoints (exact origins, hosts, *.example.com);
    # empty: no check. Requests without an Origin header (non-browser clients) always pass.
    allowed_origins: tuple[str, ...] = ()
    # TLS (wss:// and https:// on the same port): PEM certificate chain and key. Both or
    # neither; read again on reload.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # The transports served (sync-cf's enabledTransports): "ws", "http" or both.
    transports: tuple[str, ...] = ("ws", "http")
    # Extra headers on every HTTP-transport response (sync-cf's http.responseHeaders).
    response_headers: dict[str, str] = field(default_factory=dict)
    # Request headers kept with a session for the auth re-check and push rules, beside the
    # credential headers (sync-cf's forwardHeaders).
    forward_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    backend: StoreBackend = "sqlite"
    data_dir: str = field(default_factory=default_data_dir)
    # SQLite synchronous mode; "full" makes every acked push survive power loss.
    synchronous: Synchronous = "full"
    # PostgreSQL (backend = "postgres"): connection string, schema, pool, timeouts.
    dsn: str = ""
    dsn_file: str = ""
    postgres_schema: str = "gateway"
    pool_min: int = 2
    pool_max: int = 10
    # Group commits in flight at once per node (each on a pooled connection; at most half of
    # pool_max). Fewer make bigger groups: less CPU per push on both sides when busy.
    commit_groups: int = 2
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
    # WebSocket requests waiting for their answer past which a sync handshake that arrives is
    # answered 503 OVERLOADED with Retry-After at once (a reconnect storm); 0: never shed.
    max_pending_handshakes: int = 16384


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
    # The longest lifetime (exp - iat) of the tokens you issue: a revocation is kept this long
    # (plus grace_period) after the tokens it covers were issued, then forgotten.
    max_token_lifetime: float = 30 * 86400.0
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
    # Networks (CIDRs) the bypass token is accepted from; elsewhere it is refused as a wrong
    # one. Empty: from anywhere.
    bypass_allowed_networks: tuple[str, ...] = ()
    # Pushes per second per subject (token bucket); over-limit pushes wait, never fail.
    push_rate: float = 10.0
    push_burst: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: LogLevel = "info"
    # "plain" (one line per record, journald adds timestamps) or "json".
    format: LogFormat = "plain"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    # Serve GET /metrics (Prometheus text format) on the main port.
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    # The admin API's bearer token (at least 24 characters); without one the API is off.
    # Keep it out of the file: token_file, GATEWAY_ADMIN_TOKEN or the systemd credential
    # admin_token.
    token: str = ""
    token_file: str = ""
    # host:port of the admin API's own listener; loopback unless you firewall it. Port 0
    # picks a free one (logged).
    listen: str = "127.0.0.1:8788"
    # Networks (CIDRs) the admin API answers; from elsewhere 403 before the token is read.
    # Empty: any address that reaches the listener.
    allowed_networks: tuple[str, ...] = ()


# Shortest admin token accepted: it guards destructive actions on every store.
MIN_ADMIN_TOKEN = 24


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a (host, port) pair.

    Raises:
        ValueError: not ``host:port`` with a port in 0-65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)


class LiveConfig:
    """The one source of the running configuration.

    Components keep the holder, never a copy of a section, and read ``current`` where they
    use a value; :meth:`swap` (a reload) replaces the whole configuration at once. What a
    reload changes for sessions already open is listed in the README ("Lifecycle").
    """

    __slots__ = ("current",)

    def __init__(self, config: Config) -> None:
        self.current = config

    def swap(self, config: Config) -> Config:
        """Install ``config``; returns the one it replaces."""
        old, self.current = self.current, config
        return old


# Connection-level headers a response header setting must not touch (RFC 9110 §7.6.1),
# and those the server writes itself.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-type",
        "date",
        "server",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _validate_server(server: ServerConfig) -> None:
    if not 0 <= server.port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    if server.backlog < 1:
        raise ConfigError("server.backlog: must be positive")
    if not server.transports or any(t not in ("ws", "http") for t in server.transports):
        raise ConfigError('server.transports: one or both of "ws", "http"')
    for name, value in server.response_headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"server.response_headers: {name!r} is not a header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"server.response_headers: {name} is set by the server itself")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"server.response_headers.{name}: no CR, LF or NUL in a value")
    for pattern in server.allowed_origins:
        rest = pattern.partition("://")[2] or pattern
        if not rest or any(c.isspace() or c == "/" for c in rest):
            raise ConfigError(f"server.allowed_origins: {pattern!r} is not an origin or host")
    if bool(server.tls_cert_file) != bool(server.tls_key_file):
        raise ConfigError("server.tls_cert_file, server.tls_key_file: set both or neither")
    for name in server.forward_headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"server.forward_headers: {name!r} is not a header name")


def _validate_admin(config: Config) -> None:
    admin = config.admin
    try:
        parse_listen(admin.listen)
    except ValueError as exc:
        raise ConfigError(f"admin.listen: {exc}") from None
    for network in admin.allowed_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"admin.allowed_networks: {network!r} is not an IP address or network"
            ) from None
    if not admin.token:
        return
    if len(admin.token) < MIN_ADMIN_TOKEN or admin.token.strip() != admin.token:
        raise ConfigError(
            f"admin.token: at least {MIN_ADMIN_TOKEN} characters, no surrounding spaces "
            "(e.g. openssl rand -hex 24)"
        )
    if admin.token == config.auth.bypass_token:
        raise ConfigError("admin.token: must differ from the server bypass token")


def validate(config: Config) -> Config:
    """``config`` when every value is acceptable; else ConfigError naming the key."""
    _validate_server(config.server)
    if config.store.backend == "postgres":
        if not config.store.dsn:
            raise ConfigError("store.dsn: required for the postgres backend")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,47}", config.store.postgres_schema):
            raise ConfigError("store.postgres_schema: lower-case letters, digits and _")
        if not 1 <= config.store.pool_min <= config.store.pool_max:
            raise ConfigError("store.pool_min, store.pool_max: 1 <= pool_min <= pool_max")
        if config.store.commit_groups < 1:
            raise ConfigError("store.commit_groups: at least 1")
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
    if limits.max_pending_handshakes < 0:
        raise ConfigError("limits.max_pending_handshakes: must be 0 (never shed) or positive")
    _validate_auth(config.auth)
    _validate_admin(config)
    validate_rules(config.rules)
    validate_hooks(config.hooks)
    if config.auth.require_auth and config.auth.cookie_name:
        # A browser attaches the cookie to a WebSocket opened by any site (browsers apply no
        # CORS to WebSockets): cookie auth needs an Origin allowlist.
        if not config.server.allowed_origins:
            raise ConfigError(
                "auth.cookie_name, server.allowed_origins: cookie auth in production needs "
                "an allowlist of the app's origins (cross-site WebSocket hijacking)"
            )
        if config.server.cors_allow_origin == "*":
            raise ConfigError(
                'auth.cookie_name, server.cors_allow_origin: "*" with cookie auth in '
                "production; name the app's origin"
            )
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
    for network in auth.bypass_allowed_networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"auth.bypass_allowed_networks: {network!r} is not an IP address or network"
            ) from None
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

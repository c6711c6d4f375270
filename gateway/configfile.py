"""Reading the configuration: TOML file, environment, secret files, command-line flags.

Precedence, lowest first: built-in defaults < the TOML file < ``GATEWAY_<SECTION>_<KEY>``
environment variables < command-line flags. Every key is validated once, here and in
:func:`gateway.config.validate`; the rest of the program only sees typed values. Unknown
keys and wrong types are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.config import (
    AdminConfig,
    AuthConfig,
    Config,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    ServerConfig,
    StoreConfig,
    validate,
)
from gateway.errors import ConfigError
from gateway.hooks import HooksConfig
from gateway.rules import RulesConfig
from gateway.validation import EventSchemas, compile_schemas

_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "store": StoreConfig,
    "limits": LimitsConfig,
    "auth": AuthConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "admin": AdminConfig,
    "rules": RulesConfig,
    "hooks": HooksConfig,
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
    ("admin", "token"),
)

# systemd credential names that are not the key's own name.
_CREDENTIAL_NAMES: dict[tuple[str, str], str] = {("admin", "token"): "admin_token"}

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
    if origin is typing.Literal:
        # Modes: one of a few words, case-insensitive, stored in the canonical spelling.
        if isinstance(value, str) and value.strip().lower() in args:
            return value.strip().lower()
        raise ConfigError(f"{key}: one of {', '.join(args)}; got {value!r}")
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
    if origin is dict:
        if from_env and isinstance(value, str):
            try:
                value = orjson.loads(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a JSON object") from None
        if args[1] is not str:
            return _table_of(key, value, args[1])
        if isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return dict(value)
        raise ConfigError(f"{key}: expected a table of strings")
    if origin is tuple and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        if from_env and isinstance(value, str):
            try:
                value = orjson.loads(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a JSON array of tables") from None
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected an array of tables ([[{key}]] entries)")
        return tuple(_entry(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value))
    if origin is tuple:
        if from_env and isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


def _table_of(key: str, value: Any, annotation: Any) -> dict[str, Any]:
    """A table whose values all have ``annotation`` (a lone string stands for a list of one)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    listed = typing.get_origin(annotation) is tuple
    return {
        name: _coerce(
            f"{key}.{name}",
            [item] if listed and isinstance(item, str) else item,
            annotation,
            from_env=False,
        )
        for name, item in value.items()
    }


def _entry(key: str, value: Any, cls: type[Any]) -> Any:
    """One entry of an array of tables (``[[rules.push]]``): its keys checked like a section's."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    types_ = _field_types(cls)
    for name in value:
        if name not in types_:
            raise ConfigError(f"{key}.{name}: unknown key (one of {', '.join(types_)})")
    for item in dataclasses.fields(cls):
        required = item.default is dataclasses.MISSING
        if required and item.default_factory is dataclasses.MISSING and item.name not in value:
            raise ConfigError(f"{key}.{item.name}: required")
    coerced = {
        name: _coerce(f"{key}.{name}", item, types_[name], from_env=False)
        for name, item in value.items()
    }
    return cls(**coerced)


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
    _tls_credentials(sections["server"], env or {})
    built = Config(**{name: _SECTIONS[name](**values) for name, values in sections.items()})
    return validate(built)


def _tls_credentials(server: dict[str, Any], env: Mapping[str, str]) -> None:
    """TLS files from systemd credentials ``tls_cert`` and ``tls_key`` when not configured."""
    credentials = env.get("CREDENTIALS_DIRECTORY", "")
    if not credentials or server.get("tls_cert_file") or server.get("tls_key_file"):
        return
    cert, key = Path(credentials) / "tls_cert", Path(credentials) / "tls_key"
    if cert.is_file() and key.is_file():
        server["tls_cert_file"], server["tls_key_file"] = str(cert), str(key)


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
        credential = Path(credentials) / _CREDENTIAL_NAMES.get((section, key), key)
        if values.get(file_key):
            values[key] = _read_secret(f"{section}.{file_key}", values[file_key])
        elif credentials and credential.is_file():
            values[key] = _read_secret(f"{section}.{key}", str(credential))


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


def load_event_schemas(rules: RulesConfig) -> EventSchemas:
    """The compiled ``[rules] event_schemas`` file (none configured: nothing to check).

    Raises:
        ConfigError: the file cannot be read, is not JSON, or holds an invalid schema.
    """
    path = rules.event_schemas
    if not path:
        return EventSchemas()
    try:
        document = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"rules.event_schemas: cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"rules.event_schemas: {path}: not JSON: {exc}") from None
    return compile_schemas(document, strict=rules.strict_events, source=path)

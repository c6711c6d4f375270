"""Event validation: the JSON Schemas of pushed events' ``args``. Pure: no I/O.

``[rules] event_schemas`` names a JSON file mapping event names to the JSON Schema of their
``args`` (README "Push rules and validation"; LiveStore apps print it from their Effect Schema
event definitions with ``JSONSchema.make``). :func:`compile_schemas` turns the parsed file,
once per load or reload, into validators (jsonschema-rs: the fastest of the libraries compared
in ``bench/studies/validators.py``), and :func:`check` judges one pushed batch:

- an event whose ``args`` (``null`` when absent) do not validate: ``EVENT_INVALID``;
- with ``strict_events = true``, an event whose name has no schema: ``EVENT_UNKNOWN``;
- without strict mode, names missing from the file are not checked.

One bad event refuses the whole batch. Refusal messages name the event, its position, where
in ``args`` it failed and the validator's message; the values themselves are masked (a
message goes to the client and to the security log, and args are the app's user data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema_rs

from gateway.errors import ConfigError
from gateway.protocol import NewEvent
from gateway.rules import EVENT_INVALID, EVENT_UNKNOWN, Refused, bounded, short

# What stands for a value in the validator's messages.
MASK: Final = "<value>"


@dataclass(frozen=True, slots=True)
class EventSchemas:
    """The event schemas in force, compiled (one object, swapped whole on reload)."""

    validators: Mapping[str, jsonschema_rs.Validator] = field(default_factory=dict)
    strict: bool = False

    @property
    def active(self) -> bool:
        """Whether any push may be refused for its events (else :func:`check` is skipped)."""
        return bool(self.validators) or self.strict


def compile_schemas(document: object, *, strict: bool, source: str) -> EventSchemas:
    """Validators for a parsed schema file: a JSON object of event name -> JSON Schema.

    Raises:
        ConfigError: the document is not such an object, or a schema is not a valid JSON
            Schema (checked against its draft's meta-schema; ``$ref`` to anything outside
            the schema itself is refused: nothing is fetched).
    """
    if not isinstance(document, dict):
        raise ConfigError(f"rules.event_schemas: {source}: expected a JSON object of schemas")
    validators: dict[str, jsonschema_rs.Validator] = {}
    for name, schema in document.items():
        if not name:
            raise ConfigError(f"rules.event_schemas: {source}: an event name is empty")
        if not isinstance(schema, dict | bool):
            raise ConfigError(
                f"rules.event_schemas: {source}: {name!r}: a schema is an object or a boolean"
            )
        try:
            validators[name] = jsonschema_rs.validator_for(schema, offline=True, mask=MASK)
        except ValueError as exc:
            reason = getattr(exc, "message", None) or str(exc).partition("\n")[0]
            raise ConfigError(
                f"rules.event_schemas: {source}: {name!r} is not a valid JSON Schema: "
                f"{bounded(reason)}"
            ) from None
    return EventSchemas(validators, strict)


def _pointer(path: Sequence[str | int]) -> str:
    """A JSON Pointer into ``args`` (``/items/0/name``), or ``args`` itself."""
    if not path:
        return "args"
    return "args/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in path)


def check(schemas: EventSchemas, events: Sequence[NewEvent]) -> Refused | None:
    """Judge a batch's events against ``schemas``; None when every event may be stored."""
    validators = schemas.validators
    for position, event in enumerate(events):
        validator = validators.get(event.name)
        if validator is None:
            if schemas.strict:
                return Refused(
                    EVENT_UNKNOWN,
                    f"event '{short(event.name)}' (batch[{position}]) has no schema "
                    "(rules.strict_events)",
                    event=short(event.name),
                    position=position,
                )
            continue
        args: Any = event.args
        if validator.is_valid(args):
            continue
        error = next(iter(validator.iter_errors(args)))
        return Refused(
            EVENT_INVALID,
            f"event '{short(event.name)}' (batch[{position}]): "
            f"{bounded(_pointer(error.instance_path))}: {bounded(error.message)}",
            event=short(event.name),
            position=position,
        )
    return None

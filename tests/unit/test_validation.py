"""Event validation as pure functions (gateway.validation): a schema document in, a decision out.

One table of batches judged against compiled schemas (allowed, or the refusal's code, event,
position and a piece of its message), one of schema files that are refused with an error
naming the problem, and the loader's errors for files that cannot be read or parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.configfile import build_config, load_event_schemas
from gateway.errors import ConfigError
from gateway.protocol import NewEvent
from gateway.rules import EVENT_INVALID, EVENT_UNKNOWN, MAX_MESSAGE, RulesConfig
from gateway.validation import MASK, EventSchemas, check, compile_schemas

TODO = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["id", "text"],
    "properties": {"id": {"type": "string"}, "text": {"type": "string", "maxLength": 10}},
    "additionalProperties": False,
}
DOCUMENT: dict[str, Any] = {
    "v1.TodoCreated": TODO,
    "v1.Tagged": {"type": "object", "properties": {"tags": {"type": "array", "items": TODO}}},
    "v1.NoArgs": {"type": "null"},
    "v1.Anything": True,
}
NO_ARGS = object()


def ev(name: str, args: Any = NO_ARGS, seq: int = 1) -> NewEvent:
    return NewEvent(seq, seq - 1, b"{}", name, None if args is NO_ARGS else args)


GOOD = {"id": "a", "text": "milk"}
CASES: list[tuple[str, bool, list[NewEvent], tuple[str, int, str] | None]] = [
    ("valid", False, [ev("v1.TodoCreated", GOOD)], None),
    ("unknown names pass", False, [ev("v1.Other", 5)], None),
    ("true schema", False, [ev("v1.Anything", [1, 2])], None),
    ("absent args are null", False, [ev("v1.NoArgs")], None),
    (
        "wrong type, value masked",
        False,
        [ev("v1.TodoCreated", {"id": "a", "text": 42})],
        (EVENT_INVALID, 0, f"args/text: {MASK} is not of type"),
    ),
    (
        "missing property",
        False,
        [ev("v1.TodoCreated", {"id": "a"})],
        (EVENT_INVALID, 0, 'args: "text" is a required property'),
    ),
    (
        "second event of the batch",
        False,
        [ev("v1.TodoCreated", GOOD), ev("v1.TodoCreated", {"id": 1, "text": "x"}, 2)],
        (EVENT_INVALID, 1, "args/id:"),
    ),
    (
        "nested path",
        False,
        [ev("v1.Tagged", {"tags": [GOOD, {"id": "b", "text": "far too long here"}]})],
        (EVENT_INVALID, 0, "args/tags/1/text:"),
    ),
    ("absent args for an object", False, [ev("v1.TodoCreated")], (EVENT_INVALID, 0, "args: ")),
    ("strict: known", True, [ev("v1.TodoCreated", GOOD)], None),
    (
        "strict: unknown",
        True,
        [ev("v1.TodoCreated", GOOD), ev("v1.Other", 1, 2)],
        (EVENT_UNKNOWN, 1, "'v1.Other' (batch[1]) has no schema"),
    ),
]


@pytest.mark.parametrize(
    ("strict", "events", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_decision_table(
    strict: bool, events: list[NewEvent], expected: tuple[str, int, str] | None
) -> None:
    schemas = compile_schemas(DOCUMENT, strict=strict, source="schemas.json")
    refused = check(schemas, events)
    if expected is None:
        assert refused is None
        return
    assert refused is not None
    code, position, piece = expected
    assert (refused.code, refused.position) == (code, position)
    assert refused.event == events[position].name
    assert piece in refused.message, refused.message
    assert refused.note.startswith(f"{code}: event '{events[position].name}' (batch[{position}])")
    assert refused.metric_reason == ("invalid" if code == EVENT_INVALID else "unknown_event")


def test_messages_are_bounded_and_escape_control_characters() -> None:
    schemas = compile_schemas(
        {"e\nvil": {"type": "object", "additionalProperties": False}}, strict=False, source="f"
    )
    keys = {f"key-{i}-\n-" + "x" * 40: i for i in range(20)}
    refused = check(schemas, [ev("e\nvil", keys)])
    assert refused is not None
    assert "\n" not in refused.note
    assert refused.note.startswith("EVENT_INVALID: event 'e\\nvil' (batch[0]): args: ")
    assert len(refused.note) < MAX_MESSAGE + 100, refused.note


def test_no_schemas_is_inactive() -> None:
    assert not EventSchemas().active
    assert compile_schemas({}, strict=True, source="f").active
    assert compile_schemas(DOCUMENT, strict=False, source="f").active


BAD_DOCUMENTS: list[tuple[object, str]] = [
    ([TODO], "expected a JSON object of schemas"),
    ({"": TODO}, "an event name is empty"),
    ({"v1.X": 5}, "'v1.X': a schema is an object or a boolean"),
    ({"v1.X": {"type": "nope"}}, "'v1.X' is not a valid JSON Schema"),
    ({"v1.X": {"pattern": "("}}, "'v1.X' is not a valid JSON Schema"),
    ({"v1.X": {"$ref": "https://example.com/schema.json"}}, "'v1.X' is not a valid JSON Schema"),
]


@pytest.mark.parametrize(("document", "message"), BAD_DOCUMENTS)
def test_a_bad_schema_document_is_refused(document: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"rules\.event_schemas: bad\.json") as caught:
        compile_schemas(document, strict=False, source="bad.json")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_loader_reads_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "schemas.json"
    path.write_text('{"v1.TodoCreated": {"type": "object"}}')
    rules = build_config({"rules": {"event_schemas": str(path), "strict_events": True}}, {}).rules
    schemas = load_event_schemas(rules)
    assert schemas.strict
    assert set(schemas.validators) == {"v1.TodoCreated"}
    assert load_event_schemas(RulesConfig()) == EventSchemas()


def test_the_loader_names_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match=r"rules.event_schemas: cannot read .*missing.json"):
        load_event_schemas(RulesConfig(event_schemas=str(missing)))
    broken = tmp_path / "broken.json"
    broken.write_text('{"v1.X": ')
    with pytest.raises(ConfigError, match=r"rules.event_schemas: .*broken.json: not JSON"):
        load_event_schemas(RulesConfig(event_schemas=str(broken)))


def test_strict_events_needs_a_schema_file() -> None:
    with pytest.raises(ConfigError, match=r"rules\.strict_events: needs a schema file"):
        build_config({"rules": {"strict_events": True}}, {})


def readme_block(heading: str, language: str) -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.partition(f"\n### {heading}\n")[2]
    return section.partition(f"```{language}\n")[2].partition("```")[0]


def test_the_readme_schema_file_compiles_and_means_what_it_says() -> None:
    schemas = compile_schemas(
        orjson.loads(readme_block("Event validation", "json")), strict=True, source="README"
    )
    assert check(schemas, [ev("v1.TodoCreated", {"id": "a", "text": "milk"})]) is None
    refused = check(schemas, [ev("v1.TodoCreated", {"id": "a"})])
    assert refused is not None
    assert (
        refused.note
        == "EVENT_INVALID: event 'v1.TodoCreated' (batch[0]): args: \"text\" is a required property"
    )
    refused = check(schemas, [ev("v1.TodoCompleted", {"id": "a"}), ev("v1.Unlisted", {}, 2)])
    assert refused is not None
    assert (
        refused.note
        == "EVENT_UNKNOWN: event 'v1.Unlisted' (batch[1]) has no schema (rules.strict_events)"
    )

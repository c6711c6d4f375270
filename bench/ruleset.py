"""A realistic rule set for the push-rules bench (issue 14): 10 push rules and 20 event schemas.

The schemas are what Effect's ``JSONSchema.make`` prints for a todo/project app's events
(draft-07, ``additionalProperties: false``, ``required``, literals as ``enum``, ``NullOr`` as
``anyOf``); ``v1.TodoCreated`` is the event :func:`bench.frames.make_events` pushes. The rules
let the bench's pushers through after matching a few of them, as an app's would.
"""

from __future__ import annotations

from typing import Any, Final

_DRAFT7: Final = "http://json-schema.org/draft-07/schema#"


def _struct(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "$schema": _DRAFT7,
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


_S: Final = {"type": "string"}
_ID: Final = {"type": "string", "minLength": 1, "maxLength": 64}
_INT: Final = {"type": "integer"}
_NUM: Final = {"type": "number"}
_BOOL: Final = {"type": "boolean"}
_TEXT: Final = {"type": "string", "maxLength": 2000}
_DATE: Final = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}"}
_NULL_DATE: Final = {"anyOf": [_DATE, {"type": "null"}]}
_PRIORITY: Final = {"type": "string", "enum": ["low", "medium", "high", "urgent"]}
_TAGS: Final = {"type": "array", "items": _ID, "maxItems": 32}

EVENT_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "v1.TodoCreated": _struct({"t": _INT, "id": _ID, "text": _TEXT}),
    "v1.TodoCompleted": _struct({"id": _ID}),
    "v1.TodoUncompleted": _struct({"id": _ID}),
    "v1.TodoDeleted": _struct({"id": _ID, "deletedAt": _DATE}),
    "v1.TodoRenamed": _struct({"id": _ID, "text": _TEXT}),
    "v1.TodoMoved": _struct({"id": _ID, "listId": _ID, "position": _NUM}),
    "v1.TodoDue": _struct({"id": _ID, "due": _NULL_DATE}),
    "v1.TodoPrioritised": _struct({"id": _ID, "priority": _PRIORITY}),
    "v1.TodoTagged": _struct({"id": _ID, "tags": _TAGS}),
    "v1.TodoAssigned": _struct({"id": _ID, "assignee": {"anyOf": [_ID, {"type": "null"}]}}),
    "v1.ListCreated": _struct({"id": _ID, "name": _TEXT, "color": _S}, optional=("color",)),
    "v1.ListRenamed": _struct({"id": _ID, "name": _TEXT}),
    "v1.ListArchived": _struct({"id": _ID, "archived": _BOOL}),
    "v1.ListShared": _struct(
        {"id": _ID, "with": _ID, "role": {"type": "string", "enum": ["viewer", "editor"]}}
    ),
    "v1.CommentAdded": _struct({"id": _ID, "todoId": _ID, "author": _ID, "text": _TEXT}),
    "v1.CommentEdited": _struct({"id": _ID, "text": _TEXT}),
    "v1.CommentDeleted": _struct({"id": _ID}),
    "v1.AttachmentAdded": _struct(
        {
            "id": _ID,
            "todoId": _ID,
            "file": _struct({"name": _TEXT, "size": {"type": "integer", "minimum": 0}, "mime": _S}),
        }
    ),
    "v1.ReminderSet": _struct({"id": _ID, "at": _DATE, "repeat": _PRIORITY}, optional=("repeat",)),
    "v1.UserRenamed": _struct({"id": _ID, "name": _TEXT}),
}

# Ten [[rules.push]] entries: the admin-only events, a frozen store, a read-only team, what
# the bench's session (a JWT with role "member", plan "pro") is allowed, then defaults.
PUSH_RULES: Final[list[dict[str, Any]]] = [
    {"action": "deny", "stores": ["archive-*"], "name": "archived stores are frozen"},
    {"action": "allow", "events": ["v1.User*"], "claims": {"role": ["admin"]}},
    {"action": "deny", "events": ["v1.User*"], "name": "users: admins only"},
    {"action": "deny", "subjects": ["banned-*"]},
    {"action": "deny", "claims": {"team": ["auditors"]}, "name": "auditors read"},
    {"action": "allow", "events": ["v1.List*"], "claims": {"role": ["admin", "owner"]}},
    {"action": "deny", "events": ["v1.ListShared", "v1.ListArchived"]},
    {"action": "deny", "events": ["v1.Attachment*"], "claims": {"plan": ["free"]}},
    {"action": "allow", "events": ["v1.Todo*", "v1.Comment*"], "claims": {"role": ["member"]}},
    {"action": "deny", "events": ["*"], "stores": ["org-*"], "name": "org stores: members"},
]

# The claims the bench's pushing sessions carry (the rules read role, team and plan).
CLAIMS: Final = {"role": "member", "plan": "pro", "team": "dev"}


def sample_args(name: str, i: int) -> dict[str, Any]:
    """Valid ``args`` for the study's events (``i`` varies the values)."""
    ident = f"todo-{i}"
    samples: dict[str, dict[str, Any]] = {
        "v1.TodoCreated": {"t": 1_700_000_000_000 + i, "id": ident, "text": f"buy oat milk {i}"},
        "v1.TodoMoved": {"id": ident, "listId": "inbox", "position": i / 3},
        "v1.TodoTagged": {"id": ident, "tags": ["home", "errand", f"t{i % 7}"]},
        "v1.AttachmentAdded": {
            "id": f"a-{i}",
            "todoId": ident,
            "file": {"name": "receipt.pdf", "size": 1000 + i, "mime": "application/pdf"},
        },
    }
    return samples[name]

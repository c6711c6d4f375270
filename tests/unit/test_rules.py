"""The push rules as pure functions (gateway.rules): configuration in, a decision out.

Every case of the decision table is one row: the rules (as the TOML would give them, read by
the real config loader), who pushes (session kind, subject, claims), the store and the
batch's event names, and the expected outcome (allowed, or the refusal's code, event,
position and rule index). A second table checks that bad rules are refused with an error
naming the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import policy as auth
from gateway.configfile import build_config, load_config, make_config
from gateway.errors import ConfigError
from gateway.rules import (
    PUSH_FORBIDDEN,
    READ_ONLY,
    PushRule,
    PushRules,
    RulesConfig,
    compile_rules,
    decide,
    keep_claims,
    session_kind,
)


def rules_of(**section: Any) -> PushRules:
    """The compiled rules of a ``[rules]`` section given as TOML data."""
    return compile_rules(build_config({"rules": section}, {}).rules)


VIEWER_DENIED = {
    "push": [
        {"claims": {"role": ["viewer"]}, "action": "deny", "name": "viewers"},
    ]
}
TODOS_ONLY = {
    "push": [
        {"stores": ["team-*"], "events": ["v1.Todo*"], "action": "allow"},
        {"stores": ["team-*"], "action": "deny"},
    ]
}
ADMIN_EVENTS = {
    "push": [
        {"events": ["admin.*"], "claims": {"role": ["admin", "owner"]}, "action": "allow"},
        {"events": ["admin.*"], "action": "deny"},
    ]
}
BYPASS_LIMITED = {
    "push": [
        {"events": ["v1.UserDeleted"], "sessions": ["bypass"], "action": "deny"},
        {"events": ["v1.Audit*"], "action": "deny"},
    ]
}
SUBJECTS = {
    "push": [
        {"subjects": ["svc-*"], "events": ["billing.*"], "action": "allow"},
        {"events": ["billing.*"], "action": "deny"},
    ]
}
READ_SCOPE = {"read_only_claim": "scope", "read_only_values": ["read", "view"]}

# The outcome: None (allowed), or (code, event, position, rule index).
Outcome = tuple[str, str | None, int | None, int | None] | None

# (id, [rules], session kind, subject, claims, store, event names, outcome)
TABLE: list[
    tuple[str, dict[str, Any], str, str, dict[str, Any] | None, str, list[str], Outcome]
] = [
    ("no-rules", {}, "jwt", "alice", {"role": "viewer"}, "s", ["a", "b"], None),
    # Read-only credentials: the claim holds a value as a string, or in a list.
    (
        "read-only-string",
        READ_SCOPE,
        "jwt",
        "v",
        {"scope": "read"},
        "s",
        ["a"],
        (READ_ONLY, None, None, None),
    ),
    (
        "read-only-list",
        READ_SCOPE,
        "jwt",
        "v",
        {"scope": ["x", "view"]},
        "s",
        ["a"],
        (READ_ONLY, None, None, None),
    ),
    ("read-only-other-value", READ_SCOPE, "jwt", "e", {"scope": "write"}, "s", ["a"], None),
    (
        "read-only-list-without",
        READ_SCOPE,
        "jwt",
        "e",
        {"scope": ["write", "reader"]},
        "s",
        ["a"],
        None,
    ),
    ("read-only-no-claim", READ_SCOPE, "jwt", "e", {"role": "read"}, "s", ["a"], None),
    ("read-only-no-claims-at-all", READ_SCOPE, "bypass", "server", None, "s", ["a"], None),
    (
        "read-only-disabled",
        {"read_only_values": ["read"]},
        "jwt",
        "v",
        {"scope": "read"},
        "s",
        ["a"],
        None,
    ),
    # Claims: equality, membership of a list, absent claim, several claims all required.
    (
        "claim-equal",
        VIEWER_DENIED,
        "jwt",
        "v",
        {"role": "viewer"},
        "s",
        ["a", "b"],
        (PUSH_FORBIDDEN, "a", 0, 0),
    ),
    (
        "claim-in-list",
        VIEWER_DENIED,
        "jwt",
        "v",
        {"role": ["staff", "viewer"]},
        "s",
        ["a"],
        (PUSH_FORBIDDEN, "a", 0, 0),
    ),
    ("claim-other", VIEWER_DENIED, "jwt", "e", {"role": "editor"}, "s", ["a"], None),
    ("claim-absent", VIEWER_DENIED, "jwt", "e", {}, "s", ["a"], None),
    (
        "claim-object-never-matches",
        VIEWER_DENIED,
        "jwt",
        "e",
        {"role": {"viewer": True}},
        "s",
        ["a"],
        None,
    ),
    (
        "claims-all-required",
        {"push": [{"claims": {"role": ["viewer"], "tier": ["free"]}, "action": "deny"}]},
        "jwt",
        "v",
        {"role": "viewer", "tier": "pro"},
        "s",
        ["a"],
        None,
    ),
    (
        "claims-all-hold",
        {"push": [{"claims": {"role": ["viewer"], "tier": ["free"]}, "action": "deny"}]},
        "jwt",
        "v",
        {"role": "viewer", "tier": "free"},
        "s",
        ["a"],
        (PUSH_FORBIDDEN, "a", 0, 0),
    ),
    (
        "claim-boolean-and-number-as-text",
        {"push": [{"claims": {"admin": ["false"], "level": ["1", "2"]}, "action": "deny"}]},
        "jwt",
        "u",
        {"admin": False, "level": 2},
        "s",
        ["a"],
        (PUSH_FORBIDDEN, "a", 0, 0),
    ),
    # Store and event globs, first match wins, default allow.
    ("glob-allowed-event", TODOS_ONLY, "jwt", "a", None, "team-1", ["v1.TodoCreated"], None),
    (
        "glob-denied-event",
        TODOS_ONLY,
        "jwt",
        "a",
        None,
        "team-1",
        ["v1.UserDeleted"],
        (PUSH_FORBIDDEN, "v1.UserDeleted", 0, 1),
    ),
    (
        "mixed-batch-refused-whole",
        TODOS_ONLY,
        "jwt",
        "a",
        None,
        "team-1",
        ["v1.TodoCreated", "v1.TodoDone", "v1.UserDeleted", "v1.TodoCreated"],
        (PUSH_FORBIDDEN, "v1.UserDeleted", 2, 1),
    ),
    ("other-store-default-allow", TODOS_ONLY, "jwt", "a", None, "solo-1", ["v1.UserDeleted"], None),
    (
        "glob-is-case-sensitive",
        TODOS_ONLY,
        "jwt",
        "a",
        None,
        "team-1",
        ["v1.todoCreated"],
        (PUSH_FORBIDDEN, "v1.todoCreated", 0, 1),
    ),
    ("allow-before-deny", ADMIN_EVENTS, "jwt", "o", {"role": "owner"}, "s", ["admin.reset"], None),
    (
        "deny-without-claim",
        ADMIN_EVENTS,
        "jwt",
        "e",
        {"role": "editor"},
        "s",
        ["v1.A", "admin.reset"],
        (PUSH_FORBIDDEN, "admin.reset", 1, 1),
    ),
    (
        "deny-rule-needs-claims-dev-session",
        ADMIN_EVENTS,
        "dev",
        "dev",
        None,
        "s",
        ["admin.x"],
        (PUSH_FORBIDDEN, "admin.x", 0, 1),
    ),
    # Sessions: bypass is restricted only by rules naming it; dev and anonymous by default.
    (
        "bypass-named",
        BYPASS_LIMITED,
        "bypass",
        "server",
        None,
        "s",
        ["v1.UserDeleted"],
        (PUSH_FORBIDDEN, "v1.UserDeleted", 0, 0),
    ),
    (
        "bypass-not-by-default",
        BYPASS_LIMITED,
        "bypass",
        "server",
        None,
        "s",
        ["v1.AuditLogged"],
        None,
    ),
    ("jwt-not-in-bypass-rule", BYPASS_LIMITED, "jwt", "a", None, "s", ["v1.UserDeleted"], None),
    (
        "anonymous-default",
        BYPASS_LIMITED,
        "anonymous",
        "anonymous",
        None,
        "s",
        ["v1.AuditLogged"],
        (PUSH_FORBIDDEN, "v1.AuditLogged", 0, 1),
    ),
    (
        "dev-default",
        BYPASS_LIMITED,
        "dev",
        "dev",
        None,
        "s",
        ["v1.AuditLogged"],
        (PUSH_FORBIDDEN, "v1.AuditLogged", 0, 1),
    ),
    # Subjects.
    ("subject-allowed", SUBJECTS, "jwt", "svc-billing", None, "s", ["billing.charge"], None),
    (
        "subject-denied",
        SUBJECTS,
        "jwt",
        "alice",
        None,
        "s",
        ["billing.charge"],
        (PUSH_FORBIDDEN, "billing.charge", 0, 1),
    ),
    # Read-only wins over an allow rule.
    (
        "read-only-before-rules",
        {**READ_SCOPE, "push": [{"action": "allow"}]},
        "jwt",
        "v",
        {"scope": "read"},
        "s",
        ["a"],
        (READ_ONLY, None, None, None),
    ),
]


@pytest.mark.parametrize(
    ("section", "kind", "subject", "claims", "store", "names", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_decision_table(
    section: dict[str, Any],
    kind: str,
    subject: str,
    claims: dict[str, Any] | None,
    store: str,
    names: list[str],
    expected: Outcome,
) -> None:
    rules = rules_of(**section)
    refused = decide(rules, store_id=store, kind=kind, subject=subject, claims=claims, names=names)
    if expected is None:
        assert refused is None
        return
    assert refused is not None
    assert (refused.code, refused.event, refused.position, refused.rule) == expected
    assert refused.note.startswith(f"{refused.code}: ")
    if refused.code == PUSH_FORBIDDEN:
        assert f"'{refused.event}' (batch[{refused.position}])" in refused.message
        assert f"rules.push[{refused.rule}]" in refused.message
        assert refused.metric_reason == "forbidden"
    else:
        assert "read-only" in refused.message
        assert refused.metric_reason == "read_only"


def test_refusal_message_names_the_rule_label_and_bounds_the_event_name() -> None:
    refused = decide(
        rules_of(**VIEWER_DENIED),
        store_id="s",
        kind="jwt",
        subject="v",
        claims={"role": "viewer"},
        names=["x" * 5000],
    )
    assert refused is not None
    assert "rules.push[0] (viewers)" in refused.message
    assert len(refused.message) < 300
    assert refused.event is not None
    assert len(refused.event) < 200
    forged = decide(
        rules_of(**VIEWER_DENIED),
        store_id="s",
        kind="jwt",
        subject="v",
        claims={"role": "viewer"},
        names=["a\n<4>gateway.security: forged"],
    )
    assert forged is not None
    assert forged.event == "a\\n<4>gateway.security: forged"
    assert "\n" not in forged.message


def test_rules_given_as_objects_and_fractional_claims() -> None:
    """make_config may pass PushRule objects as they are; 2.0 is the integer 2, 2.5 nothing."""
    config = make_config(push=(PushRule(action="deny", claims={"level": ("2",)}),))
    rules = compile_rules(config.rules)
    for level, refused in ((2.0, True), (2.5, False), (None, False)):
        outcome = decide(
            rules, store_id="s", kind="jwt", subject="a", claims={"level": level}, names=["e"]
        )
        assert (outcome is not None) is refused, level


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (auth.R_JWT, "jwt"),
        (auth.R_GRACE, "jwt"),
        (auth.R_BYPASS, "bypass"),
        (auth.R_DEV, "dev"),
        (auth.R_ANONYMOUS, "anonymous"),
        (auth.R_EXPIRED_ANON, "anonymous"),
        (auth.R_INVALID_ANON, "anonymous"),
        (auth.R_BYPASS_ANON, "anonymous"),
        ("accepted", "anonymous"),
    ],
)
def test_session_kind_of_each_auth_reason(reason: str, kind: str) -> None:
    assert session_kind(reason) == kind


def test_sessions_keep_only_the_claims_the_rules_read() -> None:
    claims = {"sub": "a", "exp": 1, "role": "viewer", "scope": "read", "email": "a@example.com"}
    rules = rules_of(**READ_SCOPE, **ADMIN_EVENTS)
    assert rules.claim_names == {"scope", "role"}
    assert keep_claims(claims, rules) == {"role": "viewer", "scope": "read"}
    assert keep_claims(claims, rules_of(**TODOS_ONLY)) is None
    assert keep_claims({"sub": "a"}, rules) is None
    assert not compile_rules(RulesConfig()).active
    assert rules_of(**READ_SCOPE).active
    assert rules_of(**TODOS_ONLY).active


def test_documented_example_and_environment() -> None:
    """A rule given as JSON in GATEWAY_RULES_PUSH, a single claim value as a string."""
    config = build_config(
        None,
        {
            "GATEWAY_RULES_PUSH": '[{"events": ["v1.*"], "claims": {"role": "viewer"}, '
            '"action": "DENY"}]',
            "GATEWAY_RULES_READ_ONLY_CLAIM": "scope",
            "GATEWAY_RULES_READ_ONLY_VALUES": "read, view",
        },
    )
    (rule,) = config.rules.push
    assert rule.claims == {"role": ("viewer",)}
    assert rule.action == "deny"
    assert config.rules.read_only_values == ("read", "view")


# ---------------------------------------------------------------------------------------------
# Bad rules: errors naming the key

ERRORS: list[tuple[str, str]] = [
    ("[rules]\nread_only_claim = 1\n", "rules.read_only_claim: expected a string"),
    ("[rules]\nread_only_claim = 'scope'\nread_only_values = []\n", "rules.read_only_values"),
    ("[rules]\npush = 'deny'\n", "rules.push: expected an array of tables"),
    ("[rules]\npush = ['deny']\n", "rules.push[0]: expected a table"),
    ("[[rules.push]]\nevents = ['a']\n", "rules.push[0].action: required"),
    (
        "[[rules.push]]\naction = 'allow'\n[[rules.push]]\naction = 'permit'\n",
        "rules.push[1].action: one of allow, deny; got 'permit'",
    ),
    ("[[rules.push]]\naction = 'deny'\nevent = ['a']\n", "rules.push[0].event: unknown key"),
    ("[[rules.push]]\naction = 'deny'\nevents = 'a'\n", "rules.push[0].events: expected a list"),
    ("[[rules.push]]\naction = 'deny'\nevents = []\n", "rules.push[0].events: non-empty"),
    ("[[rules.push]]\naction = 'deny'\nstores = ['']\n", "rules.push[0].stores: non-empty"),
    ("[[rules.push]]\naction = 'deny'\nsubjects = []\n", "rules.push[0].subjects: non-empty"),
    (
        "[[rules.push]]\naction = 'deny'\nclaims = ['role']\n",
        "rules.push[0].claims: expected a table",
    ),
    ("[[rules.push]]\naction = 'deny'\nclaims = { role = [1] }\n", "rules.push[0].claims.role"),
    (
        "[[rules.push]]\naction = 'deny'\nclaims = { role = [] }\n",
        "rules.push[0].claims.role: at least",
    ),
    ("[[rules.push]]\naction = 'deny'\nsessions = ['bot']\n", "rules.push[0].sessions: 'bot'"),
    ("[[rules.push]]\naction = 'deny'\nsessions = []\n", "rules.push[0].sessions: at least one"),
    ('[[rules.push]]\naction = "deny"\nclaims = { "" = ["x"] }\n', "rules.push[0].claims: a claim"),
]


@pytest.mark.parametrize(("text", "needle"), ERRORS)
def test_bad_rules_are_refused_naming_the_key(tmp_path: Any, text: str, needle: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert needle in str(caught.value)


def test_env_push_rules_must_be_json() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_RULES_PUSH: expected a JSON array of tables"):
        build_config(None, {"GATEWAY_RULES_PUSH": "deny everything"})


def test_the_readme_example_loads_and_means_what_it_says() -> None:
    """The ``[rules]`` example of the README's "Push rules and validation" section, read by
    the real loader."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.partition("\n## Push rules and validation\n")[2]
    example = section.partition("```toml\n")[2].partition("```")[0]
    rules = compile_rules(build_config(tomllib.loads(example), {}).rules)

    def verdict(kind: str, claims: dict[str, Any] | None, store: str, name: str) -> str | None:
        refused = decide(rules, store_id=store, kind=kind, subject="s", claims=claims, names=[name])
        return None if refused is None else refused.note

    assert verdict("jwt", {"scope": ["read"]}, "solo", "v1.TodoCreated") is not None
    assert verdict("jwt", {"role": "owner"}, "team-1", "v1.UserDeleted") is None
    assert verdict("jwt", {"role": "staff"}, "team-1", "v1.TodoCreated") is None
    assert verdict("jwt", {"role": "staff"}, "team-1", "v1.UserDeleted") == (
        "PUSH_FORBIDDEN: event 'v1.UserDeleted' (batch[0]) is denied by rules.push[2] "
        "(team stores take todos only)"
    )
    assert verdict("bypass", None, "solo", "v1.UserDeleted") is not None
    assert verdict("bypass", None, "team-1", "v1.TodoCreated") is None
    assert verdict("jwt", None, "solo", "v1.UserDeleted") is None

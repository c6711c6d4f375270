"""The pure parts of the hooks (gateway.hooks): targets, settings and what an answer means."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.configfile import build_config
from gateway.errors import ConfigError
from gateway.hooks import (
    failure_reason,
    parse_target,
    pull_refused,
    push_events,
    push_refused,
    verdict,
)
from gateway.protocol import NewEvent
from gateway.rules import MAX_MESSAGE


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hooks:on_push", ("hooks", "on_push")),
        ("my_app.sync.hooks:check_push", ("my_app.sync.hooks", "check_push")),
        ("_private.mod:_f", ("_private.mod", "_f")),
    ],
)
def test_a_target_names_a_module_and_a_function(spec: str, expected: tuple[str, str]) -> None:
    assert parse_target("hooks.on_push", spec) == expected


@pytest.mark.parametrize(
    "spec", ["hooks", "hooks:", ":f", "a..b:f", "a.b:c.d", "a b:f", "a:f()", "1mod:f", "a:f:g"]
)
def test_a_malformed_target_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match=r'hooks\.on_push: expected "package\.module:function"'):
        parse_target("hooks.on_push", spec)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"on_pull": "nope"}, "hooks.on_pull: expected"),
        ({"timeout": 0}, "hooks.timeout: between 0 and 60 seconds"),
        ({"timeout": "2m"}, "hooks.timeout: between 0 and 60 seconds"),
        ({"on_push": 5}, "hooks.on_push: expected a string"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"hooks": section}, {})
    assert message in str(caught.value)


def test_settings_are_read() -> None:
    hooks = build_config({"hooks": {"on_push": "a.b:c", "timeout": "250ms"}}, {}).hooks
    assert (hooks.on_push, hooks.on_pull, hooks.timeout) == ("a.b:c", "", 0.25)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, None),
        ("no", "no"),
        ("", "refused"),
        ("two\nlines\x1b", "two lines\\x1b"),
        ("x" * 500, "x" * MAX_MESSAGE + "…"),
        (False, "the hook returned a bool, not None or a reason"),
        (0, "the hook returned a int, not None or a reason"),
        ({"allow": True}, "the hook returned a dict, not None or a reason"),
    ],
)
def test_what_an_answer_means(result: object, expected: str | None) -> None:
    assert verdict(result) == expected


def test_failure_reasons_name_what_happened_not_the_message() -> None:
    assert failure_reason("on_push", None, 2.0) == "the on_push hook did not answer within 2 s"
    error = KeyError("secret")
    assert failure_reason("on_pull", error, 2.0) == "the on_pull hook failed (KeyError)"


def test_refusals_and_events() -> None:
    assert push_refused("no").note == "HOOK_REFUSED: no"
    assert push_refused("no").metric_reason == "hook"
    assert pull_refused("no").note == "PULL_FORBIDDEN: no"
    batch = [NewEvent(3, 2, b"{}", "v1.A", {"x": 1}), NewEvent(4, 3, b"{}", "v1.B")]
    assert push_events(batch) == [
        {"name": "v1.A", "args": {"x": 1}, "seqNum": 3},
        {"name": "v1.B", "args": None, "seqNum": 4},
    ]


def test_the_readme_hooks_example_means_what_it_says() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.partition("\n### Hooks\n")[2]
    config = tomllib.loads(section.partition("```toml\n")[2].partition("```")[0])
    hooks = build_config(config, {}).hooks
    assert parse_target("hooks.on_push", hooks.on_push) == ("myapp.sync_hooks", "check_push")
    code = section.partition("```python\n")[2].partition("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    check_push, check_pull = namespace["check_push"], namespace["check_pull"]
    deleted = [{"name": "v1.ProjectDeleted", "args": {}, "seqNum": 1}]
    assert check_push("s", "bob", {"role": "owner"}, None, deleted) is None
    assert (
        check_push("s", "bob", {"role": "member"}, None, deleted) == "only owners delete projects"
    )
    assert asyncio.run(check_pull("org-acme", "bob", {"orgs": ["acme"]}, "app-1")) is None
    assert asyncio.run(check_pull("org-evil", "bob", {"orgs": ["acme"]}, "app-1")) is not None

"""Python hooks: the pure parts (configuration, targets, what a hook's answer means).

``[hooks] on_push = "package.module:function"`` is called for every non-empty push that the
push rules and event schemas let through, ``on_pull`` for every pull, before the engine sees
them (README "Push rules and validation")::

    def on_push(store_id, subject, claims, instance_id, events) -> str | None: ...
    def on_pull(store_id, subject, claims, instance_id) -> str | None: ...

``claims`` is the verified token's claims (``{}`` without a token), ``instance_id`` the
client's ``instanceId`` (``None`` when it sent none) and ``events`` a list of
``{"name", "args", "seqNum"}`` dicts. ``None`` allows; a string refuses with that reason;
anything else, an exception or the ``[hooks] timeout`` refuses too (fail closed). Resolving
and calling the functions (threads, timeouts, reload) is :mod:`gateway.hookcall`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import ConfigError
from gateway.protocol import NewEvent
from gateway.rules import HOOK_REFUSED, PULL_FORBIDDEN, Refused, bounded

_TARGET: Final = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)")


@dataclass(frozen=True, slots=True, kw_only=True)
class HooksConfig:
    # "package.module:function" called before each push / pull is served ("" : none).
    on_push: str = ""
    on_pull: str = ""
    # Seconds a hook call may take; past it the request is refused (fail closed).
    timeout: float = 2.0


def parse_target(key: str, spec: str) -> tuple[str, str]:
    """``"package.module:function"`` as (module, function).

    Raises:
        ConfigError: naming ``key`` when ``spec`` is not of that form.
    """
    match = _TARGET.fullmatch(spec)
    if match is None:
        raise ConfigError(f'{key}: expected "package.module:function", got {spec!r}')
    return match["module"], match["attr"]


def validate_hooks(config: HooksConfig) -> None:
    """Raise ConfigError naming the key when a setting cannot mean what it says."""
    for key in ("on_push", "on_pull"):
        spec: str = getattr(config, key)
        if spec:
            parse_target(f"hooks.{key}", spec)
    if not 0 < config.timeout <= 60:
        raise ConfigError("hooks.timeout: between 0 and 60 seconds")


def push_events(batch: Sequence[NewEvent]) -> list[dict[str, Any]]:
    """What ``on_push`` gets of each event: its name, args (None when absent) and seqNum."""
    return [{"name": e.name, "args": e.args, "seqNum": e.seq} for e in batch]


def verdict(result: object) -> str | None:
    """What a hook's return value means: None allows; anything else is the refusal's reason
    (a string as it is, bounded; another value names its type: a hook bug refuses)."""
    if result is None:
        return None
    if isinstance(result, str):
        return bounded(result) or "refused"
    return f"the hook returned a {type(result).__name__}, not None or a reason"


def failure_reason(hook: str, error: BaseException | None, timeout: float) -> str:
    """The client's part of a refusal by a hook that failed: what happened, not the
    exception's message (it may hold anything; the log has the traceback)."""
    if error is None:
        return f"the {hook} hook did not answer within {timeout:g} s"
    return f"the {hook} hook failed ({type(error).__name__})"


def push_refused(reason: str) -> Refused:
    return Refused(HOOK_REFUSED, reason)


def pull_refused(reason: str) -> Refused:
    return Refused(PULL_FORBIDDEN, reason)

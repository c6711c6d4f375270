"""The gate every push passes before the engine sees it: push rules, event schemas, the
``on_push`` hook, then rate limiting; and the gate of pulls (the ``on_pull`` hook).

Both transports call it for each non-empty batch (the WebSocket peer with its session, the
HTTP transport with the request's admission). A batch the rules refuse is answered with
``UnknownError`` (the only failure the protocol allows for it) whose ``note`` starts with a
stable code (``READ_ONLY``, ``PUSH_FORBIDDEN``, ``EVENT_INVALID``, ``EVENT_UNKNOWN``,
``HOOK_REFUSED``); it is logged on ``gateway.security`` and counted in
``gateway_pushes_rejected_total``; nothing of it reaches the store. A pull the hook refuses is
answered ``UnknownError`` too (note ``PULL_FORBIDDEN: …``), counted in
``gateway_pulls_rejected_total``. The decisions are :func:`gateway.rules.decide` and
:func:`gateway.validation.check`, pure, and the hooks (:mod:`gateway.hookcall`); the rules,
schemas and hooks in force are swapped whole on reload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.admission import Admission
from gateway.errors import UnknownFailure
from gateway.hookcall import Hook, HookRunner, Hooks
from gateway.hooks import pull_refused, push_events, push_refused
from gateway.metrics import EngineCounters
from gateway.protocol import PullRequest, PushRequest
from gateway.rules import PushRules, Refused, decide, session_kind
from gateway.validation import EventSchemas, check

security = logging.getLogger("gateway.security")

WaitPush = Callable[[Admission], Awaitable[None]]


class Admitted(Protocol):
    """What a push comes with: the admission of its session (read at each push, so a
    re-check after a reload is seen)."""

    @property
    def admission(self) -> Admission: ...


class PullGate(Protocol):
    """The pull side of the gate, as the WebSocket peers see it (:class:`PushGate`)."""

    @property
    def pulls_checked(self) -> bool: ...

    async def check_pull(self, session: Admitted, pull: PullRequest) -> UnknownFailure | None: ...


class PushGate:
    """Callable as ``gate(session, push)``: None when the push may go on, else its failure."""

    def __init__(self, wait: WaitPush, counters: EngineCounters) -> None:
        self.rules = PushRules()
        self.schemas = EventSchemas()
        self.hooks = Hooks()
        self._runner = HookRunner()
        self._wait = wait
        self._counters = counters

    async def __call__(self, session: Admitted, push: PushRequest) -> UnknownFailure | None:
        admission = session.admission
        rules = self.rules
        refused: Refused | None = None
        if rules.active:
            refused = decide(
                rules,
                store_id=push.store_id,
                kind=session_kind(admission.reason),
                subject=admission.subject,
                claims=admission.claims,
                names=[event.name for event in push.batch],
            )
        schemas = self.schemas
        if refused is None and schemas.active:
            refused = check(schemas, push.batch)
        hook = self.hooks.on_push
        if refused is None and hook is not None:
            args = (*_who(push.store_id, admission), push_events(push.batch))
            reason = await self._call(hook, push.store_id, args)
            if reason is not None:
                refused = push_refused(reason)
        if refused is not None:
            return self._refuse(refused, admission, push)
        # Rate limiting delays a push; it never drops or fails it.
        await self._wait(admission)
        return None

    @property
    def pulls_checked(self) -> bool:
        """Whether pulls pass the gate (an ``on_pull`` hook is configured)."""
        return self.hooks.on_pull is not None

    async def check_pull(self, session: Admitted, pull: PullRequest) -> UnknownFailure | None:
        """None when the pull may be served, else its failure (``PULL_FORBIDDEN``)."""
        hook = self.hooks.on_pull
        if hook is None:
            return None
        admission = session.admission
        reason = await self._call(hook, pull.store_id, _who(pull.store_id, admission))
        if reason is None:
            return None
        refused = pull_refused(reason)
        self._counters.pulls_rejected[refused.metric_reason] += 1
        security.warning(
            "pull refused code=%s store=%s subject=%s instance=%s reason=%s detail=%s",
            refused.code,
            pull.store_id,
            admission.subject,
            admission.instance_id,
            admission.reason,
            refused.message,
        )
        return UnknownFailure(refused.message, refused.note)

    async def _call(self, hook: Hook, store_id: str, args: tuple[object, ...]) -> str | None:
        return await self._runner.call(hook, store_id, args)

    def _refuse(self, refused: Refused, admission: Admission, push: PushRequest) -> UnknownFailure:
        self._counters.pushes_rejected[refused.metric_reason] += 1
        security.warning(
            "push refused code=%s store=%s subject=%s instance=%s reason=%s event=%s "
            "rule=%s events=%d detail=%s",
            refused.code,
            push.store_id,
            admission.subject,
            admission.instance_id,
            admission.reason,
            refused.event,
            refused.rule,
            len(push.batch),
            refused.message,
        )
        return UnknownFailure(refused.message, refused.note)


def _who(store_id: str, admission: Admission) -> tuple[object, ...]:
    """A hook's first arguments: store_id, subject, claims, instance_id."""
    return (store_id, admission.subject, dict(admission.claims or {}), admission.instance_id)

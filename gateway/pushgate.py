"""The gate every push passes before the engine sees it: push rules, event schemas, then
rate limiting.

Both transports call it for each non-empty batch (the WebSocket peer with its session, the
HTTP transport with the request's admission). A batch the rules refuse is answered with
``UnknownError`` (the only failure the protocol allows for it) whose ``note`` starts with a
stable code (``READ_ONLY``, ``PUSH_FORBIDDEN``, ``EVENT_INVALID``, ``EVENT_UNKNOWN``); it is
logged on ``gateway.security`` and counted in ``gateway_pushes_rejected_total``; nothing of it
reaches the store. The decisions are :func:`gateway.rules.decide` and
:func:`gateway.validation.check`, pure; the rules and schemas in force are swapped whole on
reload.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.admission import Admission
from gateway.errors import UnknownFailure
from gateway.metrics import EngineCounters
from gateway.protocol import PushRequest
from gateway.rules import PushRules, Refused, decide, session_kind
from gateway.validation import EventSchemas, check

security = logging.getLogger("gateway.security")

WaitPush = Callable[[Admission], Awaitable[None]]


class Admitted(Protocol):
    """What a push comes with: the admission of its session (read at each push, so a
    re-check after a reload is seen)."""

    @property
    def admission(self) -> Admission: ...


class PushGate:
    """Callable as ``gate(session, push)``: None when the push may go on, else its failure."""

    def __init__(self, wait: WaitPush, counters: EngineCounters) -> None:
        self.rules = PushRules()
        self.schemas = EventSchemas()
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
        if refused is not None:
            return self._refuse(refused, admission, push)
        # Rate limiting delays a push; it never drops or fails it.
        await self._wait(admission)
        return None

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

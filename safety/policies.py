"""Filter policies: what the proxy's pre-filter and post-filter stages ask before and after the upstream call.

A policy looks at a request (pre) or a response (post) and answers with a `FilterDecision`:
- ALLOW, optionally with a replacement body (a redaction, say);
- BLOCK, which the proxy answers with 400 `content_policy_violation` (pre) or withholds the answer (post);
- HOLD, which parks the request or response until a reviewer releases or rejects it
  (safety.services.ahold_wait / hold_resolve), or until the hold times out (then it is blocked).

`PassThroughPolicy` is the default: it allows everything unchanged. Policies must be cheap and
must not touch the database on the hot path (cache what they need, as the proxy does).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


class FilterAction(enum.StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class FilterContext:
    request_id: str
    organisation_id: int
    api_key_id: int | None
    team_id: int | None
    endpoint: str
    model: str
    prompt_version_id: int | None = None


@dataclass(frozen=True, slots=True)
class FilterDecision:
    action: FilterAction
    policy: str
    # A replacement for the request body (pre) or response body (post); None keeps the original.
    body: dict | None = None
    reason: str = ""
    hold_id: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.action == FilterAction.ALLOW


class Policy(Protocol):
    name: str

    async def pre(self, *, context: FilterContext, body: dict) -> FilterDecision: ...

    async def post(self, *, context: FilterContext, response: dict | None, streamed: bool) -> FilterDecision: ...


class PassThroughPolicy:
    """Allows every request and response unchanged (the policy of an organisation that configured none)."""

    name = "pass_through"

    async def pre(self, *, context: FilterContext, body: dict) -> FilterDecision:
        return _ALLOW

    async def post(self, *, context: FilterContext, response: dict | None, streamed: bool) -> FilterDecision:
        return _ALLOW


_ALLOW = FilterDecision(FilterAction.ALLOW, PassThroughPolicy.name)


def hold_decision(*, policy: str, reason: str) -> FilterDecision:
    """A HOLD with a fresh id a reviewer can release."""
    return FilterDecision(FilterAction.HOLD, policy, reason=reason, hold_id=uuid.uuid4().hex)

"""The proxy's filter stages and the hold/release mechanism.

`apre_filter` / `apost_filter` run the organisation's policy (PassThroughPolicy unless one is
set). A HOLD decision parks the request: `ahold_wait` blocks on a Redis list until a reviewer
calls `hold_resolve` (from any process) or the hold times out, which counts as a block.
"""

from __future__ import annotations

import logging
import time

from core.redis import aredis_client, bounded, redis_client
from safety.policies import FilterAction, FilterContext, FilterDecision, PassThroughPolicy, Policy

logger = logging.getLogger(__name__)

DEFAULT_POLICY: Policy = PassThroughPolicy()
_policies: dict[int, Policy] = {}
HOLD_KEY = "stw:hold:{}"
HOLD_TTL_SECONDS = 3600


def policy_for(*, organisation_id: int) -> Policy:
    return _policies.get(organisation_id, DEFAULT_POLICY)


def policy_install(*, organisation_id: int, policy: Policy | None) -> None:
    """Use `policy` for the organisation in this process (None restores the default).

    Process-local until the moderation issue stores policies; tests and embedders use it.
    """
    if policy is None:
        _policies.pop(organisation_id, None)
    else:
        _policies[organisation_id] = policy


async def apre_filter(*, context: FilterContext, body: dict) -> FilterDecision:
    """Run the pre-filter stage on a request body. Side effects: none for the default policy."""
    return await policy_for(organisation_id=context.organisation_id).pre(context=context, body=body)


async def apost_filter(*, context: FilterContext, response: dict | None, streamed: bool) -> FilterDecision:
    """Run the post-filter stage. For streams `response` is None (chunks already went out): only recorded."""
    return await policy_for(organisation_id=context.organisation_id).post(
        context=context, response=response, streamed=streamed
    )


async def ahold_wait(*, decision: FilterDecision, timeout: float) -> FilterDecision:
    """Park until the hold is resolved; a timeout or an unreachable Redis blocks (fail closed)."""
    if decision.action != FilterAction.HOLD:
        return decision
    popped = None
    deadline = time.monotonic() + timeout
    try:
        # Short BLPOPs, each bounded a little past its own wait, so a stalled Redis is noticed.
        while popped is None and time.monotonic() < deadline:
            wait = max(1, min(4, int(deadline - time.monotonic())))
            popped = await bounded(aredis_client().blpop([HOLD_KEY.format(decision.hold_id)], timeout=wait), wait + 2)
    except Exception:
        logger.exception("hold %s could not be awaited", decision.hold_id)
        popped = None
    if popped and popped[1] == b"allow":
        return FilterDecision(FilterAction.ALLOW, decision.policy, hold_id=decision.hold_id, reason="released")
    reason = "rejected by a reviewer" if popped else "hold timed out"
    return FilterDecision(FilterAction.BLOCK, decision.policy, hold_id=decision.hold_id, reason=reason)


def hold_resolve(*, hold_id: str, allow: bool) -> None:
    """Release (allow=True) or reject a held request, from any process. Idempotent enough: a second
    resolution of a hold nobody waits for any more expires with its key."""
    key = HOLD_KEY.format(hold_id)
    pipe = redis_client().pipeline()
    pipe.rpush(key, b"allow" if allow else b"block")
    pipe.expire(key, HOLD_TTL_SECONDS)
    pipe.execute()

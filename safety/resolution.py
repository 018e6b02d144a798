"""Which policy applies to a request: the most specific attachment wins (api_key > prompt > route > organisation).

Per organisation, every attachment of an active policy is loaded at once and compiled (one compile
per policy, shared by all its attachments) into an `_Attached` snapshot held in a
`LocalCache("safety_policies")`: a warm lookup is a few dict reads, no database. Any change to a
policy or an attachment calls `core.invalidation.invalidate(NAMESPACE)` (safety.policy_services),
which every process sees within the poll bound. An organisation with no attachment caches an
empty snapshot, so its requests pay one dict read.

A policy that no longer compiles (a filter removed, settings broken since it was stored) is not
dropped silently: it resolves to a policy whose only filter fails, so its requests fail closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.db import aread
from core.invalidation import LocalCache
from safety.filters.base import Filter, FilterConfigError
from safety.policies import CompiledPolicy, FilterEntry, policy_compile

logger = logging.getLogger(__name__)

NAMESPACE = "safety_policies"
_cache = LocalCache(NAMESPACE, max_entries=10_000)


@dataclass(frozen=True, slots=True)
class _Attached:
    organisation: CompiledPolicy | None
    by_key: dict[int, CompiledPolicy]
    by_prompt: dict[int, CompiledPolicy]
    by_route: dict[int, CompiledPolicy]


_NONE = _Attached(None, {}, {}, {})


class _Uncompilable(Filter):
    """Stands in for a stored policy that does not compile: every check fails, so requests fail closed."""

    name = "policy"

    def check(self, text, context):
        raise FilterConfigError(self.settings["error"])


def _broken(policy, error: str) -> CompiledPolicy:
    from safety.filters.base import Direction

    entry = FilterEntry(
        name="policy",
        filter=_Uncompilable({"error": f"policy {policy.name!r} does not compile: {error}"}),
        directions=frozenset(Direction),
        timeout_s=1.0,
        fail_open=False,
    )
    return CompiledPolicy(
        id=policy.pk,
        name=policy.name,
        entries=(entry,),
        actions={},
        deadline_s=1.0,
        stream_mode="buffer",
        stream_mode_reason="the policy does not compile",
        window_chars=400,
        hold_wait="respond",
        hold_wait_seconds=0,
        hold_placeholder="",
        refusal_text="",
        sla_seconds=3600,
        priority=2,
        required_approvals=1,
        store_redacted_only=True,
        inputs=True,
        outputs=True,
    )


def _load(organisation_id: int) -> _Attached:
    from safety.models import PolicyAttachment

    rows = list(
        PolicyAttachment.objects.filter(organisation_id=organisation_id, policy__is_active=True).select_related(
            "policy"
        )
    )
    if not rows:
        return _NONE
    compiled: dict[int, CompiledPolicy] = {}
    found = _Attached(None, {}, {}, {})
    organisation = None
    for row in rows:
        policy = compiled.get(row.policy_id)
        if policy is None:
            try:
                policy = policy_compile(row.policy)
            except (FilterConfigError, ValueError) as exc:
                logger.error("safety policy %s does not compile: %s", row.policy_id, exc)
                policy = _broken(row.policy, str(exc))
            compiled[row.policy_id] = policy
        if row.scope == "organisation":
            organisation = policy
        elif row.scope == "api_key":
            found.by_key[row.target_id] = policy
        elif row.scope == "prompt":
            found.by_prompt[row.target_id] = policy
        elif row.scope == "route":
            found.by_route[row.target_id] = policy
    return _Attached(organisation, found.by_key, found.by_prompt, found.by_route)


async def apolicy_for(
    *, organisation_id: int, api_key_id: int | None, prompt_id: int | None, route_id: int | None
) -> CompiledPolicy | None:
    """The policy of a request, None when none is attached; no database access while warm."""
    attached = _cache.get(organisation_id)
    if attached is None:
        epoch = _cache.epoch()
        attached = await aread(_load, organisation_id)
        _cache.set(organisation_id, attached, epoch=epoch)
    if attached is _NONE:
        return None
    if attached.by_key and api_key_id is not None and api_key_id in attached.by_key:
        return attached.by_key[api_key_id]
    if attached.by_prompt and prompt_id is not None and prompt_id in attached.by_prompt:
        return attached.by_prompt[prompt_id]
    if attached.by_route and route_id is not None and route_id in attached.by_route:
        return attached.by_route[route_id]
    return attached.organisation

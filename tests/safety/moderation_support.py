"""Building blocks of the moderation tests: a policy and held items made through `hold_create`."""

from __future__ import annotations

from safety.models import SafetyPolicy
from safety.moderation import hold_create

HELD_TEXT = "Call Jane on +44 20 7946 0958 or mail jane.doe@example.com about the merger."


def policy_make(organisation, name: str = "pii-hold", **fields) -> SafetyPolicy:
    fields.setdefault("refusal_text", "A reviewer withheld this answer.")
    policy, _ = SafetyPolicy.objects.get_or_create(organisation=organisation, name=name, defaults=fields)
    return policy


def held(organisation, policy=None, *, text: str = HELD_TEXT, api_key_id=None, request_id="req_test", **kw):
    policy = policy or policy_make(organisation)
    email_at = text.find("jane.doe@example.com")
    findings = kw.pop("findings", None)
    if findings is None:
        findings = [{"filter": "pii", "kind": "email", "start": email_at, "end": email_at + 20, "score": 1.0}]
    return hold_create(
        organisation_id=organisation.pk,
        policy_id=policy.pk,
        policy_name=policy.name,
        request_id=request_id,
        api_key_id=api_key_id,
        prompt_version_id=None,
        model="dev-small",
        endpoint="chat",
        direction="output",
        stream=False,
        held_text=text,
        context_messages=[{"role": "user", "content": "Who do I call?"}],
        response=None,
        findings=findings,
        priority=kw.pop("priority", policy.priority),
        sla_seconds=kw.pop("sla_seconds", policy.sla_seconds),
        required_approvals=kw.pop("required_approvals", policy.required_approvals),
    )

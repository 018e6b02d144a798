"""Stored policies: every validation rule, the audit trail (fail-open called out), cache invalidation,
attachments confined to the policy's organisation, the organisation's redacted-logging switch and
per-filter false-positive rates."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.actions import Action
from audit.models import AuditEvent
from core.errors import Conflict, NotFound, ValidationFailed
from core.invalidation import GENERATIONS_KEY
from core.redis import redis_client
from safety.models import FindingReview, ModerationItem, PolicyAttachment, SafetyPolicy
from safety.policy_selectors import attachments_list, policy_false_positive_rates
from safety.policy_services import (
    PolicyInvalid,
    policy_attach,
    policy_create,
    policy_delete,
    policy_detach,
    policy_update,
    policy_validate,
    safety_settings_update,
)
from tests.factories import ApiKeyFactory, PromptFactory, RouteFactory, SafetyPolicyFactory
from tests.helpers import ACTOR

pytestmark = pytest.mark.django_db

PII = {"filter": "pii", "settings": {}, "directions": ["input", "output"], "timeout_ms": 50, "on_error": "block"}


def _errors(fields: dict, **kwargs) -> dict[str, list[str]]:
    with pytest.raises(PolicyInvalid) as caught:
        policy_validate(fields, **kwargs)
    return caught.value.errors


# --- validation, one rule at a time ------------------------------------------------------------------


def test_a_valid_policy_is_normalised_with_defaults():
    cleaned = policy_validate({"name": "default", "filters": [{"filter": "pii"}], "actions": {"email": "redact"}})
    assert cleaned["filters"] == [
        {"filter": "pii", "settings": {}, "directions": ["input", "output"], "timeout_ms": 2000, "on_error": "block"}
    ]
    assert cleaned["stream_mode"] == "buffer" and cleaned["required_approvals"] == 1


def test_a_bad_filter_setting_is_reported_with_its_entry_index_and_setting():
    errors = _errors({"name": "p", "filters": [PII, {"filter": "pii", "settings": {"kinds": ["martian"]}}]})
    assert list(errors) == ["filters[1].settings.kinds"]
    assert "filters[1] (pii), setting 'kinds'" in errors["filters[1].settings.kinds"][0]


def test_an_unknown_filter_and_unknown_entry_keys_are_refused():
    errors = _errors({"name": "p", "filters": [{"filter": "telepathy"}, {"filter": "pii", "colour": "red"}]})
    assert "unknown filter 'telepathy'" in errors["filters[0].filter"][0]
    assert "unknown key 'colour'" in errors["filters[1]"][0]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"filter": "pii", "timeout_ms": 0}, "filters[0].timeout_ms"),
        ({"filter": "pii", "timeout_ms": 2001}, "filters[0].timeout_ms"),  # above the policy's deadline
        ({"filter": "pii", "timeout_ms": True}, "filters[0].timeout_ms"),
        ({"filter": "pii", "on_error": "shrug"}, "filters[0].on_error"),
        ({"filter": "pii", "directions": []}, "filters[0].directions"),
        ({"filter": "pii", "directions": ["sideways"]}, "filters[0].directions"),
        ({"filter": "citations", "directions": ["input"]}, "filters[0].directions"),  # checks output only
        ({"filter": "pii", "settings": ["not", "an", "object"]}, "filters[0].settings"),
        ("pii", "filters[0]"),
    ],
)
def test_filter_entry_rules(entry, field):
    assert field in _errors({"name": "p", "filters": [entry], "deadline_ms": 2000})


def test_actions_name_kinds_some_filter_reports_and_known_actions():
    errors = _errors({"name": "p", "filters": [PII], "actions": {"email": "shred", "prompt_injection": "block"}})
    assert "must be one of allow, flag, redact, hold, block" in errors["actions.email"][0]
    assert "no filter of this policy reports the kind 'prompt_injection'" in errors["actions.prompt_injection"][0]
    # the wildcard, and a member of a kind family ("topic:<list>")
    policy_validate({"name": "p", "filters": [PII], "actions": {"*": "flag"}})
    blocklist = {"filter": "blocklist", "settings": {"lists": {"weapons": ["gun"]}}}
    policy_validate({"name": "p", "filters": [blocklist], "actions": {"topic:weapons": "block"}})


def test_observe_mode_only_when_every_action_records():
    fields = {"name": "p", "filters": [PII], "stream_mode": "observe"}
    assert (
        "'email' maps to redact" in _errors({**fields, "actions": {"email": "redact", "*": "flag"}})["stream_mode"][0]
    )
    # kinds left to the filter's own proposal might block: refused until named or covered by "*"
    assert "take their filter's own action" in _errors({**fields, "actions": {"email": "flag"}})["stream_mode"][0]
    assert policy_validate({**fields, "actions": {"email": "flag", "*": "allow"}})["stream_mode"] == "observe"


@pytest.mark.parametrize("mode", ["window", "observe"])
def test_a_hold_action_needs_buffer_mode(mode):
    errors = _errors({"name": "p", "filters": [PII], "actions": {"email": "hold"}, "stream_mode": mode})
    assert "a hold action needs stream_mode 'buffer'" in errors["stream_mode"][0]
    policy_validate({"name": "p", "filters": [PII], "actions": {"email": "hold"}, "stream_mode": "buffer"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deadline_ms", 5),
        ("deadline_ms", 120_000),
        ("required_approvals", 3),
        ("required_approvals", 0),
        ("hold_wait_seconds", 301),
        ("hold_wait_seconds", 0),
        ("hold_wait", "forever"),
        ("stream_mode", "trickle"),
        ("priority", 5),
        ("sla_seconds", 1),
        ("window_chars", 10),
        ("hold_placeholder", "  "),
        ("refusal_text", ""),
        ("store_redacted_only", "yes"),
        ("filters", {"filter": "pii"}),
        ("filters", [{"filter": "pii", "settings": {"kinds": ["email\x00"]}}]),
        ("actions", ["email"]),
    ],
)
def test_field_bounds(field, value):
    assert field in _errors({"name": "p", field: value})


def test_names_are_slugs_and_unique_per_organisation(organisation, other_organisation):
    assert "name" in _errors({"name": "has spaces"})
    SafetyPolicyFactory(organisation=organisation, name="default")
    with pytest.raises(Conflict):
        SafetyPolicyFactory(organisation=organisation, name="default")
    SafetyPolicyFactory(organisation=other_organisation, name="default")  # another tenant's namespace


def test_every_error_is_reported_at_once():
    errors = _errors({"name": "p", "deadline_ms": 1, "priority": 9, "filters": [{"filter": "nope"}]})
    assert {"deadline_ms", "priority", "filters[0].filter"} <= set(errors)


# --- audit and invalidation --------------------------------------------------------------------------


def _generation() -> int:
    return int(redis_client().hget(GENERATIONS_KEY, "safety_policies") or 0)


def test_create_update_delete_are_audited_and_invalidate_on_commit(organisation, django_capture_on_commit_callbacks):
    start = _generation()
    with django_capture_on_commit_callbacks(execute=True):
        policy = policy_create(organisation=organisation, actor=ACTOR, name="p", filters=[PII])
    assert _generation() == start + 1
    with django_capture_on_commit_callbacks(execute=True):
        policy_update(policy=policy, actor=ACTOR, priority=1)
    assert _generation() == start + 2
    with django_capture_on_commit_callbacks(execute=True):
        policy_delete(policy=policy, actor=ACTOR)
    assert _generation() == start + 3
    actions = list(
        AuditEvent.objects.filter(organisation=organisation, target_type="safety_policy")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == [Action.POLICY_CREATED, Action.POLICY_CHANGED, Action.POLICY_DELETED]
    changed = AuditEvent.objects.get(organisation=organisation, action=Action.POLICY_CHANGED)
    assert changed.before["priority"] == 2 and changed.after["priority"] == 1


def test_an_unchanged_update_writes_nothing(organisation):
    policy = SafetyPolicyFactory(organisation=organisation, name="p")
    policy_update(policy=policy, actor=ACTOR, priority=policy.priority)
    assert not AuditEvent.objects.filter(organisation=organisation, action=Action.POLICY_CHANGED).exists()


def test_fail_open_is_called_out_in_the_audit_record(organisation):
    policy = SafetyPolicyFactory(organisation=organisation, name="p", filters=[PII])
    created = AuditEvent.objects.get(organisation=organisation, action=Action.POLICY_CREATED)
    assert created.after["fail_open"] == []
    lenient = {**PII, "on_error": "allow"}
    policy_update(policy=policy, actor=ACTOR, filters=[PII, lenient])
    changed = AuditEvent.objects.get(organisation=organisation, action=Action.POLICY_CHANGED)
    assert changed.after["fail_open"] == [{"index": 1, "filter": "pii"}]
    assert changed.after["fail_open_changed"] is True


def test_an_invalid_update_changes_nothing(organisation):
    policy = SafetyPolicyFactory(organisation=organisation, name="p", filters=[PII])
    with pytest.raises(PolicyInvalid):
        policy_update(policy=policy, actor=ACTOR, actions={"email": "hold"}, stream_mode="window")
    policy.refresh_from_db()
    assert policy.actions == {} and policy.stream_mode == "buffer"


# --- attachments -------------------------------------------------------------------------------------


def test_attach_to_each_scope_and_replace(organisation, django_capture_on_commit_callbacks):
    policy = SafetyPolicyFactory(organisation=organisation, name="p")
    other = SafetyPolicyFactory(organisation=organisation, name="q")
    key = ApiKeyFactory(organisation=organisation, name="svc").api_key
    prompt = PromptFactory(organisation=organisation, name="greeting")
    route = RouteFactory(organisation=organisation, name="dev-small")
    start = _generation()
    with django_capture_on_commit_callbacks(execute=True):
        policy_attach(organisation=organisation, policy=policy, scope="organisation", target_id=0, actor=ACTOR)
        policy_attach(organisation=organisation, policy=policy, scope="api_key", target_id=key.id, actor=ACTOR)
        policy_attach(organisation=organisation, policy=policy, scope="prompt", target_id=prompt.id, actor=ACTOR)
        policy_attach(organisation=organisation, policy=policy, scope="route", target_id=route.id, actor=ACTOR)
    assert _generation() > start
    names = [(a.scope, a.target_name) for a in attachments_list(organisation=organisation)]
    assert names == [
        ("api_key", f"svc ({key.prefix}…)"),
        ("prompt", "greeting"),
        ("route", "dev-small"),
        ("organisation", "Acme"),
    ]
    # a target has one policy: attaching another replaces it (audited with the one it replaced)
    policy_attach(organisation=organisation, policy=other, scope="prompt", target_id=prompt.id, actor=ACTOR)
    assert PolicyAttachment.objects.get(scope="prompt", target_id=prompt.id).policy == other
    replaced = AuditEvent.objects.filter(organisation=organisation, action=Action.POLICY_ATTACHED).latest("seq")
    assert replaced.before == {"policy_id": policy.id, "policy": "p"}
    assert replaced.after["target"] == "greeting"


def test_attachments_never_cross_organisations(organisation, other_organisation):
    policy = SafetyPolicyFactory(organisation=organisation, name="p")
    foreign_policy = SafetyPolicyFactory(organisation=other_organisation, name="p")
    foreign = {
        "api_key": ApiKeyFactory(organisation=other_organisation).api_key.id,
        "prompt": PromptFactory(organisation=other_organisation, name="theirs").id,
        "route": RouteFactory(organisation=other_organisation, name="theirs").id,
    }
    for scope, target_id in foreign.items():
        with pytest.raises(ValidationFailed, match="in this organisation"):
            policy_attach(organisation=organisation, policy=policy, scope=scope, target_id=target_id, actor=ACTOR)
    with pytest.raises(NotFound):
        policy_attach(organisation=organisation, policy=foreign_policy, scope="organisation", target_id=0, actor=ACTOR)
    assert not PolicyAttachment.objects.exists()


def test_attach_refuses_revoked_keys_bad_scopes_and_targets(organisation):
    from accounts.services import api_key_revoke

    policy = SafetyPolicyFactory(organisation=organisation, name="p")
    key = ApiKeyFactory(organisation=organisation).api_key
    api_key_revoke(api_key=key, actor=ACTOR)
    for scope, target_id in (("api_key", 10**12), ("galaxy", 1), ("organisation", 5), ("prompt", "greeting")):
        with pytest.raises(ValidationFailed):
            policy_attach(organisation=organisation, policy=policy, scope=scope, target_id=target_id, actor=ACTOR)


def test_detach_is_audited_and_deleting_a_policy_removes_its_attachments(organisation):
    policy = SafetyPolicyFactory(organisation=organisation, name="p")
    attachment = policy_attach(organisation=organisation, policy=policy, scope="organisation", target_id=0, actor=ACTOR)
    policy_detach(attachment=attachment, actor=ACTOR)
    assert AuditEvent.objects.filter(organisation=organisation, action=Action.POLICY_DETACHED).exists()
    policy_attach(organisation=organisation, policy=policy, scope="organisation", target_id=0, actor=ACTOR)
    policy_delete(policy=policy, actor=ACTOR)
    assert not PolicyAttachment.objects.exists()
    deleted = AuditEvent.objects.get(organisation=organisation, action=Action.POLICY_DELETED)
    assert deleted.before["attachments"] == [{"scope": "organisation", "target_id": 0}]


# --- redacted logging switch -------------------------------------------------------------------------


def test_required_redacted_logging_turns_every_policy_on_and_keeps_it_on(organisation):
    lax = SafetyPolicyFactory(organisation=organisation, name="lax", store_redacted_only=False)
    safety_settings_update(organisation=organisation, actor=ACTOR, require_redacted_logging=True)
    lax.refresh_from_db()
    assert lax.store_redacted_only is True
    event = AuditEvent.objects.get(organisation=organisation, action=Action.SAFETY_SETTINGS_CHANGED)
    assert event.after["policies_now_redacted"] == ["lax"]
    with pytest.raises(PolicyInvalid) as caught:
        policy_update(policy=lax, actor=ACTOR, store_redacted_only=False)
    assert "requires redacted logging" in caught.value.errors["store_redacted_only"][0]
    with pytest.raises(PolicyInvalid):
        policy_create(organisation=organisation, actor=ACTOR, name="new", store_redacted_only=False)


# --- false-positive rates ----------------------------------------------------------------------------


def _held(organisation, policy, n: int) -> ModerationItem:
    return ModerationItem.objects.create(
        organisation=organisation, policy=policy, policy_name=policy.name, public_id=f"modr_{policy.id}_{n}",
        request_id=f"req-{n}", direction="output", held_text="secret text", deadline=timezone.now(),
        findings=[{"filter": "pii", "kind": "email"}, {"filter": "injection", "kind": "prompt_injection"}],
    )  # fmt: skip


def test_false_positive_rates_per_filter_of_this_policy_only(organisation, other_organisation):
    injection = {"filter": "injection"}
    policy = SafetyPolicyFactory(organisation=organisation, name="p", filters=[PII, injection])
    other = SafetyPolicyFactory(organisation=organisation, name="other", filters=[PII])
    for n, (fp_pii, fp_injection) in enumerate([(True, False), (False, False), (True, True), (False, False)]):
        item = _held(organisation, policy, n)
        FindingReview.objects.create(item=item, finding_index=0, filter_name="pii", kind="email", false_positive=fp_pii)
        FindingReview.objects.create(
            item=item, finding_index=1, filter_name="injection", kind="prompt_injection", false_positive=fp_injection
        )
    item = _held(organisation, other, 99)
    FindingReview.objects.create(item=item, finding_index=0, filter_name="pii", kind="email", false_positive=True)
    assert policy_false_positive_rates(policy=policy) == [
        {"filter": "pii", "reviews": 4, "false_positives": 2, "rate": 0.5},
        {"filter": "injection", "reviews": 4, "false_positives": 1, "rate": 0.25},
    ]
    fresh = SafetyPolicyFactory(organisation=organisation, name="fresh", filters=[PII])
    assert policy_false_positive_rates(policy=fresh) == [
        {"filter": "pii", "reviews": 0, "false_positives": 0, "rate": None}
    ]
    assert SafetyPolicy.objects.count() == 3

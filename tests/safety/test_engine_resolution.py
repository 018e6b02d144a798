"""Which stored policy applies: the most specific attachment, cached, and dropped on any change."""

from __future__ import annotations

import asyncio

import pytest

from core.invalidation import _registry
from safety import resolution
from safety.models import PolicyAttachment
from safety.policy_services import policy_attach, policy_create, policy_update
from tests.helpers import ACTOR
from tests.safety.filterkit import policy_store, words

pytestmark = pytest.mark.django_db(transaction=True)


def resolve(organisation, key=None, prompt=None, route=None):
    return asyncio.run(
        resolution.apolicy_for(organisation_id=organisation.id, api_key_id=key, prompt_id=prompt, route_id=route)
    )


def test_no_policy_attached_resolves_to_none(organisation):
    assert resolve(organisation, key=1, prompt=2, route=3) is None


def test_the_most_specific_attachment_wins(organisation):
    policy_store(organisation, name="org", filters=[words({"a": "a"})])
    policy_store(organisation, name="route", scope="route", target_id=30, filters=[words({"b": "b"})])
    policy_store(organisation, name="prompt", scope="prompt", target_id=20, filters=[words({"c": "c"})])
    policy_store(organisation, name="key", scope="api_key", target_id=10, filters=[words({"d": "d"})])
    assert resolve(organisation, key=10, prompt=20, route=30).name == "key"
    assert resolve(organisation, key=11, prompt=20, route=30).name == "prompt"
    assert resolve(organisation, key=11, prompt=21, route=30).name == "route"
    assert resolve(organisation, key=11, prompt=None, route=31).name == "org"


def test_a_warm_lookup_reads_no_database_and_a_policy_is_compiled_once(organisation, monkeypatch):
    policy_store(organisation, name="org", filters=[words({"a": "a"})])
    policy_store(organisation, name="route", scope="route", target_id=5, filters=[words({"a": "a"})])
    first = resolve(organisation, route=5)
    loads = []
    monkeypatch.setattr(resolution, "_load", lambda org: loads.append(org))
    assert resolve(organisation, route=5) is first
    assert resolve(organisation, route=6).name == "org"
    assert loads == []


def test_a_change_is_seen_after_the_invalidation_poll(organisation, api_key_factory):
    key, _ = api_key_factory()
    policy = policy_create(
        organisation=organisation, actor=ACTOR, name="pii", filters=[{"filter": "pii"}], actions={"*": "flag"}
    )
    policy_attach(organisation=organisation, policy=policy, scope="organisation", target_id=None, actor=ACTOR)
    assert resolve(organisation).actions == {"*": "flag"}
    policy_update(policy=policy, actor=ACTOR, actions={"*": "redact"})
    _registry.poll_once()  # what every process's poller does within STEWARD_INVALIDATION_POLL_SECONDS
    assert resolve(organisation).actions == {"*": "redact"}
    other = policy_create(organisation=organisation, actor=ACTOR, name="strict", filters=[{"filter": "injection"}])
    policy_attach(organisation=organisation, policy=other, scope="api_key", target_id=key.id, actor=ACTOR)
    _registry.poll_once()
    assert resolve(organisation, key=key.id).name == "strict"


def test_an_inactive_policy_does_not_apply(organisation):
    policy = policy_store(organisation, name="org", filters=[words({"a": "a"})], is_active=False)
    assert resolve(organisation) is None
    assert PolicyAttachment.objects.filter(policy=policy).exists()


def test_a_stored_policy_that_no_longer_compiles_fails_closed(organisation):
    policy_store(organisation, name="broken", filters=[{"filter": "no_such_filter"}])
    broken = resolve(organisation)
    from safety.engine import arun_policy
    from safety.filters.base import CheckContext, Direction

    result = asyncio.run(arun_policy(broken, "hello", CheckContext(organisation_id=1, direction=Direction.INPUT)))
    assert result.action == "block" and result.failed == "policy"
    assert "does not compile" in result.runs[0]["reason"]

"""API keys hold only what they were given.

A key without roles (the demo key, any proxy-only key) reaches /v1/ and its own spend, not the
management API; a key's allowed_prompts confine its registry reads (other prompts are 404, like
missing ones); no key changes label protection; an import never moves a protected label of an
existing prompt (a person's import opens a promotion request, a key's is refused).
"""

from __future__ import annotations

import json

import pytest
import yaml

from registry import services
from registry.models import Label, PromotionRequest, Prompt
from registry.yaml_io import prompts_export
from tests.factories import PromptVersionFactory
from tests.helpers import SYSTEM, login

pytestmark = pytest.mark.django_db


def _bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def _post(client, url: str, data: dict, **extra):
    return client.post(url, json.dumps(data), content_type="application/json", **extra)


@pytest.fixture
def two_prompts(prompt, protected_prompt):
    PromptVersionFactory(prompt=prompt)
    return prompt, protected_prompt


def test_a_key_without_roles_reaches_its_spend_and_nothing_else(client, api_key_factory, two_prompts):
    key, secret = api_key_factory(name="proxy only")
    auth = _bearer(secret)
    for url in (
        "/api/v1/prompts/",
        "/api/v1/prompts/support-reply/",
        "/api/v1/prompts/support-reply/versions/",
        "/api/v1/prompts/support-reply/versions/1/",
        "/api/v1/prompts/support-reply/export/",
        "/api/v1/prompts/support-reply/diff/?from=1&to=1",
        "/api/v1/promotion-requests/",
        "/api/v1/billing/prices/",
        "/api/v1/billing/usage/",
        "/api/v1/billing/budgets/",
    ):
        response = client.get(url, **auth)
        assert response.status_code == 403, (url, response.status_code)
        assert "support-reply" not in response.content.decode()
    rendered = _post(client, "/api/v1/prompts/support-reply/versions/1/render/", {"variables": {}}, **auth)
    assert rendered.status_code == 403
    spend = client.get("/api/v1/billing/spend/", **auth)
    assert spend.status_code == 200 and spend.json()["api_key_id"] == key.id


def test_allowed_prompts_confine_every_registry_read(client, api_key_factory, two_prompts):
    _, protected = two_prompts
    services.promotion_request_create(
        prompt=protected, label="production", version=2, reason="go", actor=SYSTEM, roles=None
    )
    _, secret = api_key_factory(name="scoped", roles=["viewer"], allowed_prompts=["support-reply"])
    auth = _bearer(secret)
    listed = client.get("/api/v1/prompts/", **auth).json()["results"]
    assert [p["name"] for p in listed] == ["support-reply"]
    assert client.get("/api/v1/promotion-requests/", **auth).json()["results"] == []
    assert client.get("/api/v1/prompts/support-reply/", **auth).status_code == 200
    assert client.get("/api/v1/prompts/support-reply/versions/1/", **auth).status_code == 200
    assert client.get("/api/v1/prompts/support-reply/export/", **auth).status_code == 200

    missing = client.get("/api/v1/prompts/no-such-prompt/", **auth)
    for url in (
        "/api/v1/prompts/guarded/",
        "/api/v1/prompts/guarded/versions/",
        "/api/v1/prompts/guarded/versions/1/",
        "/api/v1/prompts/guarded/export/",
        "/api/v1/prompts/guarded/diff/?from=1&to=2",
        "/api/v1/prompts/guarded/labels/production/history/",
    ):
        response = client.get(url, **auth)
        assert response.status_code == 404, (url, response.status_code)
        assert "Hello there" not in response.content.decode()
    # The same answer as for a prompt that does not exist, so names do not leak.
    other = client.get("/api/v1/prompts/guarded/", **auth).json()
    assert other["error"]["code"] == missing.json()["error"]["code"] == "prompt_not_found"
    rendered = _post(
        client, "/api/v1/prompts/guarded/versions/1/render/", {"variables": {"customer_name": "x"}}, **auth
    )
    assert rendered.status_code == 404
    # The organisation's members (and unconfined keys) still see everything.
    _, free_secret = api_key_factory(name="free", roles=["viewer"])
    assert len(client.get("/api/v1/prompts/", **_bearer(free_secret)).json()["results"]) == 2


def test_a_confined_writer_key_cannot_create_or_import_other_prompts(client, api_key_factory, two_prompts):
    prompt, protected = two_prompts
    _, secret = api_key_factory(name="scoped writer", roles=["prompt_engineer"], allowed_prompts=["support-reply"])
    auth = _bearer(secret)
    assert _post(client, "/api/v1/prompts/", {"name": "brand-new"}, **auth).status_code == 403
    assert _post(client, "/api/v1/prompts/", {"name": "guarded"}, **auth).status_code == 403
    text = prompts_export(prompts=[prompt, protected])
    assert _post(client, "/api/v1/prompts/import/", {"yaml": text}, **auth).status_code == 403
    assert not Prompt.objects.filter(name="brand-new").exists()


def test_keys_never_change_label_protection(client, api_key_factory, admin, protected_prompt):
    _, secret = api_key_factory(name="admin key", roles=["admin", "prompt_engineer"])
    url = "/api/v1/prompts/guarded/labels/production/protection/"
    refused = _post(client, url, {"protected": False}, **_bearer(secret))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "api_key_forbidden"
    protected_prompt.refresh_from_db()
    assert protected_prompt.protected_labels == ["production"]
    # A signed-in admin still can.
    login(client, admin)
    assert _post(client, url, {"protected": False}).status_code == 200
    protected_prompt.refresh_from_db()
    assert protected_prompt.protected_labels == []


def _moved_file(protected_prompt, **labels) -> str:
    data = yaml.safe_load(prompts_export(prompts=[protected_prompt]))
    data["prompts"][0]["labels"].update(labels)
    return yaml.safe_dump(data)


def test_a_keys_import_cannot_move_or_set_a_protected_label(client, api_key_factory, protected_prompt):
    _, secret = api_key_factory(name="engineer key", roles=["prompt_engineer"])
    auth = _bearer(secret)
    for text in (
        _moved_file(protected_prompt, production=2),
        # protecting another label of an existing prompt is a protection change too
        yaml.safe_dump(
            {**(d := yaml.safe_load(prompts_export(prompts=[protected_prompt]))),
             "prompts": [{**d["prompts"][0], "protected_labels": ["production", "staging"]}]}
        ),
    ):  # fmt: skip
        response = _post(client, "/api/v1/prompts/import/", {"yaml": text}, **auth)
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "api_key_forbidden"
    protected_prompt.refresh_from_db()
    assert protected_prompt.protected_labels == ["production"]
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 1
    assert not PromotionRequest.objects.exists()


def test_a_persons_import_opens_a_promotion_request_that_another_engineer_approves(
    client, prompt_engineer, second_prompt_engineer, protected_prompt
):
    # A protected label that does not exist yet is "set" by an import: that too needs the approval.
    services.prompt_label_protection_set(prompt=protected_prompt, label="canary", protected=True, actor=SYSTEM)
    login(client, prompt_engineer)
    text = _moved_file(protected_prompt, production=2, canary=1)
    response = _post(client, "/api/v1/prompts/import/", {"yaml": text})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["labels_changed"] == []
    assert sorted(body["promotions_requested"]) == ["guarded:canary -> v1", "guarded:production -> v2"]
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 1
    assert not Label.objects.filter(prompt=protected_prompt, name="canary").exists()
    # Idempotent: the same file asks nothing new.
    assert _post(client, "/api/v1/prompts/import/", {"yaml": text}).json()["changed"] is False
    pending = PromotionRequest.objects.get(prompt=protected_prompt, label="production", status="pending")
    # Not by the importer themselves...
    assert client.post(f"/api/v1/promotion-requests/{pending.id}/approve/").status_code == 403
    # ...by another prompt engineer.
    login(client, second_prompt_engineer)
    assert client.post(f"/api/v1/promotion-requests/{pending.id}/approve/").status_code == 200
    assert Label.objects.get(prompt=protected_prompt, name="production").version.number == 2

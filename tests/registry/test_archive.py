"""Archiving prompts: hidden from the prompt list, pickers and the API list, still resolved by the proxy
(by version and by label), unarchivable, audited, writers only."""

from __future__ import annotations

import pytest
import requests
from django.urls import reverse

from audit.models import AuditEvent
from registry import selectors, services
from registry.models import Prompt
from tests.factories import PromptVersionFactory
from tests.helpers import SYSTEM, login


def _list_page(client, **query) -> str:
    return client.get(reverse("registry:prompt_list"), query).content.decode()


def _api_names(client, **query) -> list[str]:
    response = client.get(reverse("api-prompt-list"), query)
    assert response.status_code == 200, response.content
    return [p["name"] for p in response.json()["results"]]


@pytest.fixture
def two_prompts(organisation):
    kept = services.prompt_create(organisation=organisation, name="kept-prompt", actor=SYSTEM)
    old = services.prompt_create(organisation=organisation, name="old-prompt", actor=SYSTEM)
    PromptVersionFactory(prompt=old)
    return kept, old


@pytest.mark.django_db
def test_archive_in_the_ui_hides_the_prompt_and_unarchive_brings_it_back(client, prompt_engineer, two_prompts):
    _, old = two_prompts
    login(client, prompt_engineer)
    detail = client.get(reverse("registry:prompt_detail", args=[old.name])).content.decode()
    assert 'id="archive-prompt"' in detail and 'id="archived-notice"' not in detail

    response = client.post(reverse("registry:prompt_archive", args=[old.name]), follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("registry:prompt_detail", args=[old.name])
    assert 'id="archived-notice"' in page and 'id="unarchive-prompt"' in page
    assert "pat-engineer" in page  # who archived it
    assert Prompt.objects.get(pk=old.pk).archived_at is not None

    listed = _list_page(client)
    assert "kept-prompt" in listed and "old-prompt" not in listed
    archived_only = _list_page(client, show="archived")
    assert "old-prompt" in archived_only and "kept-prompt" not in archived_only and "archived</span>" in archived_only
    both = client.get(reverse("registry:prompt_list"), {"show": "all"}, HTTP_HX_REQUEST="true").content.decode()
    assert "old-prompt" in both and "kept-prompt" in both and "<html" not in both
    # An unknown filter value falls back to the default (active prompts).
    assert "old-prompt" not in _list_page(client, show="bogus")
    # The archived prompt's pages still open (versions stay readable).
    assert client.get(reverse("registry:version_detail", args=[old.name, 1])).status_code == 200

    client.post(reverse("registry:prompt_unarchive", args=[old.name]))
    assert Prompt.objects.get(pk=old.pk).archived_at is None
    assert "old-prompt" in _list_page(client)


@pytest.mark.django_db
def test_archive_and_unarchive_are_audited_once_each(client, admin, two_prompts):
    _, old = two_prompts
    login(client, admin)
    archive = reverse("registry:prompt_archive", args=[old.name])
    client.post(archive)
    client.post(archive)  # a double click changes nothing more
    client.post(reverse("registry:prompt_unarchive", args=[old.name]))
    events = list(
        AuditEvent.objects.filter(target_type="prompt", target_id=str(old.id), action__startswith="prompt.")
        .exclude(action="prompt.created")
        .order_by("seq")
    )
    assert [e.action for e in events] == ["prompt.archived", "prompt.unarchived"]
    assert events[0].actor_label == "alice-admin" and events[0].after["name"] == "old-prompt"
    assert events[0].after["archived_at"] is not None and events[0].before == {"archived_at": None}
    assert events[1].after["archived_at"] is None


@pytest.mark.django_db
def test_viewer_and_reviewer_cannot_archive(client, viewer, reviewer, two_prompts):
    _, old = two_prompts
    for persona in (viewer, reviewer):
        login(client, persona)
        assert client.post(reverse("registry:prompt_archive", args=[old.name])).status_code == 403
        page = client.get(reverse("registry:prompt_detail", args=[old.name])).content.decode()
        assert 'id="archive-prompt"' not in page
        api = client.post(reverse("api-prompt-archive", kwargs={"prompt_name": old.name}))
        assert api.status_code == 403
    assert Prompt.objects.get(pk=old.pk).archived_at is None
    assert not AuditEvent.objects.filter(action="prompt.archived").exists()


@pytest.mark.django_db
def test_service_refuses_a_viewer_role(two_prompts):
    from core.actors import Actor
    from core.errors import Forbidden

    _, old = two_prompts
    with pytest.raises(Forbidden):
        services.prompt_archive(prompt=old, actor=Actor("user", "1", "v"), roles=["viewer"])


@pytest.mark.django_db
def test_api_archive_unarchive_and_list_filter(client, prompt_engineer, two_prompts):
    _, old = two_prompts
    login(client, prompt_engineer)
    archived = client.post(reverse("api-prompt-archive", kwargs={"prompt_name": old.name}))
    assert archived.status_code == 200, archived.content
    assert archived.json()["archived"] is True and archived.json()["archived_at"]
    assert client.post(reverse("api-prompt-archive", kwargs={"prompt_name": old.name})).status_code == 200

    assert _api_names(client) == ["kept-prompt"]
    assert _api_names(client, archived="false") == ["kept-prompt"]
    assert _api_names(client, archived="true") == ["kept-prompt", "old-prompt"]
    assert _api_names(client, archived="only") == ["old-prompt"]
    bad = client.get(reverse("api-prompt-list"), {"archived": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["param"] == "archived"
    # Still retrievable by name (like a pinned version): archiving hides, it does not delete.
    detail = client.get(reverse("api-prompt-detail", kwargs={"prompt_name": old.name}))
    assert detail.status_code == 200 and detail.json()["archived"] is True

    back = client.post(reverse("api-prompt-unarchive", kwargs={"prompt_name": old.name}))
    assert back.status_code == 200 and back.json()["archived"] is False and back.json()["archived_at"] is None
    assert _api_names(client) == ["kept-prompt", "old-prompt"]
    missing = client.post(reverse("api-prompt-archive", kwargs={"prompt_name": "nope"}))
    assert missing.status_code == 404


@pytest.mark.django_db
def test_api_key_confined_to_other_prompts_gets_404(client, api_key_factory, two_prompts):
    _, old = two_prompts
    _, secret = api_key_factory(roles=["prompt_engineer"], allowed_prompts=["kept-prompt"])
    response = client.post(
        reverse("api-prompt-archive", kwargs={"prompt_name": old.name}), HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 404
    assert Prompt.objects.get(pk=old.pk).archived_at is None


@pytest.mark.django_db
def test_schema_describes_archive_endpoints_and_filter(client, admin):
    import yaml

    login(client, admin)
    schema = yaml.safe_load(client.get("/api/schema/").content)
    paths = schema["paths"]
    for path, operation in (
        ("/api/v1/prompts/{prompt_name}/archive/", "prompts_archive"),
        ("/api/v1/prompts/{prompt_name}/unarchive/", "prompts_unarchive"),
    ):
        post = paths[path]["post"]
        assert post["operationId"] == operation and "requestBody" not in post
        ref = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        props = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
        assert {"archived", "archived_at"} <= set(props)
    archived_param = next(p for p in paths["/api/v1/prompts/"]["get"]["parameters"] if p["name"] == "archived")
    assert sorted(archived_param["schema"]["enum"]) == ["false", "only", "true"]


@pytest.mark.django_db
def test_pickers_leave_archived_prompts_out(organisation, two_prompts):
    _, old = two_prompts
    services.prompt_archive(prompt=old, actor=SYSTEM)
    assert selectors.prompt_names(organisation=organisation) == ["kept-prompt"]
    assert [p.name for p in selectors.prompts_list(organisation=organisation)] == ["kept-prompt"]


def test_archived_prompt_still_resolves_through_the_proxy(client, proxy, dev_upstream, prompt_engineer):
    """The proxy path (with its in-process resolution cache warm) keeps serving an archived prompt, by
    version and by label."""
    prompt = services.prompt_create(organisation=proxy.organisation, name="legacy-reply", actor=SYSTEM)
    PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }}")
    services.label_move(prompt=prompt, label="production", version=1, reason="ship", actor=SYSTEM)

    def call(**reference):
        return requests.post(
            f"{proxy.url}/chat/completions",
            json={"prompt": {"name": "legacy-reply", "variables": {"customer_name": "Ada"}, **reference}},
            headers=proxy.headers(),
            timeout=10,
        )

    assert call(label="production").status_code == 200  # warms the resolution cache
    login(client, prompt_engineer)
    assert client.post(reverse("api-prompt-archive", kwargs={"prompt_name": "legacy-reply"})).status_code == 200
    assert Prompt.objects.get(pk=prompt.pk).is_archived

    by_label = call(label="production")
    assert by_label.status_code == 200, by_label.text
    assert by_label.headers["x-steward-prompt-version"] == "legacy-reply:1"
    by_version = call(version=1)
    assert by_version.status_code == 200, by_version.text
    assert by_version.headers["x-steward-prompt-version"] == "legacy-reply:1"
    assert dev_upstream.stats()["last_request"]["messages"][1]["content"] == "Hi Ada"
    # And the prompt stays out of the lists meanwhile.
    assert "legacy-reply" not in _list_page(client)

"""Pending promotions on the prompt list ("v1 → v2", or "(none) → v2" when the label pointed at nothing),
JSON (not Python literals) in the diff and version pages, and the editor offering the route names."""

from __future__ import annotations

import html

import pytest
from django.template.loader import render_to_string
from django.urls import reverse

from audit.models import AuditEvent
from registry import selectors, services
from registry.models import PromotionRequest
from tests.factories import PromptVersionFactory, RouteFactory
from tests.helpers import SYSTEM, login

pytestmark = pytest.mark.django_db


def _request_promotion(client, prompt, version: int):
    response = client.post(
        reverse("registry:label_move", args=[prompt.name]),
        {"label": "production", "version": version, "reason": "ship it"},
    )
    assert response.status_code == 302
    return PromotionRequest.objects.get(prompt=prompt, status="pending")


def test_pending_promotion_is_listed_on_the_prompt_list_as_v1_to_v2(client, prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    assert 'id="pending-promotions"' not in client.get(reverse("registry:prompt_list")).content.decode()
    promotion = _request_promotion(client, protected_prompt, 2)

    page = client.get(reverse("registry:prompt_list")).content.decode()
    section = page[
        page.index('id="pending-promotions"') : page.index("</section>", page.index('id="pending-promotions"'))
    ]
    assert "Pending promotions" in section
    row = section[section.index(f'data-pending-promotion="{promotion.id}"') :]
    row = row[: row.index("</tr>")]
    assert ">guarded</a>" in row and ">production</span>" in row
    assert "v1 → v2" in row and "v–" not in row
    assert "pat-engineer" in row and " ago</time>" in row
    assert f"{reverse('registry:prompt_detail', args=['guarded'])}#promotion-{promotion.id}" in row

    detail = client.get(reverse("registry:prompt_detail", args=["guarded"])).content.decode()
    assert f'id="promotion-{promotion.id}"' in detail and "v1 → v2" in detail and "v–" not in detail
    # The filtered rows (htmx) are only the table: the section is not repeated inside it.
    rows = client.get(reverse("registry:prompt_list"), {"q": "guard"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Pending promotions" not in rows


def test_a_label_that_pointed_at_nothing_reads_none_to_v2(client, prompt_engineer, organisation):
    """The old page said "v– → v2": from_version is null when the protected label did not exist yet
    (a prompt created with "Protect production" gets its first production through a promotion)."""
    prompt = services.prompt_create(
        organisation=organisation, name="fresh", protected_labels=["production"], actor=SYSTEM
    )
    PromptVersionFactory(prompt=prompt, text="one {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="two {{ customer_name }}")
    login(client, prompt_engineer)
    promotion = _request_promotion(client, prompt, 2)
    assert promotion.from_version is None

    for url in (reverse("registry:prompt_detail", args=["fresh"]), reverse("registry:prompt_list")):
        page = client.get(url).content.decode()
        assert "(none) → v2" in page and "v–" not in page, url
    api = client.get(reverse("api-promotion-request-list"), {"status": "pending"}).json()["results"]
    assert api[0]["from_version"] is None and api[0]["to_version"] == 2
    event = AuditEvent.objects.get(action="promotion.requested", target_id=str(promotion.id))
    assert event.after["from_version"] is None and event.after["version"] == 2


def test_audit_of_a_promotion_request_names_the_version_it_moves_from(client, prompt_engineer, protected_prompt):
    login(client, prompt_engineer)
    promotion = _request_promotion(client, protected_prompt, 2)
    event = AuditEvent.objects.get(action="promotion.requested", target_id=str(promotion.id))
    assert event.after["from_version"] == 1 and event.after["version"] == 2


def test_label_history_says_none_for_a_label_created(client, viewer, protected_prompt):
    login(client, viewer)
    page = client.get(reverse("registry:prompt_detail", args=[protected_prompt.name])).content.decode()
    history = page[page.index('id="h-history"') :]
    assert "<td>(none)</td><td>v1</td>" in history and "–</td>" not in history


def test_pending_promotions_partial_contract(prompt_engineer, protected_prompt, organisation):
    """The partial the dashboard includes: `promotions` from promotion_requests(status="pending")."""
    empty = render_to_string("registry/partials/_pending_promotions.html", {"promotions": []})
    assert "No pending promotions." in empty
    services.promotion_request_create(
        prompt=protected_prompt,
        label="production",
        version=2,
        reason="go",
        actor=_actor(prompt_engineer),
        roles=["prompt_engineer"],
    )
    pending = selectors.promotion_requests(organisation=organisation, status="pending", names=None)
    text = render_to_string("registry/partials/_pending_promotions.html", {"promotions": pending})
    assert "guarded" in text and "v1 → v2" in text and "pat-engineer" in text and "No pending" not in text


def _actor(persona):
    from core.actors import Actor

    return Actor.for_user(persona.user)


def _two_versions_with_changed_schema(prompt):
    PromptVersionFactory(
        prompt=prompt,
        params={"temperature": 0.2},
        variables=[{"name": "customer_name", "type": "string", "required": True}],
    )
    return services.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello {{ customer_name }}"}],
        model="dev-small",
        params={"temperature": 0.2, "stop": ["###"], "seed": 7},
        variables=[{"name": "customer_name", "type": "string", "required": False, "default": "friend"}],
        commit_message="optional name",
        actor=SYSTEM,
    )


def test_diff_shows_variables_and_params_as_json(client, viewer, prompt):
    _two_versions_with_changed_schema(prompt)
    login(client, viewer)
    page = client.get(reverse("registry:version_diff", args=[prompt.name]), {"a": 1, "b": 2}).content.decode()
    text = html.unescape(page[page.index('id="h-dparams"') :])
    assert (
        '<del><code class="json" style="white-space:pre-wrap">{"type": "string", "required": true}</code></del>' in text
    )
    assert '{"type": "string", "required": false, "default": "friend"}' in text
    assert '<code>stop</code> added: <ins><code class="json" style="white-space:pre-wrap">["###"]</code></ins>' in text
    for python in ("True", "False", "None", "'type'", "['###']"):
        assert python not in text, python


def test_version_page_shows_params_and_defaults_as_json(client, viewer, prompt):
    _two_versions_with_changed_schema(prompt)
    login(client, viewer)
    page = html.unescape(client.get(reverse("registry:version_detail", args=[prompt.name, 2])).content.decode())
    assert 'stop: ["###"]' in page and "seed: 7" in page and "temperature: 0.2" in page
    assert '<code class="json" style="white-space:pre-wrap">"friend"</code>' in page
    assert "['###']" not in page


def test_json_pretty_filter_indents_long_values_and_keeps_short_ones_inline():
    from registry.templatetags.registry_tags import json_pretty

    assert json_pretty(None) == "null" and json_pretty(True) == "true" and json_pretty("é") == '"é"'
    assert json_pretty({"a": 1}) == '{"a": 1}'
    long = {"type": "json_schema", "json_schema": {"name": "reply", "schema": {"type": "object"}}}
    assert json_pretty(long).startswith('{\n  "type": "json_schema",')


def test_editor_offers_route_names_and_keeps_the_model_free_text(client, prompt_engineer, prompt, organisation):
    RouteFactory(organisation=organisation, name="fast-model")
    RouteFactory(organisation=organisation, name="big-model")
    login(client, prompt_engineer)
    editor = client.get(reverse("registry:version_edit", args=[prompt.name])).content.decode()
    assert 'list="model-routes"' in editor
    datalist = editor[editor.index('<datalist id="model-routes">') : editor.index("</datalist>")]
    assert datalist.index('value="big-model"') < datalist.index('value="fast-model"')
    # Another organisation's routes are not offered.
    from tests.factories import OrganisationFactory

    RouteFactory(organisation=OrganisationFactory(name="Other", slug="other"), name="secret-route")
    assert "secret-route" not in client.get(reverse("registry:version_edit", args=[prompt.name])).content.decode()

    # A model with no route yet may still be saved; the editor says it has no route.
    response = client.post(
        reverse("registry:version_edit", args=[prompt.name]),
        {
            "message_role": ["user"],
            "message_content": ["Hi {{ customer_name }}"],
            "model": "not-routed-yet",
            "var_name": ["customer_name"],
            "var_type": ["string"],
            "var_required": ["yes"],
            "var_default": [""],
            "var_description": [""],
            "op": "save",
        },
    )
    assert response.status_code == 302
    assert selectors.prompt_version_latest(prompt=prompt).model == "not-routed-yet"
    again = client.get(reverse("registry:version_edit", args=[prompt.name])).content.decode()
    assert "<strong>not-routed-yet</strong> has no route yet" in again

"""The models pages (/proxy/models/...) and the request log pages (/proxy/requests/...)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from core.actors import Actor
from core.crypto import secret_decrypt
from proxy.models import Deployment, ModelRoute, RequestLog
from proxy.services import deployment_create
from tests.factories import RouteFactory
from tests.helpers import login

ACTOR = Actor.system("tests")
SECRET = "sk-ui-NEVER-SHOWN-abcdef0123456789"


@pytest.fixture
def route(organisation):
    return RouteFactory(organisation=organisation, name="gpt-small", description="The cheap one")


@pytest.fixture
def deployment(route):
    return deployment_create(
        route=route,
        name="primary",
        model="dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_secret=SECRET,
        actor=ACTOR,
    )


def _deployment_post(**overrides) -> dict:
    data = {
        "name": "secondary",
        "kind": "openai_compatible",
        "model": "dev-large",
        "api_base": "http://127.0.0.1:9/v1",
        "credential_env": "",
        "credential_secret": "",
        "weight": "2",
        "rpm_limit": "",
        "tpm_limit": "",
        "timeout_seconds": "15",
        "enabled": "on",
    }
    data.update(overrides)
    return data


def _route_post(**overrides) -> dict:
    data = {
        "name": "gpt-new",
        "description": "",
        "fallbacks": "",
        "strategy": "weighted",
        "cache_ttl_seconds": "300",
        "deadline_seconds": "60",
    }
    data.update(overrides)
    return data


def test_anonymous_is_sent_to_login(client, route):
    response = client.get(reverse("proxy:route_list"))
    assert response.status_code == 302
    assert reverse("accounts:login") in response["Location"]


def test_viewer_sees_routes_deployments_and_health_read_only(client, viewer, route, deployment):
    login(client, viewer)
    page = client.get(reverse("proxy:route_list"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "gpt-small" in html and "primary" in html
    assert reverse("proxy:route_create") not in html
    assert SECRET not in html
    detail = client.get(reverse("proxy:route_detail", args=[route.id]))
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "dev-small" in html and "encrypted secret" in html
    assert reverse("proxy:deployment_edit", args=[deployment.id]) not in html
    assert SECRET not in html and deployment.credential_encrypted not in html


def test_health_partial_is_served_to_htmx(client, viewer, route, deployment):
    login(client, viewer)
    response = client.get(reverse("proxy:route_list"), HTTP_HX_REQUEST="true", HTTP_HX_TARGET="route-table")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1" not in html and 'data-deployment="primary"' in html


@pytest.mark.parametrize("persona", ["viewer", "prompt_engineer", "reviewer"])
def test_members_without_admin_get_403_on_every_change(client, request, persona, route, deployment):
    login(client, request.getfixturevalue(persona))
    assert client.get(reverse("proxy:route_create")).status_code == 403
    assert client.post(reverse("proxy:route_create"), _route_post()).status_code == 403
    assert client.post(reverse("proxy:route_edit", args=[route.id]), _route_post(name="renamed")).status_code == 403
    assert client.post(reverse("proxy:route_delete", args=[route.id])).status_code == 403
    create = client.post(reverse("proxy:deployment_create", args=[route.id]), _deployment_post())
    assert create.status_code == 403
    assert client.post(reverse("proxy:deployment_edit", args=[deployment.id]), _deployment_post()).status_code == 403
    assert client.post(reverse("proxy:deployment_delete", args=[deployment.id])).status_code == 403
    assert list(ModelRoute.objects.values_list("name", flat=True)) == ["gpt-small"]
    assert list(Deployment.objects.values_list("name", flat=True)) == ["primary"]


def test_outsider_gets_404(client, outsider, route, deployment):
    login(client, outsider)
    assert client.get(reverse("proxy:route_detail", args=[route.id])).status_code == 404
    assert client.get(reverse("proxy:route_edit", args=[route.id])).status_code == 404
    assert client.post(reverse("proxy:route_delete", args=[route.id])).status_code == 404
    assert client.post(reverse("proxy:deployment_create", args=[route.id]), _deployment_post()).status_code == 404
    assert client.get(reverse("proxy:deployment_edit", args=[deployment.id])).status_code == 404
    assert client.post(reverse("proxy:deployment_delete", args=[deployment.id])).status_code == 404
    listing = client.get(reverse("proxy:route_list")).content.decode()
    assert "gpt-small" not in listing
    assert ModelRoute.objects.filter(pk=route.pk).exists() and Deployment.objects.filter(pk=deployment.pk).exists()


def test_admin_creates_route_with_fallbacks_and_it_is_audited(client, admin, organisation, route):
    login(client, admin)
    response = client.post(reverse("proxy:route_create"), _route_post(fallbacks="gpt-small", cache_enabled="on"))
    created = ModelRoute.objects.get(organisation=organisation, name="gpt-new")
    assert response.status_code == 302
    assert response["Location"] == reverse("proxy:route_detail", args=[created.id])
    assert created.fallbacks == ["gpt-small"] and created.cache_enabled is True
    assert AuditEvent.objects.filter(
        organisation_id=organisation.id, action="route.created", target_id=str(created.id)
    ).exists()


def test_route_form_shows_service_errors_on_the_field(client, admin, organisation, route):
    login(client, admin)
    response = client.post(reverse("proxy:route_create"), _route_post(fallbacks="does-not-exist"))
    assert response.status_code == 200
    assert "Unknown fallback" in response.content.decode()
    duplicate = client.post(reverse("proxy:route_create"), _route_post(name="gpt-small"))
    assert duplicate.status_code == 200 and "already exists" in duplicate.content.decode()
    assert ModelRoute.objects.filter(organisation=organisation).count() == 1


def test_admin_edits_route(client, admin, organisation, route):
    login(client, admin)
    form = client.get(reverse("proxy:route_edit", args=[route.id]))
    assert 'value="gpt-small"' in form.content.decode()
    response = client.post(
        reverse("proxy:route_edit", args=[route.id]), _route_post(name="gpt-small", deadline_seconds="12.5")
    )
    assert response.status_code == 302
    route.refresh_from_db()
    assert route.deadline_seconds == 12.5
    assert AuditEvent.objects.filter(organisation_id=organisation.id, action="route.updated").exists()


def test_admin_adds_deployment_with_a_secret_that_is_never_rendered(client, admin, organisation, route):
    login(client, admin)
    response = client.post(
        reverse("proxy:deployment_create", args=[route.id]), _deployment_post(credential_secret=SECRET)
    )
    assert response.status_code == 302
    deployment = Deployment.objects.get(route=route, name="secondary")
    assert secret_decrypt(deployment.credential_encrypted) == SECRET
    for url in (
        reverse("proxy:route_detail", args=[route.id]),
        reverse("proxy:deployment_edit", args=[deployment.id]),
        reverse("proxy:route_list"),
    ):
        html = client.get(url).content.decode()
        assert SECRET not in html and deployment.credential_encrypted not in html
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="deployment.created")
    assert SECRET not in str(event.after)


def test_deployment_edit_keeps_the_secret_unless_replaced_or_cleared(client, admin, deployment):
    login(client, admin)
    url = reverse("proxy:deployment_edit", args=[deployment.id])
    assert client.post(url, _deployment_post(name="primary", weight="5")).status_code == 302
    deployment.refresh_from_db()
    assert deployment.weight == 5 and secret_decrypt(deployment.credential_encrypted) == SECRET

    assert client.post(url, _deployment_post(name="primary", credential_secret="sk-new")).status_code == 302
    deployment.refresh_from_db()
    assert secret_decrypt(deployment.credential_encrypted) == "sk-new"

    assert client.post(url, _deployment_post(name="primary", clear_credential="on")).status_code == 302
    deployment.refresh_from_db()
    assert deployment.credential_kind == "none"


def test_deployment_edit_that_moves_the_api_base_drops_the_credential(client, admin, route, settings):
    """The edit form shows the stored variable name again; submitted unchanged with a new api_base, it
    is no new credential, so the key does not follow the deployment to the new host (as in the API)."""
    settings.STEWARD_CREDENTIAL_ENV_ALLOWED = ("STEWARD_UPSTREAM_*",)
    by_env = deployment_create(
        route=route,
        name="by-env",
        model="dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_env="STEWARD_UPSTREAM_KEY",
        actor=ACTOR,
    )
    login(client, admin)
    url = reverse("proxy:deployment_edit", args=[by_env.id])
    same_host = _deployment_post(name="by-env", model="dev-small", credential_env="STEWARD_UPSTREAM_KEY")
    assert client.post(url, same_host).status_code == 302
    by_env.refresh_from_db()
    assert by_env.credential_env == "STEWARD_UPSTREAM_KEY"

    moved = dict(same_host, api_base="http://127.0.0.2:9/v1")
    response = client.post(url, moved, follow=True)
    by_env.refresh_from_db()
    assert by_env.api_base == "http://127.0.0.2:9/v1" and by_env.credential_kind == "none"
    assert "its credential was removed" in response.content.decode()

    with_new_key = dict(moved, api_base="http://127.0.0.3:9/v1", credential_env="STEWARD_UPSTREAM_OTHER")
    assert client.post(url, with_new_key).status_code == 302
    by_env.refresh_from_db()
    assert by_env.credential_env == "STEWARD_UPSTREAM_OTHER"


def test_deployment_form_error_keeps_nothing_half_written(client, admin, route):
    login(client, admin)
    response = client.post(
        reverse("proxy:deployment_create", args=[route.id]),
        _deployment_post(api_base="not a url", credential_secret=SECRET),
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "api_base must be" in html
    assert SECRET not in html
    assert not route.deployments.exists()


def test_admin_deletes_deployment_and_route(client, admin, organisation, route, deployment):
    login(client, admin)
    assert client.post(reverse("proxy:deployment_delete", args=[deployment.id])).status_code == 302
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    confirm = client.get(reverse("proxy:route_delete", args=[route.id]))
    assert confirm.status_code == 200 and "Delete model" in confirm.content.decode()
    assert client.post(reverse("proxy:route_delete", args=[route.id])).status_code == 302
    assert not ModelRoute.objects.filter(pk=route.pk).exists()
    actions = set(AuditEvent.objects.filter(organisation_id=organisation.id).values_list("action", flat=True))
    assert {"deployment.deleted", "route.deleted"} <= actions


def test_route_delete_refused_while_it_is_a_fallback(client, admin, organisation, route):
    RouteFactory(organisation=organisation, name="big", fallbacks=["gpt-small"])
    login(client, admin)
    confirm = client.get(reverse("proxy:route_delete", args=[route.id]))
    assert "fallback of" in confirm.content.decode()
    response = client.post(reverse("proxy:route_delete", args=[route.id]), follow=True)
    assert ModelRoute.objects.filter(pk=route.pk).exists()
    assert "change those first" in response.content.decode()


# --- request log -----------------------------------------------------------------------------


def _log(organisation, request_id: str, **kwargs) -> RequestLog:
    defaults = {
        "endpoint": "chat.completions",
        "model": "gpt-small",
        "status": "ok",
        "http_status": 200,
        "started_at": timezone.now(),
        "deployment_name": "primary",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "latency_ms": 12.5,
        "overhead_ms": 0.8,
        "attempts": [
            {
                "n": 1,
                "deployment": "primary",
                "model": "dev-small",
                "status": "error",
                "http_status": 503,
                "error_type": "upstream_unavailable",
                "latency_ms": 3.0,
            },
            {
                "n": 2,
                "deployment": "secondary",
                "model": "dev-small",
                "status": "ok",
                "http_status": 200,
                "latency_ms": 8.0,
                "usage": {"prompt_tokens": 11, "completion_tokens": 7},
            },
        ],
        "timings": {"authenticate": 0.11, "resolve_prompt": 0.02, "call_upstream": 11.4, "log": 0.05},
    }
    return RequestLog.objects.create(organisation=organisation, request_id=request_id, **{**defaults, **kwargs})


def test_request_log_lists_and_filters(client, viewer, organisation, other_organisation, api_key_factory):
    key, _ = api_key_factory(name="billing-service")
    _log(organisation, "req-ok-1", api_key_id=key.id)
    _log(organisation, "req-err-1", status="error", http_status=502, model="big", error_type="upstream_error")
    _log(organisation, "req-old-1", started_at=timezone.now() - timedelta(days=5))
    _log(other_organisation, "req-foreign-1")
    login(client, viewer)
    url = reverse("proxy:request_log_list")

    def shown(**params) -> set[str]:
        response = client.get(url, params)
        assert response.status_code == 200
        html = response.content.decode()
        return {rid for rid in ("req-ok-1", "req-err-1", "req-old-1", "req-foreign-1") if rid in html}

    assert shown() == {"req-ok-1", "req-err-1", "req-old-1"}
    assert shown(status="error") == {"req-err-1"}
    assert shown(model="big") == {"req-err-1"}
    assert shown(api_key=str(key.id)) == {"req-ok-1"}
    assert shown(date_from=(timezone.now() - timedelta(days=1)).date().isoformat()) == {"req-ok-1", "req-err-1"}
    assert shown(date_to=(timezone.now() - timedelta(days=2)).date().isoformat()) == {"req-old-1"}
    assert "billing-service" in client.get(url).content.decode()
    partial = client.get(url, {"status": "ok"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="request-results")
    assert "<h1" not in partial.content.decode() and "req-ok-1" in partial.content.decode()
    invalid = client.get(url, {"date_from": "2026-02-02", "date_to": "2026-01-01"})
    assert invalid.status_code == 200 and "must not be after" in invalid.content.decode()


def test_request_log_detail_shows_attempts_and_stage_timings(client, viewer, organisation):
    _log(organisation, "req-detail-1")
    login(client, viewer)
    response = client.get(reverse("proxy:request_log_detail", args=["req-detail-1"]))
    assert response.status_code == 200
    html = response.content.decode()
    for expected in ("upstream_unavailable", "secondary", "call_upstream", "resolve_prompt", "11 in, 7 out"):
        assert expected in html
    assert "Bodies" not in html  # stored bodies are for admins only


def test_request_log_outsider_gets_404(client, outsider, organisation):
    _log(organisation, "req-private-1")
    login(client, outsider)
    assert client.get(reverse("proxy:request_log_detail", args=["req-private-1"])).status_code == 404
    assert "req-private-1" not in client.get(reverse("proxy:request_log_list")).content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_proxied_request_shows_up_in_the_ui(
    client, viewer, organisation, api_key_factory, dev_upstream, steward_server
):
    import openai

    from tests.helpers import log_of

    route = RouteFactory(organisation=organisation, name="ui-model")
    deployment_create(route=route, name="dev", model="dev-small", api_base=dev_upstream.url, actor=ACTOR)
    _, secret = api_key_factory(name="ui-caller")
    sdk = openai.OpenAI(base_url=f"{steward_server.url}/v1", api_key=secret, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="ui-model", messages=[{"role": "user", "content": "hello there"}]
    )
    request_id = raw.headers["x-request-id"]
    usage = raw.parse().usage
    log_of(request_id)  # drains as the request-log task does every second, until the record has landed

    login(client, viewer)
    listing = client.get(reverse("proxy:request_log_list"), {"model": "ui-model"}).content.decode()
    assert request_id in listing and "ui-caller" in listing
    detail = client.get(reverse("proxy:request_log_detail", args=[request_id])).content.decode()
    assert f"{usage.prompt_tokens} in, {usage.completion_tokens} out" in detail
    assert "call_upstream" in detail and ">dev<" in detail
    route_page = client.get(reverse("proxy:route_detail", args=[route.id])).content.decode()
    assert request_id in route_page


@pytest.mark.django_db(transaction=True)
def test_an_open_circuit_is_visible_in_the_ui_and_api(
    client, admin, organisation, api_key_factory, dev_upstream, steward_server
):
    import requests

    route = RouteFactory(organisation=organisation, name="flaky")
    deployment = deployment_create(
        route=route, name="flaky-dev", model="dev-small", api_base=dev_upstream.url, actor=ACTOR
    )
    _, secret = api_key_factory()
    dev_upstream.control(fail_status=503)
    login(client, admin)
    api_url = reverse("api-deployment-detail", args=[deployment.id])
    # Never reached and never checked: nothing is claimed about it yet.
    assert client.get(api_url).json()["health"]["known"] is False
    for _ in range(10):
        response = requests.post(
            f"{steward_server.url}/v1/chat/completions",
            json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert response.status_code >= 500
        if client.get(api_url).json()["health"]["state"] == "open":
            break
    health = client.get(api_url).json()["health"]
    assert health["state"] == "open" and health["consecutive_failures"] >= 1
    page = client.get(reverse("proxy:route_detail", args=[route.id])).content.decode()
    assert ">down<" in page and "failures in a row" in page
    listing = client.get(reverse("proxy:route_list")).content.decode()
    assert ">down<" in listing


def test_admin_turns_on_body_storage_and_sees_bodies(client, admin, viewer, organisation):
    from proxy.models import ProxySettings, RequestBody

    login(client, admin)
    response = client.post(reverse("proxy:settings"), {"store_bodies": "on", "body_retention_days": "14"})
    assert response.status_code == 302
    row = ProxySettings.objects.get(organisation=organisation)
    assert row.store_bodies is True and row.body_retention_days == 14
    assert AuditEvent.objects.filter(organisation_id=organisation.id, action="proxy.settings_changed").exists()
    assert "stored for 14 days" in client.get(reverse("proxy:route_list")).content.decode()

    log = _log(organisation, "req-body-1")
    RequestBody.objects.create(
        organisation=organisation,
        request_id=log.request_id,
        started_at=log.started_at,
        request={"messages": [{"role": "user", "content": "the secret plan"}]},
        response={"choices": []},
    )
    assert "the secret plan" in client.get(reverse("proxy:request_log_detail", args=["req-body-1"])).content.decode()
    login(client, viewer)
    assert (
        "the secret plan" not in client.get(reverse("proxy:request_log_detail", args=["req-body-1"])).content.decode()
    )
    assert client.post(reverse("proxy:settings"), {"body_retention_days": "1"}).status_code == 403

"""/readyz tells an anonymous probe whether the process is ready and which component is not, and
nothing else: no organisation, route or deployment names, no database vendor. Staff users (or
everyone, with STEWARD_READYZ_DETAILS=true) get the per-check details."""

from __future__ import annotations

import pytest
import requests
from django.db import connections

from tests.helpers import free_port, login, route_with_deployments


@pytest.fixture
def unhealthy_route(organisation, dev_upstream, settings, monkeypatch):
    """acme's route "acme-internal-gpt" with a healthy and a dead deployment (circuit open)."""
    from proxy.health import deployments_check_all

    # The server thread's connection must close after each request, or the test database cannot be dropped.
    monkeypatch.setitem(connections.databases["default"], "CONN_MAX_AGE", 0)
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    _, (good, bad) = route_with_deployments(
        organisation,
        "acme-internal-gpt",
        [
            {"api_base": dev_upstream.url, "name": "primary-eu"},
            {"api_base": f"http://127.0.0.1:{free_port()}/v1", "name": "fallback-secret"},
        ],
    )
    assert deployments_check_all(timeout=1) == {good.id: True, bad.id: False}
    return organisation


def _readyz(server, cookies: dict | None = None) -> requests.Response:
    return requests.get(f"{server.url}/readyz", cookies=cookies or {}, timeout=10)


@pytest.mark.django_db(transaction=True)
def test_anonymous_probe_gets_status_and_component_names_only(steward_server, unhealthy_route):
    response = _readyz(steward_server)
    assert response.status_code == 200
    # Ready (the database and Redis are up); the deployments' check is not critical, so only "degraded".
    assert response.json() == {"status": "ready", "degraded": ["upstream_deployments"]}
    for secret in ("acme-internal-gpt", "fallback-secret", "primary-eu", f"{unhealthy_route.id}/", "postgresql"):
        assert secret not in response.text


@pytest.mark.django_db(transaction=True)
def test_a_healthy_process_answers_ready_and_nothing_more(steward_server, monkeypatch):
    monkeypatch.setitem(connections.databases["default"], "CONN_MAX_AGE", 0)
    response = _readyz(steward_server)
    assert response.status_code == 200 and response.json() == {"status": "ready"}


@pytest.mark.django_db(transaction=True)
def test_organisation_admins_get_no_details_staff_do(steward_server, unhealthy_route, client, admin):
    login(client, admin)
    as_admin = _readyz(steward_server, {"sessionid": client.cookies["sessionid"].value})
    assert "checks" not in as_admin.json() and "acme-internal-gpt" not in as_admin.text

    admin.user.is_staff = True
    admin.user.save(update_fields=["is_staff"])
    login(client, admin)
    as_staff = _readyz(steward_server, {"sessionid": client.cookies["sessionid"].value}).json()
    assert as_staff["checks"]["database"] == {"ok": True, "vendor": "postgresql"}
    deployments = as_staff["checks"]["upstream_deployments"]["deployments"]
    assert deployments[f"{unhealthy_route.id}/acme-internal-gpt/fallback-secret"] == "open"
    assert deployments[f"{unhealthy_route.id}/acme-internal-gpt/primary-eu"] == "closed"


@pytest.mark.django_db(transaction=True)
def test_details_for_everyone_when_the_setting_says_so(steward_server, unhealthy_route, settings):
    settings.STEWARD_READYZ_DETAILS = True
    body = _readyz(steward_server).json()
    assert body["degraded"] == ["upstream_deployments"]
    assert (
        body["checks"]["upstream_deployments"]["deployments"][f"{unhealthy_route.id}/acme-internal-gpt/fallback-secret"]
        == "open"
    )

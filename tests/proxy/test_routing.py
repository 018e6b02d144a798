"""Retries to another deployment, fallback to another model, and the circuit breaker, over real HTTP."""

from __future__ import annotations

import requests

from proxy.health import deployment_health_snapshot, deployments_check_all
from tests.helpers import log_of, route_with_deployments, wait_until

CHAT = {"messages": [{"role": "user", "content": "route me"}]}


def chat(proxy, model: str):
    return requests.post(
        f"{proxy.url}/chat/completions", json={"model": model, **CHAT}, headers=proxy.headers(), timeout=15
    )


def test_transient_failure_is_retried_on_another_deployment(proxy, organisation, dev_upstream, dev_upstream_b):
    a = {"api_base": dev_upstream.url, "name": "a", "weight": 10_000}
    route_with_deployments(organisation, "pair", [a, {"api_base": dev_upstream_b.url, "name": "b", "weight": 1}])
    dev_upstream.control(fail_status=503)
    response = chat(proxy, "pair")
    assert response.status_code == 200, response.text
    assert response.headers["x-steward-model-deployment"] == "b"
    row = log_of(response.headers["x-request-id"])
    assert [(a["deployment"], a["status"], a["http_status"]) for a in row.attempts] == [
        ("a", "error", 503),
        ("b", "ok", 200),
    ]
    assert row.attempts[1]["usage"]["completion_tokens"] > 0 and row.attempts[0]["usage"] is None


def test_fallback_to_another_model(proxy, organisation, dev_upstream, dev_upstream_b):
    route_with_deployments(organisation, "backup", [{"api_base": dev_upstream_b.url, "model": "dev-large"}])
    route_with_deployments(organisation, "primary", [{"api_base": dev_upstream.url}], fallbacks=["backup"])
    dev_upstream.control(fail_status=500)
    response = chat(proxy, "primary")
    assert response.status_code == 200, response.text
    assert dev_upstream_b.stats()["last_request"]["model"] == "dev-large"
    row = log_of(response.headers["x-request-id"])
    assert row.model == "primary"
    assert [a["model"] for a in row.attempts] == ["dev-small", "dev-large"]


def test_connect_error_is_transient(proxy, organisation, dev_upstream):
    from tests.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    route_with_deployments(organisation, "half-dead", [{"api_base": dead, "name": "dead", "weight": 10_000},
                                                       {"api_base": dev_upstream.url, "name": "alive"}])  # fmt: skip
    response = chat(proxy, "half-dead")
    assert response.status_code == 200
    assert log_of(response.headers["x-request-id"]).attempts[0]["error_type"] == "upstream_error"


def test_circuit_opens_after_failures_then_half_open_probe_closes_it(
    proxy, organisation, dev_upstream, dev_upstream_b, settings
):
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 2
    settings.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS = 1.0
    _, (a, _b) = route_with_deployments(
        organisation,
        "cb",
        [
            {"api_base": dev_upstream.url, "name": "a", "weight": 10_000},
            {"api_base": dev_upstream_b.url, "name": "b", "weight": 1},
        ],
    )
    dev_upstream.control(fail_status=500)
    for _ in range(2):
        assert chat(proxy, "cb").status_code == 200  # a fails, b answers
    assert dev_upstream.stats()["requests"] == 2
    assert deployment_health_snapshot(deployment_ids=[a.id])[a.id]["state"] == "open"
    # While open, `a` is not even tried.
    for _ in range(3):
        response = chat(proxy, "cb")
        assert response.headers["x-steward-model-deployment"] == "b"
    assert dev_upstream.stats()["requests"] == 2
    # After the cooldown one probe goes to `a`; it succeeds and the circuit closes.
    dev_upstream.reset()
    # Until the 1 s cooldown ends `b` answers; the first request after it is the probe that goes to `a`.
    wait_until(lambda: chat(proxy, "cb").headers["x-steward-model-deployment"] == "a", timeout=5, interval=0.1)
    # (the outcome is written just after the answer went out)
    wait_until(lambda: deployment_health_snapshot(deployment_ids=[a.id])[a.id]["state"] == "closed", timeout=5)
    # The transitions are audited by the log consumer.
    from audit.models import AuditEvent
    from proxy.requestlog import circuit_events_audit

    circuit_events_audit()
    actions = list(AuditEvent.objects.filter(target_id=str(a.id)).values_list("action", flat=True))
    assert "deployment.circuit_opened" in actions and "deployment.circuit_closed" in actions


def test_every_deployment_open_is_503(proxy, organisation, dev_upstream, settings):
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    settings.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS = 30
    route_with_deployments(organisation, "lonely", [{"api_base": dev_upstream.url}])
    dev_upstream.control(fail_status=500)
    assert chat(proxy, "lonely").status_code == 502
    response = chat(proxy, "lonely")
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert 1 <= int(response.headers["retry-after"]) <= 30


def test_least_in_flight_spreads_concurrent_requests(proxy, organisation, dev_upstream, dev_upstream_b):
    from concurrent.futures import ThreadPoolExecutor

    route_with_deployments(organisation, "lif", [dev_upstream, dev_upstream_b], strategy="least_in_flight")
    dev_upstream.control(delay_ms=300)
    dev_upstream_b.control(delay_ms=300)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: chat(proxy, "lif").status_code, range(6)))
    assert statuses == [200] * 6
    assert dev_upstream.stats()["max_in_flight"] == 3 and dev_upstream_b.stats()["max_in_flight"] == 3


def test_active_health_check_opens_and_closes_circuits(organisation, dev_upstream, settings, transactional_db, client):
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    from tests.helpers import free_port

    _, (good, bad) = route_with_deployments(
        organisation,
        "hc",
        [
            {"api_base": dev_upstream.url, "name": "good"},
            {"api_base": f"http://127.0.0.1:{free_port()}/v1", "name": "bad"},
        ],
    )
    results = deployments_check_all(timeout=1)
    assert results == {good.id: True, bad.id: False}
    snapshot = deployment_health_snapshot(deployment_ids=[good.id, bad.id])
    assert snapshot[good.id]["state"] == "closed" and snapshot[good.id]["active_check"]["ok"]
    assert snapshot[bad.id]["state"] == "open" and snapshot[bad.id]["active_check"]["error"]

    from core.health import readiness_check_register  # noqa: F401  (registered by ProxyConfig.ready)
    from proxy.health import readiness_check

    check = readiness_check()
    assert check.critical is False and check.ok is False
    assert check.detail["deployments"][f"{organisation.id}/hc/bad"] == "open"
    settings.STEWARD_READYZ_DETAILS = True  # anonymous callers get no per-deployment details otherwise
    readyz = client.get("/readyz").json()
    assert readyz["checks"]["upstream_deployments"]["deployments"][f"{organisation.id}/hc/bad"] == "open"
    assert "down" not in readyz and readyz["degraded"] == ["upstream_deployments"]  # non-critical

    # The deployment comes back: the next active check closes its circuit.
    from proxy.services import deployment_update
    from tests.helpers import ACTOR

    deployment_update(deployment=bad, api_base=dev_upstream.url, actor=ACTOR)
    assert deployments_check_all(timeout=1)[bad.id] is True
    assert deployment_health_snapshot(deployment_ids=[bad.id])[bad.id]["state"] == "closed"


def test_a_deployment_whose_credentials_are_refused_is_routed_around_and_its_circuit_opens(
    proxy, organisation, dev_upstream, dev_upstream_b, settings
):
    """An upstream 401 blames the deployment's credentials, not the client's key: another
    deployment serves the request, the failures open the circuit, and with nowhere else to go
    the client gets 502, not a 401 that would send it checking its own key."""
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 2
    dev_upstream.control(api_key="the-right-key")
    _, (stale, _) = route_with_deployments(
        organisation,
        "keyed",
        [
            {"api_base": dev_upstream.url, "name": "stale", "credential_secret": "an-old-key", "weight": 10_000},
            {"api_base": dev_upstream_b.url, "name": "other", "weight": 1},
        ],
    )
    response = chat(proxy, "keyed")
    assert response.status_code == 200 and response.headers["x-steward-model-deployment"] == "other"
    [refused, served] = log_of(response.headers["x-request-id"]).attempts
    assert (refused["deployment"], refused["http_status"], refused["error_type"]) == (
        "stale",
        401,
        "upstream_misconfigured",
    )
    assert served["status"] == "ok"
    chat(proxy, "keyed")
    assert deployment_health_snapshot(deployment_ids=[stale.id])[stale.id]["state"] == "open"

    route_with_deployments(
        organisation, "keyed-alone", [{"api_base": dev_upstream.url, "credential_secret": "an-old-key"}]
    )
    response = chat(proxy, "keyed-alone")
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_misconfigured" and "credentials" in error["message"]

    # The active check sees the refusal too, and keeps the circuit open instead of closing it.
    assert deployments_check_all(timeout=1)[stale.id] is False
    assert (
        "credentials refused"
        in deployment_health_snapshot(deployment_ids=[stale.id])[stale.id]["active_check"]["error"]
    )


def test_an_upstream_404_goes_back_to_the_client_and_leaves_the_circuit_alone(
    proxy, organisation, dev_upstream, settings
):
    """A 404 may be about the request (a chat model asked for a text completion): it is not the
    deployment's fault, so the client gets it and the deployment's other traffic is untouched."""
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    typo = {"api_base": dev_upstream.url, "model": "dev-smal"}
    _, (deployment,) = route_with_deployments(organisation, "typo", [typo])
    for _ in range(2):
        response = chat(proxy, "typo")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "upstream_rejected"
    assert deployment_health_snapshot(deployment_ids=[deployment.id])[deployment.id]["state"] == "closed"

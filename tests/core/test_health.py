import pytest


@pytest.mark.django_db
def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["x-request-id"]


@pytest.mark.django_db
def test_readyz_reports_database_and_redis(client, admin_user):
    client.force_login(admin_user)  # the per-check details are for staff (tests/core/test_security_readyz.py)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert body["checks"]["redis"]["ok"] is True


@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_down(client, settings):
    from core.redis import redis_reset_clients

    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_reset_clients()
    try:
        response = client.get("/readyz")
    finally:
        redis_reset_clients()
    assert response.status_code == 503
    assert response.json()["down"] == ["redis"]


@pytest.mark.django_db
def test_metrics_in_prometheus_text_format(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["content-type"].startswith("text/plain")
    assert b"# TYPE" in response.content

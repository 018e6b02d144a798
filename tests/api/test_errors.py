"""Every error under /api/ is the JSON envelope with the request id, never an HTML page, with DEBUG
on as under make run: an unexpected exception in a DRF view or a plain Django view, an unknown URL."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from accounts.roles import Role

pytestmark = pytest.mark.django_db


@pytest.fixture
def debug_client(settings):
    settings.DEBUG = True
    # Django's test client re-raises a view's exception by default; a real client gets the response.
    return Client(raise_request_exception=False)


def _assert_envelope(response, *, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    text = response.content.decode()
    assert "<html" not in text.lower() and "Traceback" not in text and "secret detail" not in text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status
    assert error["request_id"] == response["X-Request-ID"]
    return error


def test_an_unexpected_error_in_a_drf_view_is_the_json_envelope(debug_client, api_key_factory, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("secret detail of a bug")

    monkeypatch.setattr("registry.selectors.prompts_list", broken)
    _key, secret = api_key_factory(roles=[Role.VIEWER])
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = debug_client.get("/api/v1/prompts/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    _assert_envelope(response, status=500, code="internal_error")
    # Still logged with its traceback, as Django logs any 500.
    logged = [r for r in caplog.records if r.name == "django.request" and r.levelno == logging.ERROR]
    assert logged and logged[0].exc_info and "secret detail" in str(logged[0].exc_info[1])


@pytest.mark.urls("tests.api.urls_boom")
def test_an_unexpected_error_in_a_plain_django_view_under_api_is_the_json_envelope(debug_client):
    _assert_envelope(debug_client.get("/api/boom/"), status=500, code="internal_error")


def test_an_unknown_url_under_api_is_a_json_404(debug_client):
    _assert_envelope(debug_client.get("/api/v1/no-such-thing/"), status=404, code="not_found")


def test_pages_outside_api_keep_their_html_errors(debug_client):
    response = debug_client.get("/no-such-page/")
    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")

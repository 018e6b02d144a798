"""JSON log lines carry the request id, including Django's own request logging."""

from __future__ import annotations

import io
import json
import logging

import pytest

from core.logging import JsonFormatter, RequestIdFilter


@pytest.fixture
def json_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logging.getLogger().addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.django_db
def test_request_log_lines_are_json_with_the_request_id(client, json_lines):
    response = client.get("/api/v1/audit-events/", HTTP_X_REQUEST_ID="req-abc-123")
    assert response.status_code in (401, 403)
    assert response["x-request-id"] == "req-abc-123"
    assert response.json()["error"]["request_id"] == "req-abc-123"
    lines = [line for line in json_lines() if line["logger"] == "django.request"]
    assert lines, json_lines()
    assert lines[0]["request_id"] == "req-abc-123"
    assert {"time", "level", "message"} <= set(lines[0])


@pytest.mark.django_db
def test_a_forged_request_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID='x"\n{"level": "ERROR"}')
    assert response["x-request-id"].isalnum() and len(response["x-request-id"]) == 32

"""Every error the proxy answers is an OpenAI envelope with the right status, and is logged."""

from __future__ import annotations

import threading

import pytest
import requests

from proxy.services import route_create
from tests.helpers import ACTOR, log_of, route_with_deployments, wait_until

CHAT = {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}]}


def _envelope(response, status: int, code: str, param=None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def post(proxy, body=None, *, data=None, headers=None, path="/chat/completions"):
    return requests.post(
        proxy.url + path,
        json=body if data is None else None,
        data=data,
        headers=headers if headers is not None else proxy.headers(**({"Content-Type": "application/json"})),
        timeout=15,
    )


def test_invalid_json_is_400(proxy):
    response = post(proxy, data=b"{not json")
    _envelope(response, 400, "invalid_json")
    row = log_of(response.headers["x-request-id"])
    assert row.status == "rejected" and row.http_status == 400


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({**CHAT, "temperature": 5}, "temperature", "invalid_value"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role", "invalid_value"),
        ({"model": "dev-small"}, "messages", "missing_required_parameter"),
        ({"messages": CHAT["messages"]}, "model", "missing_required_parameter"),
        ({**CHAT, "max_tokens": "ten"}, "max_tokens", "invalid_value"),
        ({**CHAT, "stream": "yes"}, "stream", "invalid_value"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(proxy, body, param, code):
    error = _envelope(post(proxy, body), 400, code, param=param)
    assert param in error["message"]


def test_extra_fields_pass_through_to_the_upstream(proxy, dev_upstream):
    response = post(proxy, {**CHAT, "logprobs": False, "metadata": {"team": "x"}})
    assert response.status_code == 200
    assert dev_upstream.stats()["last_request"]["metadata"] == {"team": "x"}


def test_missing_and_bad_keys_are_401(proxy):
    _envelope(post(proxy, CHAT, headers={}), 401, "missing_api_key")
    _envelope(post(proxy, CHAT, headers={"Authorization": "Bearer stw_not-a-key"}), 401, "invalid_api_key")


def test_model_not_allowed_is_403_and_logged(proxy, api_key_factory):
    _, secret = api_key_factory(allowed_models=["other"])
    response = post(proxy, CHAT, headers={"Authorization": f"Bearer {secret}"})
    _envelope(response, 403, "model_not_allowed", param="model")
    row = log_of(response.headers["x-request-id"])
    assert row.status == "rejected" and row.http_status == 403 and row.error_type == "model_not_allowed"


def test_unknown_model_and_url_are_404(proxy):
    _envelope(post(proxy, {**CHAT, "model": "gpt-unknown"}), 404, "model_not_found", param="model")
    _envelope(post(proxy, CHAT, path="/nothing/here"), 404, "unknown_url")
    _envelope(requests.post(proxy.url, json=CHAT, headers=proxy.headers(), timeout=5), 404, "unknown_url")
    response = requests.get(proxy.url + "/chat/completions", headers=proxy.headers(), timeout=5)
    _envelope(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_body_too_large_is_413(proxy, settings):
    settings.STEWARD_PROXY_MAX_BODY_BYTES = 2048
    response = post(proxy, {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})
    _envelope(response, 413, "request_too_large")
    assert log_of(response.headers["x-request-id"]).http_status == 413


def test_key_rate_limit_is_429_with_retry_after(proxy, api_key_factory):
    _, secret = api_key_factory(rpm_limit=2)
    headers = {"Authorization": f"Bearer {secret}"}
    assert [post(proxy, CHAT, headers=headers).status_code for _ in range(2)] == [200, 200]
    response = post(proxy, CHAT, headers=headers)
    _envelope(response, 429, "rate_limit_exceeded")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert log_of(response.headers["x-request-id"]).status == "rejected"


def test_key_in_flight_cap_is_429(proxy, dev_upstream, api_key_factory):
    _, secret = api_key_factory(max_in_flight=1)
    headers = {"Authorization": f"Bearer {secret}"}
    dev_upstream.control(delay_ms=800)
    slow = threading.Thread(target=post, args=(proxy, CHAT), kwargs={"headers": headers})
    slow.start()
    try:
        wait_until(lambda: dev_upstream.stats()["in_flight"] == 1, timeout=5)
        response = post(proxy, CHAT, headers=headers)
        _envelope(response, 429, "rate_limit_exceeded")
        assert response.headers["retry-after"] == "1"
    finally:
        slow.join()
    assert post(proxy, CHAT, headers=headers).status_code == 200  # released once the first finished


def test_process_in_flight_cap_is_503(proxy, dev_upstream, settings):
    settings.STEWARD_PROXY_MAX_IN_FLIGHT = 1
    dev_upstream.control(delay_ms=800)
    slow = threading.Thread(target=post, args=(proxy, CHAT))
    slow.start()
    try:
        wait_until(lambda: dev_upstream.stats()["in_flight"] == 1, timeout=5)
        response = post(proxy, CHAT)
        _envelope(response, 503, "overloaded")
        assert response.headers["retry-after"] == "1"
    finally:
        slow.join()


def test_upstream_failure_is_502_and_logged_as_error(proxy, dev_upstream):
    dev_upstream.control(fail_status=500)
    response = post(proxy, CHAT)
    _envelope(response, 502, "upstream_error")
    row = log_of(response.headers["x-request-id"])
    assert row.status == "error" and row.http_status == 502
    assert [a["http_status"] for a in row.attempts] == [500]


def test_upstream_rejection_keeps_its_status(proxy, dev_upstream):
    dev_upstream.control(fail_status=400)
    _envelope(post(proxy, CHAT), 400, "upstream_rejected")
    assert dev_upstream.stats()["requests"] == 1  # a permanent error is not retried


def test_model_without_deployments_is_503(proxy, organisation):
    route_create(organisation=organisation, name="empty", actor=ACTOR)
    response = post(proxy, {**CHAT, "model": "empty"})
    _envelope(response, 503, "no_deployment")
    assert "retry-after" in response.headers


def test_hanging_upstream_is_504(proxy, organisation, dev_upstream):
    route_with_deployments(
        organisation, "slow", [{"api_base": dev_upstream.url, "timeout_seconds": 0.5}], deadline_seconds=0.8
    )
    dev_upstream.control(hang=True)
    response = post(proxy, {**CHAT, "model": "slow"})
    _envelope(response, 504, response.json()["error"]["code"])
    assert response.json()["error"]["code"] in ("upstream_timeout", "deadline_exceeded")

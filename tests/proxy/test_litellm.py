"""litellm as a client pointed at Steward, and deployments of kind "litellm" (Steward calling through litellm)."""

from __future__ import annotations

import gc
import os

import openai
import pytest
import requests

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # (after the env var: no network at import)

from tests.helpers import log_of, route_with_deployments


def test_litellm_client_completion_and_stream(proxy):
    response = litellm.completion(
        model="openai/dev-small",
        api_base=proxy.url,
        api_key=proxy.secret,
        messages=[{"role": "user", "content": "hello via litellm"}],
    )
    assert response.choices[0].message.content.startswith("Steward dev reply")
    assert response.usage.completion_tokens > 0
    stream = litellm.completion(
        model="openai/dev-small",
        api_base=proxy.url,
        api_key=proxy.secret,
        messages=[{"role": "user", "content": "stream via litellm"}],
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("Steward dev reply")


def test_litellm_client_sees_steward_errors(proxy):
    with pytest.raises(litellm.exceptions.NotFoundError):
        litellm.completion(
            model="openai/unknown-model",
            api_base=proxy.url,
            api_key=proxy.secret,
            messages=[{"role": "user", "content": "x"}],
        )


def test_litellm_kind_deployment_runs_the_same_pipeline(proxy, organisation, dev_upstream, api_key_factory):
    route_with_deployments(
        organisation,
        "via-litellm",
        [
            {
                "api_base": dev_upstream.url,
                "kind": "litellm",
                "model": "openai/dev-small",
                "credential_secret": "upstream-key",
            }
        ],
    )
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="via-litellm", messages=[{"role": "user", "content": "through litellm"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Steward dev reply")
    assert dev_upstream.stats()["last_request"]["model"] == "dev-small"
    assert dev_upstream.stats()["last_headers"]["authorization_present"]
    row = log_of(raw.headers["x-request-id"])
    assert row.status == "ok" and row.completion_tokens == completion.usage.completion_tokens

    # Streaming, with usage asked of the upstream and stripped for the client.
    with client.chat.completions.with_streaming_response.create(
        model="via-litellm", messages=[{"role": "user", "content": "stream it"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Steward dev reply")
    assert all(c.usage is None for c in chunks)
    row = log_of(request_id)
    assert row.stream and row.completion_tokens > 0 and not row.usage_estimated

    # Governance applies identically: the key's rate limit holds on this path too.
    _, secret = api_key_factory(rpm_limit=1)
    limited = openai.OpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
    limited.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "1"}])
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model="via-litellm", messages=[{"role": "user", "content": "2"}])


def test_litellm_kind_transient_errors_fail_over(proxy, organisation, dev_upstream, dev_upstream_b):
    route_with_deployments(
        organisation,
        "lm-pair",
        [{"api_base": dev_upstream.url, "kind": "litellm", "model": "openai/dev-small", "name": "a", "weight": 10_000},
         {"api_base": dev_upstream_b.url, "name": "b"}],
    )  # fmt: skip
    dev_upstream.control(fail_status=503)
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="lm-pair", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-steward-model-deployment"] == "b"
    row = log_of(raw.headers["x-request-id"])
    assert [(a["deployment"], a["status"]) for a in row.attempts] == [("a", "error"), ("b", "ok")]


def test_litellm_kind_text_completions_reuse_a_pooled_connection(proxy, organisation, dev_upstream, caplog):
    """Left to itself, litellm opens a new client, and connection, for every OpenAI text completion
    and never closes it. (Streams are closed by the openai SDK before the body's last bytes, which
    costs their connection: that one is not reused either way.)"""
    route_with_deployments(
        organisation,
        "lm-text",
        [{"api_base": dev_upstream.url, "kind": "litellm", "model": "openai/dev-small", "credential_secret": "k"}],
    )
    body = {"model": "lm-text", "prompt": "Once upon", "max_tokens": 3}
    for _ in range(8):
        response = requests.post(f"{proxy.url}/completions", json=body, headers=proxy.headers(), timeout=15)
        assert response.status_code == 200 and response.json()["choices"][0]["text"].startswith("Steward")
    assert dev_upstream.stats()["requests"] == 8
    assert len(dev_upstream.stats()["client_ports"]) == 1
    gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]

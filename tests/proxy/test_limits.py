"""Per-deployment RPM/TPM and per-key TPM, enforced in Redis."""

from __future__ import annotations

import time

import requests

from core.redis import redis_client
from tests.helpers import log_of, route_with_deployments, wait_until

BODY = {"messages": [{"role": "user", "content": "count these words please"}]}


def chat(proxy, model: str, secret: str | None = None):
    headers = {"Authorization": f"Bearer {secret or proxy.secret}"}
    return requests.post(f"{proxy.url}/chat/completions", json={"model": model, **BODY}, headers=headers, timeout=10)


def test_deployment_rpm_moves_traffic_to_the_next_deployment_then_429(
    proxy, organisation, dev_upstream, dev_upstream_b
):
    a = {"api_base": dev_upstream.url, "name": "a", "weight": 10_000, "rpm_limit": 2}
    b = {"api_base": dev_upstream_b.url, "name": "b", "rpm_limit": 1}
    route_with_deployments(organisation, "capped", [a, b])
    served = [chat(proxy, "capped").headers.get("x-steward-model-deployment") for _ in range(3)]
    assert served == ["a", "a", "b"]
    response = chat(proxy, "capped")
    assert response.status_code == 429 and response.json()["error"]["code"] == "deployment_rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


def test_deployment_tpm(proxy, organisation, dev_upstream):
    route_with_deployments(organisation, "tpm", [{"api_base": dev_upstream.url, "tpm_limit": 10}])
    first = chat(proxy, "tpm")
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] >= 10
    # The tokens are counted when the answer is released; the next request finds the window full.
    wait_until(lambda: chat(proxy, "tpm").status_code == 429, timeout=5)


def test_key_tpm(proxy, api_key_factory):
    _, secret = api_key_factory(tpm_limit=10)
    first = chat(proxy, "dev-small", secret)
    assert first.status_code == 200
    second = chat(proxy, "dev-small", secret)
    assert second.status_code == 429 and "tokens per minute" in second.json()["error"]["message"]
    assert log_of(second.headers["x-request-id"]).error_type == "rate_limit_exceeded"


def test_token_windows_expire_a_minute_after_their_newest_bucket(proxy, api_key_factory):
    """A key's TPM window lives 70 s from the start of its newest ten-second bucket: long enough for
    every bucket it still counts, and no longer once the key is idle."""
    key, secret = api_key_factory(tpm_limit=1_000_000)
    client = redis_client()
    window = f"stw:rl:k:{key.pk}:t"
    assert chat(proxy, "dev-small", secret).status_code == 200
    wait_until(lambda: client.exists(window))
    assert 60_000 < client.pttl(window) <= 70_000

    # Only an older bucket left, about to expire: the next request's bucket is new and renews the window.
    bucket = int(time.time() // 10)
    client.delete(window)
    client.hset(window, str(bucket - 1), 5)
    client.pexpire(window, 2_000)
    assert chat(proxy, "dev-small", secret).status_code == 200
    wait_until(lambda: client.hlen(window) == 2)
    assert 60_000 < client.pttl(window) <= 70_000


def test_key_rpm_counts_only_the_last_minute_and_waits_for_its_oldest_request(proxy, api_key_factory):
    """The key's request log keeps entries past the minute until they are trimmed now and then:
    they must not count, nor decide the wait."""
    key, secret = api_key_factory(rpm_limit=3)
    client = redis_client()
    log = f"stw:rl:k:{key.pk}:r"
    now_ms = int(time.time() * 1000)
    client.zadd(log, {f"stale-{n}": now_ms - 61_000 - n for n in range(5)})
    client.zadd(log, {"recent": now_ms - 30_000})
    client.pexpire(log, 61_000)
    assert [chat(proxy, "dev-small", secret).status_code for _ in range(2)] == [200, 200]
    refused = chat(proxy, "dev-small", secret)
    assert refused.status_code == 429 and "requests per minute" in refused.json()["error"]["message"]
    # The oldest entry that still counts is 30 s old: a slot frees in about 30 s, not at once.
    assert 25 <= int(refused.headers["retry-after"]) <= 31
    assert client.zcount(log, "-inf", now_ms - 60_000) == 0  # refusing trimmed what had expired

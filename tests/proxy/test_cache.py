"""The exact-match response cache: per organisation, per key or route, bypassed by Cache-Control: no-cache."""

from __future__ import annotations

import requests

from proxy.services import route_update
from tests.proxy.conftest import ACTOR, log_of

BODY = {"model": "dev-small", "messages": [{"role": "user", "content": "cache me"}], "temperature": 0}


def post(proxy, body=BODY, **headers):
    return requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(**headers), timeout=10)


def test_cache_enabled_on_the_route(proxy, dev_upstream, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        route_update(route=proxy.route, cache_enabled=True, cache_ttl_seconds=60, actor=ACTOR)
    from tests.proxy.conftest import wait_for

    first = wait_for(lambda: post(proxy).headers.get("x-steward-cache") == "miss" or None, timeout=3)
    assert first
    # (the entry is written just after the first answer went out)
    hit = wait_for(lambda: (r := post(proxy)).headers.get("x-steward-cache") == "hit" and r, timeout=3)
    assert hit.status_code == 200 and hit.json()["choices"][0]["message"]["content"]
    upstream_calls = dev_upstream.stats()["requests"]
    assert post(proxy).headers["x-steward-cache"] == "hit"
    assert dev_upstream.stats()["requests"] == upstream_calls
    row = log_of(hit.headers["x-request-id"])
    assert row.status == "cached" and row.cache_hit and row.attempts == []
    assert row.prompt_tokens > 0  # what the cached answer reported, at zero upstream cost

    # A different request is a different entry; no-cache bypasses (and the upstream is called again).
    assert post(proxy, {**BODY, "temperature": 1}).headers["x-steward-cache"] == "miss"
    bypass = post(proxy, **{"Cache-Control": "no-cache"})
    assert "x-steward-cache" not in bypass.headers
    assert dev_upstream.stats()["requests"] == upstream_calls + 2


def test_cache_enabled_on_the_key_only(proxy, dev_upstream, api_key_factory):
    _, cached_secret = api_key_factory(cache_enabled=True)
    headers = {"Authorization": f"Bearer {cached_secret}"}
    url = f"{proxy.url}/chat/completions"
    assert requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "miss"
    from tests.proxy.conftest import wait_for

    wait_for(lambda: requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "hit")
    # The route has no cache: a key without it always reaches the upstream.
    before = dev_upstream.stats()["requests"]
    assert "x-steward-cache" not in post(proxy).headers
    assert dev_upstream.stats()["requests"] == before + 1


def test_cache_is_per_organisation(proxy, other_organisation, dev_upstream, api_key_factory):
    from tests.proxy.conftest import route_with_deployments, wait_for

    _, mine = api_key_factory(cache_enabled=True)
    route_with_deployments(other_organisation, "dev-small", [dev_upstream])
    _, theirs = api_key_factory(org=other_organisation, cache_enabled=True)
    url = f"{proxy.url}/chat/completions"
    requests.post(url, json=BODY, headers={"Authorization": f"Bearer {mine}"}, timeout=10)
    wait_for(
        lambda: (
            requests.post(url, json=BODY, headers={"Authorization": f"Bearer {mine}"}, timeout=10).headers[
                "x-steward-cache"
            ]
            == "hit"
        )
    )
    other = requests.post(url, json=BODY, headers={"Authorization": f"Bearer {theirs}"}, timeout=10)
    assert other.headers["x-steward-cache"] == "miss"


def test_streams_and_errors_are_not_cached(proxy, dev_upstream, api_key_factory):
    _, secret = api_key_factory(cache_enabled=True)
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{proxy.url}/chat/completions"
    dev_upstream.control(fail_status=500, fail_count=1)
    assert requests.post(url, json=BODY, headers=headers, timeout=10).status_code == 502
    assert requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "miss"
    streamed = requests.post(url, json={**BODY, "stream": True}, headers=headers, timeout=10)
    assert "x-steward-cache" not in streamed.headers

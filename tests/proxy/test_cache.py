"""The exact-match response cache: per organisation, per key or route, bypassed by Cache-Control: no-cache."""

from __future__ import annotations

import socket

import openai
import orjson
import requests

from proxy.services import route_update
from tests.helpers import ACTOR, log_of, route_with_deployments, wait_until

BODY = {"model": "dev-small", "messages": [{"role": "user", "content": "cache me"}], "temperature": 0}


def post(proxy, body=BODY, **headers):
    return requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(**headers), timeout=10)


def test_cache_enabled_on_the_route(proxy, dev_upstream, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        route_update(route=proxy.route, cache_enabled=True, cache_ttl_seconds=60, actor=ACTOR)
    first = wait_until(lambda: post(proxy).headers.get("x-steward-cache") == "miss" or None, timeout=3)
    assert first
    # (the entry is written just after the first answer went out)
    hit = wait_until(lambda: (r := post(proxy)).headers.get("x-steward-cache") == "hit" and r, timeout=3)
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
    wait_until(lambda: requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "hit")
    # The route has no cache: a key without it always reaches the upstream.
    before = dev_upstream.stats()["requests"]
    assert "x-steward-cache" not in post(proxy).headers
    assert dev_upstream.stats()["requests"] == before + 1


def test_cache_is_per_organisation(proxy, other_organisation, dev_upstream, api_key_factory):
    _, mine = api_key_factory(cache_enabled=True)
    route_with_deployments(other_organisation, "dev-small", [dev_upstream])
    _, theirs = api_key_factory(org=other_organisation, cache_enabled=True)
    url = f"{proxy.url}/chat/completions"
    requests.post(url, json=BODY, headers={"Authorization": f"Bearer {mine}"}, timeout=10)
    wait_until(
        lambda: (
            requests.post(url, json=BODY, headers={"Authorization": f"Bearer {mine}"}, timeout=10).headers[
                "x-steward-cache"
            ]
            == "hit"
        )
    )
    other = requests.post(url, json=BODY, headers={"Authorization": f"Bearer {theirs}"}, timeout=10)
    assert other.headers["x-steward-cache"] == "miss"


def test_errors_are_not_cached(proxy, dev_upstream, api_key_factory):
    _, secret = api_key_factory(cache_enabled=True)
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{proxy.url}/chat/completions"
    dev_upstream.control(fail_status=500, fail_count=1)
    assert requests.post(url, json=BODY, headers=headers, timeout=10).status_code == 502
    assert requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "miss"


def sse(response) -> tuple[list[dict], bytes]:
    """The JSON events of a streamed answer, and its body as it came."""
    raw = response.content
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"data: [DONE]") == 1
    events = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    return events, raw


def text_of(events: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events if c["choices"])


def test_streams_are_cached_and_replayed_as_streams(proxy, dev_upstream, api_key_factory):
    _, secret = api_key_factory(cache_enabled=True)
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{proxy.url}/chat/completions"
    dev_upstream.control(reply="a cached stream: naïve café 😀 日本語")
    body = {**BODY, "stream": True}
    miss = requests.post(url, json=body, headers=headers, timeout=10)
    assert miss.headers["x-steward-cache"] == "miss" and miss.headers["content-type"] == "text/event-stream"
    miss_events, miss_raw = sse(miss)
    assert text_of(miss_events) == "a cached stream: naïve café 😀 日本語"
    assert not any("usage" in e for e in miss_events)  # Steward asked for usage; the client did not get it

    hit = wait_until(
        lambda: (
            (r := requests.post(url, json=body, headers=headers, timeout=10)).headers["x-steward-cache"] == "hit" and r
        ),
        timeout=3,
    )
    assert hit.headers["content-type"] == "text/event-stream"
    assert sse(hit)[1] == miss_raw  # the same events, byte for byte
    upstream_calls = dev_upstream.stats()["requests"]
    again = requests.post(url, json=body, headers=headers, timeout=10)
    assert again.headers["x-steward-cache"] == "hit" and dev_upstream.stats()["requests"] == upstream_calls
    row = log_of(hit.headers["x-request-id"])
    assert row.status == "cached" and row.cache_hit and row.stream and row.attempts == []
    assert row.prompt_tokens > 0 and row.completion_tokens > 0 and not row.usage_estimated  # from the stored usage
    miss_row = log_of(miss.headers["x-request-id"])
    assert (row.prompt_tokens, row.completion_tokens) == (miss_row.prompt_tokens, miss_row.completion_tokens)

    # The same request without streaming, or asking for usage, is another entry; no-cache bypasses.
    assert requests.post(url, json=BODY, headers=headers, timeout=10).headers["x-steward-cache"] == "miss"
    with_usage = {**body, "stream_options": {"include_usage": True}}
    assert requests.post(url, json=with_usage, headers=headers, timeout=10).headers["x-steward-cache"] == "miss"
    replay = wait_until(
        lambda: (
            (r := requests.post(url, json=with_usage, headers=headers, timeout=10)).headers["x-steward-cache"] == "hit"
            and r
        ),
        timeout=3,
    )
    assert sse(replay)[0][-1]["usage"]["completion_tokens"] == row.completion_tokens
    before = dev_upstream.stats()["requests"]
    bypass = requests.post(url, json=body, headers={**headers, "Cache-Control": "no-cache"}, timeout=10)
    assert "x-steward-cache" not in bypass.headers and dev_upstream.stats()["requests"] == before + 1

    # The official SDK reads a replayed stream like any other.
    client = openai.OpenAI(base_url=proxy.url, api_key=secret, max_retries=0)
    chunks = client.chat.completions.create(model="dev-small", messages=BODY["messages"], temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text_of(miss_events)
    assert dev_upstream.stats()["requests"] == before + 1


def test_a_stream_cut_short_is_not_cached(proxy, dev_upstream, api_key_factory):
    _, secret = api_key_factory(cache_enabled=True)
    dev_upstream.control(chunk_delay_ms=50, reply=" ".join(f"w{i}" for i in range(100)))
    host, port = proxy.url.split("//")[1].split("/")[0].split(":")
    payload = orjson.dumps({**BODY, "stream": True})
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {secret}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while b"w2" not in received:
            received += sock.recv(65536)
    wait_until(lambda: dev_upstream.stats()["cancelled"] == 1, timeout=5)
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in received.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    # Logged after its settlement went to Redis: a partial entry, had one been stored, would be there now.
    assert log_of(request_id).status == "cancelled"
    dev_upstream.control(chunk_delay_ms=0)
    # The hang-up left nothing behind: the next request reaches the upstream and gets the whole stream.
    before = dev_upstream.stats()["requests"]
    whole = requests.post(
        f"{proxy.url}/chat/completions",
        json={**BODY, "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert whole.headers["x-steward-cache"] == "miss" and dev_upstream.stats()["requests"] == before + 1
    assert text_of(sse(whole)[0]).endswith("w99")


def test_a_cached_stream_keeps_the_usage_steward_estimated(proxy, dev_upstream, api_key_factory):
    """An upstream that reports no usage: the miss is counted with the tokenizer, and the hit is
    logged with that estimate rather than with nothing."""
    _, secret = api_key_factory(cache_enabled=True)
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{proxy.url}/chat/completions"
    dev_upstream.control(omit_usage=True)
    body = {**BODY, "stream": True}
    miss = requests.post(url, json=body, headers=headers, timeout=10)
    assert miss.headers["x-steward-cache"] == "miss"
    miss_row = log_of(miss.headers["x-request-id"])
    assert miss_row.usage_estimated and miss_row.completion_tokens > 0
    hit = wait_until(
        lambda: (
            (r := requests.post(url, json=body, headers=headers, timeout=10)).headers["x-steward-cache"] == "hit" and r
        ),
        timeout=3,
    )
    assert sse(hit)[1] == sse(miss)[1]
    row = log_of(hit.headers["x-request-id"])
    assert row.status == "cached" and row.usage_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (miss_row.prompt_tokens, miss_row.completion_tokens)

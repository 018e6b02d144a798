"""The request-log consumer: idempotent writes, billing hand-off, reclaiming a dead consumer's entries, bodies."""

from __future__ import annotations

from datetime import timedelta

import orjson
import requests
from django.utils import timezone

from proxy.models import RequestBody, RequestLog
from proxy.requestlog import GROUP, STREAM_KEY, records_write, request_log_drain
from proxy.services import proxy_settings_update, request_bodies_purge
from tests.helpers import ACTOR, log_of


def _record(organisation, request_id: str, **extra) -> dict:
    return {
        "request_id": request_id,
        "organisation_id": organisation.id,
        "api_key_id": None,
        "team_id": None,
        "endpoint": "chat.completions",
        "model": "dev-small",
        "status": "ok",
        "http_status": 200,
        "started_at": timezone.now().isoformat(),
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "estimated": False,
        },
        "attempts": [
            {
                "n": 1,
                "deployment_id": None,
                "deployment": "d",
                "model": "dev-small",
                "status": "ok",
                "http_status": 200,
                "error_type": "",
                "latency_ms": 1.0,
                "usage": None,
            }
        ],
        **extra,
    }


def test_records_write_is_idempotent(organisation):
    records = [_record(organisation, "req_a"), _record(organisation, "req_b"), _record(organisation, "req_a")]
    assert records_write(records) == 2
    assert records_write(records) == 0
    assert RequestLog.objects.filter(organisation=organisation).count() == 2
    row = RequestLog.objects.get(request_id="req_a")
    assert row.prompt_tokens == 3 and row.completion_tokens == 4 and row.total_tokens == 7


def test_hourly_counts_add_up_across_batches_once_per_request(organisation, other_organisation):
    from proxy.models import RequestCountHourly
    from proxy.request_log_selectors import request_counts_last_day

    now = timezone.now()
    hour_ago = (now - timedelta(hours=1)).isoformat()
    first = [_record(organisation, "h1"), _record(organisation, "h2", status="error", http_status=502)]
    records_write(first)
    records_write([_record(organisation, "h3"), _record(organisation, "h4", started_at=hour_ago)])
    records_write(first)  # a re-delivered batch: no new rows, nothing added
    records_write([_record(organisation, "old", started_at=(now - timedelta(hours=30)).isoformat())])
    records_write([_record(other_organisation, "theirs")])

    counts = request_counts_last_day(organisation=organisation, now=now)
    assert counts["ok"] == 3 and counts["error"] == 1 and counts["rejected"] == 0
    assert sum(r.count for r in RequestCountHourly.objects.filter(organisation_id=organisation.id)) == 5
    assert request_counts_last_day(organisation=other_organisation, now=now)["ok"] == 1


def test_drain_reads_acks_and_reclaims_a_dead_consumers_entries(organisation, redis_clean, monkeypatch):
    import proxy.requestlog as requestlog

    redis_clean.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    for i in range(3):
        redis_clean.xadd(STREAM_KEY, {"r": orjson.dumps(_record(organisation, f"req_{i}"))})
    # A consumer takes the entries and dies before acknowledging them.
    redis_clean.xreadgroup(GROUP, "dead-worker", {STREAM_KEY: ">"}, count=10)
    assert request_log_drain(consumer="alive")["written"] == 0  # not idle long enough yet
    monkeypatch.setattr(requestlog, "RECLAIM_IDLE_MS", 0)
    stats = request_log_drain(consumer="alive")
    assert stats["written"] == 3
    assert redis_clean.xpending(STREAM_KEY, GROUP)["pending"] == 0 and redis_clean.xlen(STREAM_KEY) == 0


def test_drain_skips_unreadable_and_orphan_entries(organisation, redis_clean):
    redis_clean.xadd(STREAM_KEY, {"r": b"{broken"})
    redis_clean.xadd(STREAM_KEY, {"r": orjson.dumps({"request_id": "x", "organisation_id": None})})
    redis_clean.xadd(STREAM_KEY, {"r": orjson.dumps(_record(organisation, "req_ok"))})
    assert request_log_drain()["written"] == 1
    assert redis_clean.xlen(STREAM_KEY) == 0


def test_bodies_stored_only_when_enabled_and_purged_after_retention(proxy):
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "keep me"}]}
    url = f"{proxy.url}/chat/completions"
    first = requests.post(url, json=body, headers=proxy.headers(), timeout=10)
    log_of(first.headers["x-request-id"])
    assert not RequestBody.objects.exists()

    proxy_settings_update(organisation=proxy.organisation, store_bodies=True, body_retention_days=2, actor=ACTOR)
    from tests.helpers import wait_until

    def stored():
        r = requests.post(url, json=body, headers=proxy.headers(), timeout=10)
        log_of(r.headers["x-request-id"])
        return RequestBody.objects.filter(request_id=r.headers["x-request-id"]).first()

    saved = wait_until(stored, timeout=5)
    assert saved.request["messages"][0]["content"] == "keep me"
    assert saved.response["choices"][0]["message"]["content"].startswith("Steward dev reply")

    assert request_bodies_purge() == 0
    assert request_bodies_purge(now=timezone.now() + timedelta(days=3)) >= 1
    assert not RequestBody.objects.exists()
    assert RequestLog.objects.filter(request_id=saved.request_id).exists()  # the log row itself stays


def test_a_stored_stream_body_is_the_text_the_client_received(proxy, dev_upstream):
    """Stream chunks pass through unparsed; the stored body is read from them afterwards, in order."""
    import openai

    reply = "Zürich 漢字 🙂 " + " ".join(f"t{i}" for i in range(40))
    dev_upstream.control(reply=reply)
    proxy_settings_update(organisation=proxy.organisation, store_bodies=True, body_retention_days=2, actor=ACTOR)
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    from tests.helpers import wait_until

    def streamed():
        stream = client.chat.completions.with_raw_response.create(
            model="dev-small", messages=[{"role": "user", "content": "x"}], stream=True
        )
        request_id = stream.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        log_of(request_id)
        saved = RequestBody.objects.filter(request_id=request_id).first()
        return (text, saved) if saved is not None else None

    text, saved = wait_until(streamed, timeout=5)
    assert text == reply
    assert saved.response == {"stream": True, "content": reply}
    row = RequestLog.objects.get(request_id=saved.request_id)
    assert not row.usage_estimated and row.completion_tokens > 0


def test_requests_without_an_organisation_are_not_logged(proxy, redis_clean):
    r = requests.post(f"{proxy.url}/chat/completions", json={}, headers={"Authorization": "Bearer stw_nope"}, timeout=5)
    assert r.status_code == 401
    request_log_drain()
    assert redis_clean.xlen(STREAM_KEY) == 0 and not RequestLog.objects.exists()

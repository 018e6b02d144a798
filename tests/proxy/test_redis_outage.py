"""The proxy while its Redis is down: limits cannot be checked, so requests are refused at once
(fail closed, 503 with Retry-After) rather than served unlimited or left hanging, and service
resumes by itself when Redis is back."""

from __future__ import annotations

import asyncio
import subprocess
import time

import orjson
import pytest
import requests

from tests.helpers import free_port, wait_for_port, wait_until


@pytest.fixture
def own_redis(settings):
    """A Redis of this test's own, which it may kill; Steward's server (started after) uses it."""
    from bench.runner import redis_server_executable
    from core.redis import redis_reset_clients

    port = free_port()
    command = [redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    processes = [subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)]
    wait_for_port(port)
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    redis_reset_clients()

    def start() -> None:
        processes.append(subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_for_port(port)

    def stop() -> None:
        processes[-1].kill()
        processes[-1].wait()

    yield start, stop
    for process in processes:
        process.kill()
        process.wait()
    redis_reset_clients()


def test_requests_are_refused_at_once_while_redis_is_down_and_served_when_it_returns(own_redis, proxy):
    start, stop = own_redis
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}]}

    def ask(**extra):
        return requests.post(
            f"{proxy.url}/chat/completions", json={**body, **extra}, headers=proxy.headers(), timeout=30
        )

    assert ask().status_code == 200
    stop()
    for extra in ({}, {"stream": True}):
        began = time.monotonic()
        refused = ask(**extra)
        assert time.monotonic() - began < 5  # refused, not left waiting on Redis
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "limits_unavailable"
        assert refused.headers["retry-after"] == "1"
    start()
    assert ask().status_code == 200
    assert ask(stream=True).status_code == 200


def test_records_redis_cannot_take_are_written_to_postgresql_directly(own_redis, proxy):
    """The refusals of a Redis outage are requests too: their records go from the spill straight
    into PostgreSQL (no consumer involved), once each."""
    from proxy.models import RequestLog

    _, stop = own_redis
    stop()
    headers = proxy.headers()
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}]}
    ids = []
    for _ in range(3):
        response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=headers, timeout=30)
        assert response.status_code == 503
        ids.append(response.headers["x-request-id"])
    wait_until(lambda: RequestLog.objects.filter(request_id__in=ids).count() == 3, timeout=15)
    rows = RequestLog.objects.filter(request_id__in=ids)
    assert sorted(r.request_id for r in rows) == sorted(ids)
    assert {(r.status, r.http_status, r.error_type) for r in rows} == {("error", 503, "limits_unavailable")}


def test_spilled_records_wait_out_both_stores_and_go_to_redis_first(own_redis, organisation, settings, caplog):
    """With PostgreSQL refusing too, the spill holds the records and tries again; once Redis
    answers it takes them, and the consumer writes each once."""
    from django.utils import timezone

    from proxy.models import RequestLog
    from proxy.requestlog import LogBuffer, request_log_drain

    start, stop = own_redis
    stop()
    database = settings.DATABASES["default"]
    real_port = database["PORT"]
    ids = [f"spill-{i}" for i in range(3)]
    at = timezone.now().isoformat()
    records = [
        {"request_id": rid, "organisation_id": organisation.pk, "status": "error", "http_status": 503, "started_at": at}
        for rid in ids
    ]

    async def outage_then_recovery():
        buffer = LogBuffer(asyncio.get_running_loop())
        # New connections (the spill's thread opens one) go to a closed port, as in an outage.
        database["PORT"] = str(free_port())
        try:
            for record in records:
                buffer.add(orjson.dumps(record))
            # Until Redis and PostgreSQL have both refused (the spill says so in its log).
            deadline = time.monotonic() + 10
            while not any("Redis and PostgreSQL refused" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the spill never tried both stores"
                await asyncio.sleep(0.02)
            assert len(buffer.spill) == 3
            await asyncio.to_thread(start)  # Redis is back, PostgreSQL still is not
            await buffer.flush(spill_timeout=10)
            assert not buffer.spill
        finally:
            database["PORT"] = real_port

    asyncio.run(outage_then_recovery())
    request_log_drain()
    request_log_drain()  # a second drain finds nothing new: no duplicates
    assert sorted(RequestLog.objects.filter(request_id__in=ids).values_list("request_id", flat=True)) == ids

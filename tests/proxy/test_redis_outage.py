"""The proxy while its Redis is down: limits cannot be checked, so requests are refused at once
(fail closed, 503 with Retry-After) rather than served unlimited or left hanging, and service
resumes by itself when Redis is back."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from tests.conftest import free_port, wait_for_port


@pytest.fixture
def own_redis(settings):
    """A Redis of this test's own, which it may kill; Steward's server (started after) uses it."""
    from core.redis import redis_reset_clients
    from proxy.bench.runner import redis_server_executable

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

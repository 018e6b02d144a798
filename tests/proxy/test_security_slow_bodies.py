"""Slow request bodies cannot starve a process: a body is read before the request takes an in-flight
slot, body readers are bounded (per process, and per key by its max_in_flight), and the whole body
must arrive within STEWARD_PROXY_BODY_TIMEOUT_SECONDS (408 after it). Raw sockets against the real
server."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest
import requests

CHAT = {"model": "dev-small", "messages": [{"role": "user", "content": "x" * 900}], "max_tokens": 3}
BODY = json.dumps(CHAT).encode()


@pytest.fixture(autouse=True)
def _prices(global_prices):
    """Deployments need a price for their model."""


def _head(port: int, secret: str, length: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {secret}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _slow_connection(port: int, secret: str, first: bytes = b"{") -> socket.socket:
    """A request whose headers promise the whole body, of which only `first` is sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(_head(port, secret, len(BODY)) + first)
    return sock


def _status(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def _served(proxy, secret: str) -> requests.Response:
    return requests.post(
        f"{proxy.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )


def test_six_hundred_slow_bodies_under_one_key_do_not_starve_another_key(proxy, api_key_factory, settings):
    settings.STEWARD_PROXY_BODY_TIMEOUT_SECONDS = 6
    settings.STEWARD_PROXY_MAX_BODY_READERS = 1000
    # Far fewer slots than slow connections: had they taken slots, every other request would be a 503.
    settings.STEWARD_PROXY_MAX_IN_FLIGHT = 64
    port = int(proxy.url.split(":")[2].split("/")[0])
    _, other = api_key_factory(name="other")
    started = time.monotonic()
    slow = [_slow_connection(port, proxy.secret) for _ in range(600)]
    try:
        for _ in range(5):
            response = _served(proxy, other)
            assert response.status_code == 200, response.text
        # The slow key's own complete requests are served too (it has no max_in_flight).
        assert _served(proxy, proxy.secret).status_code == 200
        # All of that while the slow bodies were still pending (generous: a busy CI machine is slow to
        # open 600 connections).
        assert time.monotonic() - started < 6
        statuses = [_status(sock, timeout=max(0.1, started + 10 - time.monotonic())) for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert statuses == [408] * 600
    assert time.monotonic() - started < 14


def test_a_slow_body_answers_408_in_the_openai_envelope(proxy, settings):
    settings.STEWARD_PROXY_BODY_TIMEOUT_SECONDS = 0.5
    port = int(proxy.url.split(":")[2].split("/")[0])
    with _slow_connection(port, proxy.secret) as sock:
        sock.settimeout(5)
        data = b""
        while b"}}" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"


def test_bodies_that_arrive_late_but_within_the_deadline_are_served(proxy, settings):
    settings.STEWARD_PROXY_BODY_TIMEOUT_SECONDS = 5
    port = int(proxy.url.split(":")[2].split("/")[0])
    # Headers alone first (the first receive has to wait), and a body sent in two parts.
    for first in (b"", BODY[:10]):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_head(port, proxy.secret, len(BODY)) + first)
            time.sleep(0.3)
            sock.sendall(BODY[len(first) :])
            assert _status(sock, timeout=10) == 200


def test_body_readers_are_bounded_per_process_and_per_key(proxy, api_key_factory, settings):
    settings.STEWARD_PROXY_BODY_TIMEOUT_SECONDS = 3
    settings.STEWARD_PROXY_MAX_BODY_READERS = 5
    port = int(proxy.url.split(":")[2].split("/")[0])
    _, limited = api_key_factory(name="limited", max_in_flight=2)
    _, other = api_key_factory(name="other")
    held = [_slow_connection(port, limited) for _ in range(2)]
    time.sleep(0.5)  # past the grace a slow body has before it counts
    try:
        # The key's max_in_flight covers its requests still sending their body.
        with _slow_connection(port, limited) as third:
            assert _status(third, timeout=2) == 429
        held += [_slow_connection(port, proxy.secret) for _ in range(3)]
        time.sleep(0.5)
        # The process's bound: five bodies are being read, a sixth slow one is refused at once...
        with _slow_connection(port, other) as sixth:
            assert _status(sixth, timeout=2) == 503
        # ... while requests whose bodies come in time are served (requests writes the body apart
        # from the headers: such a body is waited for without counting, for a moment).
        for _ in range(3):
            assert _served(proxy, other).status_code == 200
    finally:
        for sock in held:
            sock.close()

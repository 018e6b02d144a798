"""An upstream cannot exhaust the proxy's memory: an SSE event without end and a gzip bomb are
upstream errors. A raw-socket upstream on 127.0.0.1 sends them to the real server."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time

import pytest
import requests

from tests.helpers import log_of, route_with_deployments

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
FIRST_EVENT = (
    b'data: {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "dev-small", '
    b'"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]}\n\n'
)


@pytest.fixture(autouse=True)
def _prices(global_prices):
    """Deployments need a price for their model."""


class RawUpstream:
    """Answers every request on 127.0.0.1 with `head` and then the parts of `parts` (an iterable of
    bytes, sent as they come), then keeps the connection open until closed."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.answer = lambda: [b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"]
        self.requests = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            lengths = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            length = lengths[0] if lengths else 0
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            for part in self.answer():
                conn.sendall(part)
            self.stopped.wait(10)

    def close(self):
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def raw_upstream():
    handle = RawUpstream()
    yield handle
    handle.close()


def _chunked(parts):
    for part in parts:
        if part:  # an empty chunk would end the body
            yield b"%x\r\n%s\r\n" % (len(part), part)


def _post(proxy, model: str, stream: bool):
    return requests.post(
        f"{proxy.url}/chat/completions",
        json={**CHAT, "model": model, "stream": stream},
        headers=proxy.headers(),
        timeout=30,
    )


def test_an_endless_stream_event_is_an_upstream_error(proxy, organisation, raw_upstream):
    route_with_deployments(organisation, "endless", [{"api_base": raw_upstream.url, "timeout_seconds": 20}])
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    line = b"a" * 2**20

    def endless(first: bytes):
        yield head
        yield from _chunked([first, b"data: "])
        yield from _chunked(line for _ in range(12))  # 12 MiB of one line, then silence

    # Before any event: the attempt fails, and the client gets a 502.
    raw_upstream.answer = lambda: endless(b"")
    started = time.monotonic()
    response = _post(proxy, "endless", stream=True)
    assert response.status_code == 502, response.text[:500]
    assert "larger than" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10  # not the deployment's 20 s timeout

    # After the first event: the stream ends with an error event.
    raw_upstream.answer = lambda: endless(FIRST_EVENT)
    response = _post(proxy, "endless", stream=True)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e.startswith("data: {")]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "Hel"
    error = json.loads(events[-1][6:])["error"]
    assert "larger than" in error["message"]
    row = log_of(response.headers["x-request-id"])
    assert row.status == "error"


@pytest.mark.parametrize("stream", [False, True])
def test_a_gzip_bomb_is_an_upstream_error(proxy, organisation, raw_upstream, stream):
    route_with_deployments(organisation, "bomb", [{"api_base": raw_upstream.url, "timeout_seconds": 20}])
    # 48 MiB inflated from about 48 KiB sent: one line of zeros, no event boundary, no JSON.
    bomb = gzip.compress(b"data: " + b"0" * (48 * 2**20), compresslevel=9)
    kind = b"text/event-stream" if stream else b"application/json"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % (
        kind,
        len(bomb),
    )
    raw_upstream.answer = lambda: [head + bomb]
    started = time.monotonic()
    response = _post(proxy, "bomb", stream=stream)
    assert response.status_code == 502, response.text[:500]
    assert time.monotonic() - started < 10
    # The cause is told to the client or, where its message is generic, kept in the request log.
    attempt = log_of(response.headers["x-request-id"]).attempts[0]
    told = response.json()["error"]["message"] + attempt.get("error_detail", "")
    assert "inflates to more than" in told


def test_gzip_answers_within_the_limit_are_read(proxy, organisation, raw_upstream):
    route_with_deployments(organisation, "zipped", [{"api_base": raw_upstream.url}])
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "dev-small",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok " * 100_000}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 100_000, "total_tokens": 100_001},
    }
    body = gzip.compress(json.dumps(answer).encode())
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    raw_upstream.answer = lambda: [head % len(body) + body]
    response = _post(proxy, "zipped", stream=False)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] == "ok " * 100_000

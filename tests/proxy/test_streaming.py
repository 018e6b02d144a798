"""Streaming: framing, keep-alive, multi-byte characters cut by the network, cancellation on disconnect."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import openai
import pytest
import requests
from aiohttp import web

from tests.helpers import free_port, hang_up_mid_stream, log_of, raw_stream, route_with_deployments, wait_until


def test_multibyte_characters_split_across_writes_arrive_intact(proxy, dev_upstream):
    reply = "naïve café 😀🎉 日本語のテキスト 中文字符 ✓ done"
    dev_upstream.control(split_multibyte=True, reply=reply)
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    stream = client.chat.completions.create(model="dev-small", messages=[{"role": "user", "content": "x"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply


def test_sse_framing_and_done(proxy):
    sock, received = raw_stream(
        proxy, {"model": "dev-small", "stream": True, "messages": [{"role": "user", "content": "f"}]}
    )
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"text/event-stream" in head.lower() and b"x-request-id" in head.lower()
    assert b"data: [DONE]" in body and body.count(b"data: [DONE]") == 1


def test_keep_alive_comment_while_waiting_for_a_slow_first_token(proxy, dev_upstream, settings):
    settings.STEWARD_PROXY_KEEPALIVE_SECONDS = 0.2
    dev_upstream.control(delay_ms=900)
    sock, received = raw_stream(
        proxy, {"model": "dev-small", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
    )
    sock.close()
    body = received.partition(b"\r\n\r\n")[2]
    assert body.find(b": keep-alive") != -1
    assert body.find(b": keep-alive") < body.find(b"data: {")
    assert b"data: [DONE]" in body


def test_client_disconnect_cancels_the_upstream_and_is_logged(proxy, dev_upstream):
    request_id = hang_up_mid_stream(proxy, dev_upstream, "dev-small")
    produced = dev_upstream.stats()["cancelled_tokens"][0]
    assert 3 <= produced < 200
    row = log_of(request_id, timeout=30)
    assert row.status == "cancelled" and row.stream
    assert row.completion_tokens > 0 and row.usage_estimated
    assert row.attempts[0]["status"] == "cancelled"


def test_a_hang_up_before_the_first_token_cancels_the_upstream_too(proxy, dev_upstream):
    """Streams start watching for a hang-up a little after they begin; one that comes sooner still
    reaches the upstream within a second."""
    dev_upstream.control(delay_ms=3000)
    host, port = proxy.url.split("//")[1].split("/")[0].split(":")
    payload = json.dumps({"model": "dev-small", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {proxy.secret}\r\nContent-Length: {len(payload)}\r\n\r\n{payload}".encode()
    )
    wait_until(lambda: dev_upstream.stats()["in_flight"] == 1, timeout=5, interval=0.005)
    hung_up = time.monotonic()
    sock.close()
    wait_until(lambda: dev_upstream.stats()["cancelled"] == 1, timeout=1.0, interval=0.02)
    assert time.monotonic() - hung_up < 1.0
    assert dev_upstream.stats()["completed"] == 0


def test_slow_reader_gets_the_whole_stream(proxy, dev_upstream):
    # Backpressure: the proxy waits on the client instead of buffering; a slow reader still gets everything.
    reply = " ".join(f"token{i}" for i in range(300))
    dev_upstream.control(reply=reply)
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    pieces = []
    for chunk in client.chat.completions.create(
        model="dev-small", messages=[{"role": "user", "content": "x"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) % 50 == 0:
                time.sleep(0.05)
    assert "".join(pieces) == reply


def test_failure_before_the_first_token_is_retried_on_streams(proxy, organisation, dev_upstream, dev_upstream_b):
    route_with_deployments(organisation, "spair", [{"api_base": dev_upstream.url, "name": "a", "weight": 10_000},
                                                   {"api_base": dev_upstream_b.url, "name": "b"}])  # fmt: skip
    dev_upstream.control(fail_status=502)
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="spair", messages=[{"role": "user", "content": "x"}], stream=True
    ) as response:
        assert response.headers["x-steward-model-deployment"] == "b"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text.startswith("Steward dev reply")


@pytest.fixture
def breaking_upstream():
    """An upstream whose stream sends one chunk, then an error event (as providers do when they fail
    mid-answer), then ends."""
    loop = asyncio.new_event_loop()
    port = free_port()

    async def chat(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "partial"}}],
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b'data: {"error": {"message": "overloaded mid-way", "type": "server_error"}}\n\n')
        await response.write_eof()
        return response

    async def start():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_an_error_event_mid_stream_follows_what_came_before_it(proxy, organisation, breaking_upstream):
    route_with_deployments(organisation, "breaking", [{"api_base": breaking_upstream, "name": "b"}])
    response = requests.post(
        f"{proxy.url}/chat/completions",
        json={"model": "breaking", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers=proxy.headers(),
        timeout=10,
    )
    # The stream had begun: it ends with an error event after what came, not with a JSON error.
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    events = [e for e in response.content.split(b"\n\n") if e]
    assert json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "partial"
    assert "overloaded mid-way" in json.loads(events[1][6:])["error"]["message"]
    assert events[2:] == [b"data: [DONE]"]
    row = log_of(response.headers["x-request-id"])
    assert row.status == "error" and row.attempts[0]["status"] == "error"

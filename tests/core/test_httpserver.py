"""core.httpserver: uvicorn's protocol, writing each response's head together with its first body
bytes. A real uvicorn server on a real socket; a spy between the protocol and the socket's
transport records the writes the server makes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from core.httpserver import HttpProtocol
from tests.helpers import free_port, wait_for_port


class _Spy:
    def __init__(self, transport, writes: list[tuple[float, bytes]]):
        self._transport = transport
        self._writes = writes

    def write(self, data) -> None:
        self._writes.append((time.monotonic(), bytes(data)))
        self._transport.write(data)

    def __getattr__(self, name):
        return getattr(self._transport, name)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})
    elif path == "/slow":
        # The head, then nothing for a while: it must not wait for the body.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(1.5)
        await send({"type": "http.response.body", "body": b"data: late\n\n", "more_body": False})


@pytest.fixture
def server():
    writes: list[tuple[float, bytes]] = []

    class SpiedProtocol(HttpProtocol):
        # The spy sits under HttpProtocol's own transport wrapper, where the socket is.
        def connection_made(self, transport):
            super().connection_made(_Spy(transport, writes))

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", http=SpiedProtocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield port, writes
    finally:
        server.should_exit = True
        thread.join(10)


def _request(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}; got {data!r}"
        data += chunk
    return data


def test_a_response_goes_out_in_one_write_head_and_body_together(server):
    port, writes = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(2):  # keep-alive: the second response's head is held again
            _request(sock, "/plain")
            assert _read_until(sock, b"hello").startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(writes) == 2
    for _, data in writes:
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\nhello")


def test_a_stream_writes_its_head_with_the_first_event_and_the_rest_as_it_comes(server):
    port, writes = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        _request(sock, "/stream")
        body = _read_until(sock, b"0\r\n\r\n")
    assert b"data: 1\n\n" in body and b"data: 2\n\n" in body
    assert [data.startswith(b"HTTP/1.1 200") for _, data in writes] == [True, False]
    assert writes[0][1].endswith(b"data: 1\n\n\r\n")
    assert writes[1][1] == b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"


def test_a_head_without_a_body_yet_goes_out_at_the_end_of_the_loop_turn(server):
    port, writes = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sent = time.monotonic()
        _request(sock, "/slow")
        head = _read_until(sock, b"\r\n\r\n")
        head_at = time.monotonic()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"late" not in head
        _read_until(sock, b"0\r\n\r\n")
    # The application waits 1.5 s before its body; the head did not wait with it.
    assert head_at - sent < 1.0
    assert len(writes) == 2
    assert writes[0][1].endswith(b"\r\n\r\n") and b"late" not in writes[0][1]

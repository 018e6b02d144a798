"""The uvicorn internals core/httpserver.py builds on, checked directly so that an upgrade of uvicorn
that changes them fails here, by name, instead of somewhere downstream as a slower proxy or a
response held for a loop turn.

core/httpserver.py subclasses uvicorn's httptools protocol and wraps the transport it is given. It
relies on: the class at uvicorn.protocols.http.httptools_impl.HttpToolsProtocol; connection_made
taking the transport alone; `protocol.loop` set before the connection is made; every write of a
response going through the transport given to connection_made (the protocol's and each request
cycle's `transport`); `protocol.cycle` None before the first request and a new object for every
request on a connection; and uvicorn writing a response's head alone, at once, when the
application starts the response (the premise: were uvicorn to join head and body itself, the
wrapper would be dead weight). If one of these fails, read uvicorn's httptools_impl.py at the new
version before changing this test."""

from __future__ import annotations

import asyncio
import inspect

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from core.httpserver import HeadWithBodyTransport, HttpProtocol

REQUEST = b"GET /plain HTTP/1.1\r\nhost: test\r\n\r\n"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


class RecordingTransport(asyncio.Transport):
    """The socket's side of a connection: records what the protocol writes."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(protocol_class, loop) -> HttpToolsProtocol:
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http=protocol_class)
    config.load()
    return protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)


def _serve_one(loop, protocol) -> None:
    protocol.data_received(REQUEST)
    cycle = protocol.cycle
    deadline = loop.time() + 5
    while not cycle.response_complete and loop.time() < deadline:
        loop.run_until_complete(asyncio.sleep(0.001))
    assert cycle.response_complete, "the application's response did not complete"
    loop.run_until_complete(asyncio.sleep(0))  # the end of the turn, when a held head would go out


def test_the_class_and_the_method_core_httpserver_overrides_are_uvicorns():
    assert HttpProtocol.__bases__ == (HttpToolsProtocol,)
    assert list(inspect.signature(HttpToolsProtocol.connection_made).parameters) == ["self", "transport"], (
        "HttpToolsProtocol.connection_made changed its signature; core.httpserver.HttpProtocol overrides it"
    )


def test_uvicorn_writes_every_response_through_the_transport_it_was_given_with_a_cycle_per_request():
    loop = asyncio.new_event_loop()
    try:
        protocol = _protocol(HttpToolsProtocol, loop)
        assert protocol.loop is loop, "core.httpserver reads protocol.loop in connection_made"
        transport = RecordingTransport()
        protocol.connection_made(transport)
        assert protocol.transport is transport
        assert protocol.cycle is None, "core.httpserver tells a response's first write by a new protocol.cycle"

        _serve_one(loop, protocol)
        first = protocol.cycle
        assert isinstance(first, RequestResponseCycle)
        assert first.transport is transport, "a request cycle must write through the connection's transport"
        # The premise: uvicorn writes the head alone, the moment the response starts, then the body.
        assert len(transport.writes) == 2, transport.writes
        head, body = transport.writes
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert body == b"hello"

        _serve_one(loop, protocol)  # keep-alive: the same connection's next request
        assert protocol.cycle is not first, "each request on a connection must get a cycle of its own"
        assert len(transport.writes) == 4
    finally:
        loop.close()


def test_on_these_internals_steward_protocol_writes_head_and_body_in_one_write():
    loop = asyncio.new_event_loop()
    try:
        protocol = _protocol(HttpProtocol, loop)
        transport = RecordingTransport()
        protocol.connection_made(transport)
        assert isinstance(protocol.transport, HeadWithBodyTransport)
        for _ in range(2):
            _serve_one(loop, protocol)
        assert len(transport.writes) == 2, transport.writes
        assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"\r\n\r\nhello") for w in transport.writes)
    finally:
        loop.close()

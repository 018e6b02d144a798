"""The HTTP protocol Steward runs under uvicorn: `--http core.httpserver:HttpProtocol`.

It is uvicorn's httptools protocol with one change. uvicorn writes a response's status line and
headers the moment the application starts the response, and its body in a write of its own: two
system calls, two TCP segments and two wake-ups of the client for an answer that fits in one. Here
the head is held until the response's first body bytes, or until the end of the event loop's
current turn if none come in it, and goes out in the same write. A held head never waits on
anything but the application's own code already running: the loop turn ends as soon as it yields.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadWithBodyTransport:
    """A transport that holds the first write of each response (uvicorn's head) and joins it to
    the next write; everything else is passed to the real transport as it comes."""

    __slots__ = ("_cycle", "_handle", "_held", "_loop", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: HttpToolsProtocol, loop) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = loop
        self._cycle = None
        self._held: bytes | None = None
        self._handle: asyncio.Handle | None = None

    def write(self, data) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._handle.cancel()
            self._transport.write(held + data)
            return
        cycle = self._protocol.cycle
        if cycle is not None and cycle is not self._cycle:
            # A response's first write is its head: uvicorn writes nothing ahead of it (a 100
            # Continue is held the same way and goes out at the end of the turn, which is when the
            # client can use it anyway).
            self._cycle = cycle
            self._held = bytes(data)
            self._handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._handle.cancel()
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBodyTransport(transport, self, self.loop))

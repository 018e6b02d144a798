"""One pipelined Redis connection per event loop, shared by every request of the proxy's hot path.

Why not redis-py's asyncio client there: on this hot path (two EVALSHA in a pipeline, sixteen
tasks at once) it costs about 58 µs of CPU per round trip, mostly command packing, pool and retry
machinery; coredis about 160 µs. Redis answers the commands of one connection in the order they
were sent, so a single connection can carry every task's commands at once: each caller writes its
packed commands and waits on futures that the reader resolves in order, with hiredis (the C parser
redis-py itself uses when installed) reading the replies. That costs about 7 µs per round trip.

Only short commands belong here. A blocking command (BLPOP, XREAD BLOCK) or a subscription would
hold up everyone behind it; those use redis-py (`core.redis.aredis_client`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl

import hiredis
import redis.exceptions
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url


def _encode(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("booleans are ambiguous as Redis arguments; pass 0/1 or a string")
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"cannot send a {type(value).__name__} to Redis")


def pack(args) -> bytes:
    """One command in the Redis protocol (RESP2)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def _error(reply: Exception) -> redis.exceptions.ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(message)
    return reply if isinstance(reply, redis.exceptions.ResponseError) else redis.exceptions.ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, mux: RedisMux):
        self.mux = mux
        self.reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.mux.waiters
        try:
            while (reply := self.reader.gets()) is not False:
                waiter = waiters.popleft()
                if not waiter.done():  # a caller that timed out is no longer listening
                    waiter.set_result(_error(reply) if isinstance(reply, Exception) else reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # A reply nobody asked for, or bytes that are not RESP: the stream can no longer be trusted.
            self.mux.abort(redis.exceptions.ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.mux.lost(self, exc)


class RedisMux:
    """A connection that many tasks share; `execute` sends commands and returns their replies in order.

    Replies that are Redis errors come back as `ResponseError` instances in place (NOSCRIPT as
    `NoScriptError`); a lost or unusable connection raises `ConnectionError` in every caller waiting
    on it, and the next call connects again. Callers bound their waits themselves (`abort` after a
    timeout fails everything still queued, since the connection's state is then unknown)."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, connect_timeout: float = 2.0):
        self.url = url
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.transport: asyncio.Transport | None = None
        self.protocol: _Protocol | None = None
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self._connecting: asyncio.Future | None = None

    async def execute(self, commands: list[bytes], count: int) -> list:
        """Send `commands` (packed, `count` commands in all) and return their `count` replies."""
        futures = self.write(commands, count)
        if futures is None:
            await self._connect()
            futures = self.write(commands, count)
            if futures is None:
                raise redis.exceptions.ConnectionError("Redis connection lost while connecting")
        return await self.replies(futures)

    def write(self, commands: list[bytes], count: int) -> list[asyncio.Future] | None:
        """Write `commands` now, if connected (else None), and return the futures of their replies:
        whatever this process sends afterwards, Redis runs after them."""
        if self.transport is None or self.transport.is_closing():
            return None
        futures = [self.loop.create_future() for _ in range(count)]
        self.waiters.extend(futures)
        self.transport.write(b"".join(commands) if len(commands) > 1 else commands[0])
        return futures

    async def replies(self, futures: list[asyncio.Future]) -> list:
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply, when it comes, is dropped
                elif not future.cancelled():
                    future.exception()  # the same failure: reported once, by the raise below
            raise

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = self.loop.create_future()
            connecting = self._connecting
            try:
                await self._open()
                connecting.set_result(None)
            except BaseException as exc:
                if self.transport is not None:
                    self.abort(redis.exceptions.ConnectionError("Redis connection not completed"))
                if isinstance(exc, asyncio.CancelledError):
                    connecting.cancel()
                    raise
                error = _as_connection_error(exc)
                connecting.set_exception(error)
                connecting.exception()  # consumed here when no other caller waits
                raise error from exc
            finally:
                self._connecting = None
        else:
            await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        options = parse_url(self.url)
        kind = options.get("connection_class")
        async with asyncio.timeout(self.connect_timeout):
            if kind is UnixDomainSocketConnection:
                transport, protocol = await self.loop.create_unix_connection(lambda: _Protocol(self), options["path"])
            else:
                context = None
                if kind is SSLConnection:
                    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
                    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                transport, protocol = await self.loop.create_connection(
                    lambda: _Protocol(self), options.get("host", "localhost"), options.get("port", 6379), ssl=context
                )
            self.transport, self.protocol = transport, protocol
            handshake = []
            if options.get("password"):
                credentials = [options["username"]] if options.get("username") else []
                handshake.append(pack(["AUTH", *credentials, options["password"]]))
            if options.get("db"):
                handshake.append(pack(["SELECT", int(options["db"])]))
            if handshake:
                for reply in await self.execute(handshake, len(handshake)):
                    if isinstance(reply, Exception):
                        self.abort(redis.exceptions.ConnectionError(f"Redis refused the connection: {reply}"))
                        raise redis.exceptions.AuthenticationError(str(reply))

    def abort(self, exc: Exception) -> None:
        """Drop the connection and fail every caller still waiting on it."""
        transport, self.transport, self.protocol = self.transport, None, None
        self._fail(exc)
        if transport is not None:
            transport.abort()

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is not self.protocol:
            return  # an older connection, already given up on
        self.transport = self.protocol = None
        self._fail(redis.exceptions.ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    def close(self) -> None:
        self.abort(redis.exceptions.ConnectionError("Redis connection closed"))


def _as_connection_error(exc: BaseException) -> BaseException:
    if isinstance(exc, redis.exceptions.RedisError):
        return exc
    if isinstance(exc, TimeoutError):
        return redis.exceptions.TimeoutError("Redis did not accept the connection in time")
    return redis.exceptions.ConnectionError(f"Redis unreachable: {exc}")

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


def pack(args) -> bytes:
    """One command in the Redis protocol (RESP2); arguments are str, bytes, int or float (never bool).

    hiredis packs in C, about a third of the cost of doing it in Python; with sixteen arguments
    per script call that is a few percent of a proxied request."""
    try:
        return hiredis.pack_command(tuple(args))
    except TypeError:
        bad = next((a for a in args if isinstance(a, bool) or not isinstance(a, str | bytes | int | float)), None)
        raise TypeError(f"cannot send {bad!r} ({type(bad).__name__}) to Redis; pass str, bytes, int or float") from None


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
                waiter = waiters.popleft()[0]
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
    on it, and the next call connects again. A reply overdue by `command_timeout` seconds fails
    every caller with `TimeoutError` and drops the connection, whose state is then unknown: one
    watchdog timer per connection rather than a timeout per call.

    Commands written in one turn of the event loop leave in one socket write at the end of it (a
    busy proxy writes several requests' commands per system call, each of which costs about as much
    as a small stage of the pipeline); `flushed()` waits for that write, for a caller that needs
    them on their way before it does anything else."""

    def __init__(
        self, url: str, loop: asyncio.AbstractEventLoop, connect_timeout: float = 2.0, command_timeout: float = 5.0
    ):
        self.url = url
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.transport: asyncio.Transport | None = None
        self.protocol: _Protocol | None = None
        self.waiters: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._outbox: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
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
        """Queue `commands` for this loop turn's write, if connected (else None), and return the
        futures of their replies: whatever this process sends afterwards, Redis runs after them."""
        if self.transport is None or self.transport.is_closing():
            return None
        loop = self.loop
        sent_at = loop.time()
        futures = [loop.create_future() for _ in range(count)]
        self.waiters.extend([(future, sent_at) for future in futures])
        self._outbox.extend(commands)
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._watch_interval(), self._watch)
        return futures

    async def flushed(self) -> None:
        """Return once every command queued so far has been handed to the socket. Its write was
        scheduled when the first of them was queued, so it runs before this task resumes from a
        single yield: one turn of the loop, no future or timer."""
        if self._outbox:
            await asyncio.sleep(0)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        outbox = self._outbox
        if outbox and self.transport is not None:
            self.transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        outbox.clear()

    def _watch_interval(self) -> float:
        return min(1.0, self.command_timeout / 4)

    def _watch(self) -> None:
        self._watchdog = None
        if not self.waiters:
            return
        if self.loop.time() - self.waiters[0][1] > self.command_timeout:
            # Replies may still be on their way; nobody can tell whose they are any more.
            self.abort(redis.exceptions.TimeoutError(f"Redis did not answer within {self.command_timeout:g} s"))
            return
        self._watchdog = self.loop.call_later(self._watch_interval(), self._watch)

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
        self._outbox.clear()
        for handle in (self._flush_handle, self._watchdog):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._watchdog = None
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter, _sent_at in waiters:
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

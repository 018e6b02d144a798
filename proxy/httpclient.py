"""A pooled HTTP/1.1 client for the proxy's upstream calls: an asyncio protocol around httptools.

Why not aiohttp, which the proxy used before: on the stream path its request set-up (request and
response objects, header multidicts, a writer, the StreamReader) cost about 100 µs of CPU per
call, a fifth of everything the proxy spends on a stream. The proxy needs much less of HTTP: one
POST with a known body, a status, a few headers and the body as it arrives. Here a request is one
write of pre-joined bytes and the response is parsed by llhttp (through httptools, the parser
uvicorn serves with), so a call costs about a quarter of that.

What it does: keep-alive connections pooled per origin and per event loop, TLS (the system's
trust store, SNI), chunked and length-delimited bodies and bodies that end with the connection,
gzip and deflate, and back-pressure (a response whose reader falls behind stops reading from the
socket past READ_HIGH_WATER bytes). A request that finds its pooled connection closed by the
server before any byte of the answer is sent again once on a new connection: the server dropped
an idle connection and never saw it. Waits are bounded by deadlines (`Pool.request(timeout=)`,
`Response.read(timeout=)`): a response that misses one fails with `Timeout` and drops its
connection. Proxies come from the environment as curl and requests read it (`proxy_for`): an
https origin through a CONNECT tunnel, an http one in absolute form. What it does not do: HTTP/2,
redirects, cookies, proxies that are not plain http://; OpenAI-compatible APIs need none of them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import math
import ssl
import time
import urllib.request
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

from core import egress

READ_HIGH_WATER = 2**16  # bytes buffered before the socket stops being read
# Decompressed bytes a response may hold unread: reading pauses past READ_HIGH_WATER, so only a
# compressed chunk that inflates beyond this (a decompression bomb) reaches it.
MAX_DECODED_BUFFER = 16 * 2**20
IDLE_SECONDS = 15.0  # pooled connections idle longer than this are closed rather than reused
IDLE_PER_ORIGIN = 256  # at most this many idle connections are kept per origin


class HTTPClientError(Exception):
    """The connection failed or the response was not valid HTTP."""


class ConnectionLost(HTTPClientError):
    pass


class Timeout(HTTPClientError):
    """A deadline passed while waiting for the server."""


class ConnectFailed(HTTPClientError):
    """No connection could be opened: refused, unresolvable, refused by the egress policy (its
    EgressDenied is the cause) or, as ConnectTimeout, not before the deadline."""


class ConnectTimeout(ConnectFailed, Timeout):
    pass


@dataclass(frozen=True, slots=True)
class Proxy:
    """The HTTP proxy through which an origin is reached."""

    host: str
    port: int
    authorization: bytes  # a Proxy-Authorization header line, or b""


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The proxy the environment names for `scheme://host`, read as curl and requests read it:
    HTTPS_PROXY or HTTP_PROXY by the origin's scheme, else ALL_PROXY (lower-case names too), and
    none for the hosts and domains NO_PROXY lists. Credentials in the proxy's URL are sent as Basic
    authorization. Raises HTTPClientError for a proxy that is not plain http://."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or 80
    except ValueError:
        port = 0
    if parts.scheme != "http" or not parts.hostname or not port:
        raise HTTPClientError(f"the proxy {url!r} for {scheme}://{host} is not an http://host:port URL")
    authorization = b""
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Proxy-Authorization: Basic %s\r\n" % base64.b64encode(credentials)
    return Proxy(parts.hostname, port, authorization)


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    path: str
    key: tuple[str, str, int]
    head: bytes  # the request line and Host header (and the proxy's authorization, in absolute form)
    authority: bytes  # host:port, as CONNECT names it
    proxy: Proxy | None


# Parsed once per URL, proxy included: the environment is read when a deployment's URL is first
# called, not on every request.
_origins: dict[str, Origin] = {}


def origin_of(url: str) -> Origin:
    """The parsed URL, cached: deployments' URLs are few and fixed."""
    origin = _origins.get(url)
    if origin is None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPClientError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = 443 if parts.scheme == "https" else 80
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        host_header = (host if port == default else f"{host}:{port}").encode("idna")
        proxy = proxy_for(parts.scheme, parts.hostname)
        if proxy is not None and parts.scheme == "http":
            # A plain-http origin goes to the proxy in absolute form (a CONNECT to port 80 is
            # commonly refused); https goes through a tunnel, so the proxy never sees the request.
            head = b"POST http://%s%s HTTP/1.1\r\nHost: %s\r\n%s" % (
                host_header,
                path.encode(),
                host_header,
                proxy.authorization,
            )
        else:
            head = b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (path.encode(), host_header)
        origin = Origin(
            parts.scheme,
            parts.hostname,
            port,
            path,
            (parts.scheme, parts.hostname, port),
            head,
            f"{host}:{port}".encode("idna"),
            proxy,
        )
        if len(_origins) < 10_000:
            _origins[url] = origin
    return origin


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT, after which the connection carries TLS to the origin."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.answer = loop.create_future()
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.answer.done():
            return
        if b"\r\n\r\n" in self.received:
            self.answer.set_result(self.received)
        elif len(self.received) > 65_536:
            self.answer.set_exception(HTTPClientError("the proxy's answer to CONNECT has no end"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(HTTPClientError(f"the proxy closed the connection during CONNECT ({exc})"))


class _Connection(asyncio.Protocol):
    """One socket; carries one exchange at a time."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]):
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.response: Response | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            # Bytes nobody asked for (or a server closing an idle connection with a message): unusable.
            self.close()
            return
        response.feed(data)

    def eof_received(self):
        return False  # close the transport; connection_lost tells the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.pool.forget(self)
        if self.response is not None:
            self.response.lost(exc)

    # deadlines: one lazy timer per connection. A wait whose deadline is later than the armed timer
    # costs no timer operation; an early firing re-arms. Most waits end long before their deadline,
    # so a stream costs about no timer at all, where asyncio.timeout costs one per wait.

    def arm(self, deadline: float) -> None:
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.pool.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        response = self.response
        if response is None or response._waiter is None:
            return  # nobody is waiting: the next wait arms again
        if self.pool.loop.time() >= response._deadline:
            response._fail(Timeout("no answer from the server before the deadline"))
        else:
            self.arm(response._deadline)

    # pool side

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._disarm()
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class Response:
    """An answer being received: status and headers once `Pool.request` returns, the body as it arrives.

    Read with `read_nowait()` (whatever is buffered, b"" when nothing is), `read()` (waits for more)
    or `body()` (all of it). End with `release()` once the body was read to the end (the connection
    goes back to the pool), or `close()` at any time (the connection is dropped, which is how a
    server learns that the caller gave up)."""

    __slots__ = (
        "_any_bytes",
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_deadline",
        "_decoder",
        "_error",
        "_framed",
        "_header_list",
        "_headers_done",
        "_keep_alive",
        "_parser",
        "_paused",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection):
        self.status = 0
        self.headers: dict[str, str] = {}
        self._conn = conn
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._headers_done = False
        self._complete = False
        self._error: Exception | None = None
        self._paused = False
        self._decoder = None
        self._header_list: list[tuple[bytes, bytes]] = []
        self._framed = False  # a length or chunked encoding says where the body ends
        self._any_bytes = False
        self._keep_alive = False
        self._deadline = math.inf  # loop time by which the current wait must end

    # parser callbacks (httptools)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._header_list = []  # an interim answer; the real one follows
            return
        self.status = status
        headers = self.headers
        for name, value in self._header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._header_list = []
        self._framed = "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib, detected from the header
        elif encoding not in ("", "identity"):
            raise HTTPClientError(f"unsupported content-encoding {encoding!r}")
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            # A few kilobytes of gzip inflate to gigabytes: inflate no more than may be held unread
            # (a decompression bomb is the upstream's error, not the process's memory).
            room = MAX_DECODED_BUFFER - self._buffered
            body = decoder.decompress(body, room) if room > 0 else b""
            if decoder.unconsumed_tail or room <= 0:
                self._fail(HTTPClientError(f"the response inflates to more than {MAX_DECODED_BUFFER} unread bytes"))
                raise HTTPClientError("decompression limit")
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of an interim (1xx) answer
        if self._decoder is not None:
            rest = self._decoder.flush()
            if rest:
                self._chunks.append(rest)
                self._buffered += len(rest)
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the next message starts
        self._complete = True
        self._wake()

    # connection side

    def feed(self, data: bytes) -> None:
        self._any_bytes = True
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, HTTPClientError, zlib.error) as exc:
            self._fail(HTTPClientError(f"invalid HTTP response: {exc}"))

    def lost(self, exc: Exception | None) -> None:
        if not self._complete:
            if self._headers_done and not self._framed and exc is None:
                self.on_message_complete()  # the body ran to the end of the connection, as announced
            else:
                self._fail(ConnectionLost("connection closed before the response was complete"))
        self._detach()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._conn.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        conn = self._conn
        self._waiter = conn.pool.loop.create_future()
        if self._deadline != math.inf:
            conn.arm(self._deadline)
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    # reading

    @property
    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    def read_nowait(self) -> bytes:
        """Everything buffered now, without waiting; b"" when nothing is (see `at_eof`)."""
        chunks = self._chunks
        if not chunks:
            if self._error is not None and not self._complete:
                raise self._error
            return b""
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            transport = self._conn.transport
            if transport is not None and not self._conn.closed:
                transport.resume_reading()
        return data

    async def read(self, timeout: float | None = None) -> bytes:
        """The next bytes of the body, waiting for them (at most `timeout` seconds from now, else
        until the request's deadline); b"" at the end. Raises `Timeout` when the wait runs out."""
        data = self.read_nowait()
        if data or self._complete:
            return data
        if timeout is not None:
            self._deadline = self._conn.pool.loop.time() + timeout
        while True:
            await self._wait()
            data = self.read_nowait()
            if data or self._complete:
                return data

    async def body(self, limit: int = 64 * 2**20) -> bytes:
        parts = []
        size = 0
        while data := await self.read():
            size += len(data)
            if size > limit:
                self.close()
                raise HTTPClientError(f"response body larger than {limit} bytes")
            parts.append(data)
        self.release()
        return b"".join(parts)

    # ending

    def _detach(self) -> None:
        # The parser holds this response's bound methods: a reference cycle that, left to the
        # collector, made every call garbage for the slow full collections.
        self._parser = None

    def release(self) -> None:
        """Done with the response: its connection is reused if the exchange ended cleanly."""
        conn = self._conn
        self._detach()
        if conn.response is not self:
            return
        conn.response = None
        if self._complete and not self._chunks and self._keep_alive and self._framed:
            conn.pool.put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Give up on the response: drop its connection (no-op once released)."""
        conn = self._conn
        self._detach()
        if conn.response is self:
            conn.response = None
            conn.close()


class Pool:
    """Keep-alive connections per origin for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self.closed = False
        self._ssl: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def put(self, conn: _Connection) -> None:
        idle = self.idle.setdefault(conn.key, collections.deque())
        if self.closed or conn.closed or len(idle) >= IDLE_PER_ORIGIN:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.reused = True
        idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _take(self, key) -> _Connection | None:
        idle = self.idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        key = origin.key
        tls = origin.scheme == "https"
        proxy = origin.proxy
        # The egress policy, on each new connection (pooled ones were checked when they were opened):
        # the name is resolved once and the connection goes to an address that passed. Through an
        # environment proxy (the operator's) the proxy resolves names; a literal address is checked.
        try:
            if proxy is not None:
                egress.literal_check(origin.host)
                addresses = [proxy.host]
            else:
                addresses = await egress.aresolve(origin.host, origin.port)
        except (egress.EgressDenied, OSError) as exc:
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        if proxy is not None and tls:
            return await self._tunnel(origin, proxy)
        port = origin.port if proxy is None else proxy.port
        for n, address in enumerate(addresses, 1):
            try:
                _transport, conn = await self.loop.create_connection(
                    lambda: _Connection(self, key),
                    address,
                    port,
                    ssl=self._ssl_context() if tls else None,
                    server_hostname=origin.host if tls else None,
                )
            except (OSError, ssl.SSLError) as exc:
                if n < len(addresses):
                    continue
                via = f" through the proxy {proxy.host}:{port}" if proxy is not None else ""
                raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}{via}: {exc}") from exc
            return conn

    async def _tunnel(self, origin: Origin, proxy: Proxy) -> _Connection:
        """A connection to an https origin through `proxy`: CONNECT, then TLS to the origin inside."""
        where = f"the proxy {proxy.host}:{proxy.port}"
        try:
            transport, tunnel = await self.loop.create_connection(lambda: _Tunnel(self.loop), proxy.host, proxy.port)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {where}: {exc}") from exc
        try:
            transport.write(
                b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (origin.authority, origin.authority, proxy.authorization)
            )
            head, _, early = (await tunnel.answer).partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0]
            version, _, rest = status_line.partition(b" ")
            status = rest[:3]
            if not version.startswith(b"HTTP/") or not status.isdigit() or not 200 <= int(status) < 300:
                raise HTTPClientError(
                    f"{where} refused a tunnel to {origin.authority.decode()}: {status_line.decode('latin-1')[:200]}"
                )
            if early:
                raise HTTPClientError(f"{where} sent bytes of its own into the tunnel to {origin.authority.decode()}")
            conn = _Connection(self, origin.key)
            tls_transport = await self.loop.start_tls(transport, conn, self._ssl_context(), server_hostname=origin.host)
        except (OSError, ssl.SSLError) as exc:
            transport.close()
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port} through {where}: {exc}") from exc
        except BaseException:
            transport.close()
            raise
        # start_tls hands the protocol its transport without calling connection_made.
        conn.connection_made(tls_transport)
        return conn

    async def request(self, url: str, headers: bytes, body: bytes, timeout: float | None = None) -> Response:
        """POST `body` to `url` and wait for the answer's status and headers.

        `headers` are extra header lines, each ending in CRLF (see `header_lines`). With `timeout`,
        the answer's headers, and its body read without a timeout of its own, must come within that
        many seconds (else `Timeout`). The caller must end the response with `release()` or `close()`."""
        deadline = self.loop.time() + timeout if timeout is not None else math.inf
        if self.closed:
            raise HTTPClientError("the client is closed")
        origin = origin_of(url)
        message = b"%sContent-Length: %d\r\nAccept-Encoding: gzip, deflate\r\n%s\r\n%s" % (
            origin.head,
            len(body),
            headers,
            body,
        )
        for _ in range(2):
            conn = self._take(origin.key)
            if conn is None:
                try:
                    async with asyncio.timeout_at(deadline if deadline != math.inf else None):
                        conn = await self._connect(origin)
                except TimeoutError:
                    raise ConnectTimeout(f"cannot connect to {origin.host}:{origin.port} before the deadline") from None
            response = Response(conn)
            response._deadline = deadline
            conn.response = response
            try:
                conn.transport.write(message)
                await response._headers()
            except ConnectionLost:
                if conn.reused and not response._any_bytes:
                    continue  # the server had dropped the idle connection: it never saw this request
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise ConnectionLost("connection closed before the response started")

    def close(self) -> None:
        self.closed = True
        for idle in self.idle.values():
            for conn in list(idle):
                conn.close()
        self.idle.clear()


def header_lines(headers: dict[str, str]) -> bytes:
    """Header lines for `Pool.request`; names and values must not contain CR or LF."""
    out = []
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise HTTPClientError(f"header {name!r} contains a line break")
        out.append(f"{name}: {value}\r\n")
    try:
        return "".join(out).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise HTTPClientError("a header value is not latin-1 text") from exc

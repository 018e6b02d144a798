"""The proxy's upstream HTTP client against real sockets: servers written here, byte for byte, so
that framing, keep-alive and failures are exactly what each test says."""

from __future__ import annotations

import asyncio
import base64
import gzip
import ssl
from urllib.parse import urlsplit

import pytest
import trustme
import uvloop

from proxy import httpclient

BODY = b'{"model": "m"}'


class Server:
    """A TCP (optionally TLS) server whose connection handler a test supplies; counts connections
    and records every request head it reads."""

    def __init__(self, handler, ssl_context=None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    def url(self, scheme="http", host="127.0.0.1"):
        return f"{scheme}://{host}:{self.port}/v1/chat/completions"

    async def read_request(self, reader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = next(
            int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def run(coro):
    return asyncio.run(coro)


async def _client_request(pool, url, headers=b"Content-Type: application/json\r\n"):
    response = await pool.request(url, headers, BODY)
    return response, await response.body()


async def _two_requests_on_one_pool(handler, pause: float = 0.0):
    """Two requests one after the other through one pool; returns the server and the second body."""
    async with Server(handler) as server:
        pool = httpclient.Pool(asyncio.get_running_loop())
        await _client_request(pool, server.url())
        await asyncio.sleep(pause)
        _, body = await _client_request(pool, server.url())
        pool.close()
        return server, body


def test_keep_alive_reuses_one_connection_and_sends_one_well_formed_request_each_time():
    async def handler(server, reader, writer):
        while (body := await server.read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Echo: yes\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def main():
        async with Server(handler) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            for _ in range(3):
                response, body = await _client_request(pool, server.url())
                assert (response.status, body, response.headers["x-echo"]) == (200, BODY, "yes")
            pool.close()
            return server

    server = run(main())
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Content-Length: %d" % len(BODY) in head
    assert b"Content-Type: application/json" in head


def test_chunked_gzip_and_read_until_close_bodies_arrive_whole():
    payload = "data: ☃ 漢字 🙂\n\n".encode() * 50
    packed = gzip.compress(payload)

    async def chunked(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n")
        for i in range(0, len(packed), 7):  # splits multi-byte characters and gzip blocks alike
            piece = packed[i : i + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await server.read_request(reader)  # the connection stays open for the next request

    async def until_close(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload)
        await writer.drain()

    async def main():
        loop = asyncio.get_running_loop()
        async with Server(chunked) as a, Server(until_close) as b:
            pool = httpclient.Pool(loop)
            _, chunked_body = await _client_request(pool, a.url())
            assert len(pool.idle[("http", "127.0.0.1", a.port)]) == 1, "a complete chunked answer is kept alive"
            _, close_body = await _client_request(pool, b.url())
            assert not pool.idle.get(("http", "127.0.0.1", b.port)), "an answer that ended the connection is not"
            pool.close()
            return chunked_body, close_body

    chunked_body, close_body = run(main())
    assert chunked_body == payload
    assert close_body == payload


def test_an_idle_connection_the_server_closed_is_replaced_without_losing_the_request():
    async def one_answer_then_close(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive was promised, but the server drops the idle connection (as servers do after a timeout).

    # The pause lets the close reach the client while the connection is idle.
    server, body = run(_two_requests_on_one_pool(one_answer_then_close, pause=0.1))
    assert body == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 2, "each request reached the server exactly once"


def test_a_stale_connection_found_on_write_is_retried_once_on_a_new_one():
    async def handler(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if server.connections == 1:
            # Closes only once the next request arrives: the client finds out after writing it.
            await reader.read(1)
            writer.transport.abort()
            return
        await server.read_request(reader)

    server, body = run(_two_requests_on_one_pool(handler))
    assert body == b"ok"
    assert server.connections == 2


def test_a_connection_lost_mid_answer_is_an_error_and_never_resent():
    async def handler(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def main():
        async with Server(handler) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            response = await pool.request(server.url(), b"", BODY)
            with pytest.raises(httpclient.ConnectionLost):
                await response.body()
            pool.close()
            return server

    server = run(main())
    assert len(server.requests) == 1


def test_a_slow_reader_stops_the_socket_being_read():
    """Back-pressure: what the client buffers stays near the high-water mark while the server has
    far more to send; reading resumes as the caller catches up."""
    total = 4 * 2**20

    async def handler(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        sent = 0
        while sent < total:
            writer.write(b"x" * 2**16)
            sent += 2**16
            await writer.drain()

    async def main():
        async with Server(handler) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            response = await pool.request(server.url(), b"", BODY)
            await asyncio.sleep(0.3)  # the server writes as fast as the client lets it
            peak = response._buffered
            received = len(response.read_nowait())
            while chunk := await response.read():
                received += len(chunk)
            response.release()
            pool.close()
            return peak, received

    peak, received = run(main())
    assert received == total
    assert httpclient.READ_HIGH_WATER <= peak < httpclient.READ_HIGH_WATER + 2**18


def test_connect_failures_and_invalid_answers_are_client_errors():
    async def garbage(server, reader, writer):
        await server.read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main():
        pool = httpclient.Pool(asyncio.get_running_loop())
        listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        listener.close()
        await listener.wait_closed()
        with pytest.raises(httpclient.HTTPClientError, match="cannot connect"):
            await pool.request(f"http://127.0.0.1:{port}/v1", b"", BODY)
        async with Server(garbage) as server:
            with pytest.raises(httpclient.HTTPClientError, match="invalid HTTP response"):
                await pool.request(server.url(), b"", BODY)
        with pytest.raises(httpclient.HTTPClientError, match="not an http"):
            await pool.request("ftp://127.0.0.1/v1", b"", BODY)
        pool.close()

    run(main())


def test_header_values_with_line_breaks_are_refused():
    with pytest.raises(httpclient.HTTPClientError, match="line break"):
        httpclient.header_lines({"Authorization": "Bearer x\r\nX-Injected: 1"})
    assert httpclient.header_lines({"A": "b"}) == b"A: b\r\n"


def test_https_verifies_the_certificate_and_sends_the_host_name(monkeypatch):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    seen_names = []
    server_context.sni_callback = lambda sock, name, ctx: seen_names.append(name)

    async def handler(server, reader, writer):
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure")
            await writer.drain()

    async def main(trusted: bool):
        async with Server(handler, ssl_context=server_context) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            client_context = ssl.create_default_context()
            if trusted:
                ca.configure_trust(client_context)
            pool._ssl = client_context
            try:
                return (await _client_request(pool, server.url("https", "localhost")))[1]
            finally:
                pool.close()

    with pytest.raises(httpclient.HTTPClientError, match="CERTIFICATE_VERIFY_FAILED"):
        run(main(trusted=False))
    assert run(main(trusted=True)) == b"secure"
    assert "localhost" in seen_names


def test_finished_exchanges_leave_no_reference_cycles():
    """Each call's objects are freed by reference counting, not left to the cyclic collector,
    whose full passes stall the proxy's event loop."""
    import gc

    async def handler(server, reader, writer):
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            await writer.drain()

    async def main():
        async with Server(handler) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            for _ in range(20):
                await _client_request(pool, server.url())
            response = await pool.request(server.url(), b"", BODY)
            response.close()  # abandoned half-way: also freed
            pool.close()

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run(main())
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, httpclient.Response)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert leaked == []


def test_deadlines_bound_every_wait_and_drop_the_connection_that_missed_one():
    """A late answer fails with Timeout at its deadline and its connection is dropped (the server
    sees the close); a deadline further off than the connection's armed timer is not cut short
    by it, on a fresh connection or a reused one."""
    closed = asyncio.Event()

    async def handler(server, reader, writer):
        while await server.read_request(reader) is not None:
            index = len(server.requests)
            if index == 1:  # slow but within every deadline: three chunks, 0.15 s apart
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for part in (b"one", b"two", b"three"):
                    await asyncio.sleep(0.15)
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif index == 2:  # headers, then nothing
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                if await reader.read(1) == b"":
                    closed.set()
                return
            await writer.drain()

    async def scenario():
        async with Server(handler) as server:
            loop = asyncio.get_running_loop()
            pool = httpclient.Pool(loop)
            response = await pool.request(server.url(), b"", BODY, timeout=0.25)
            parts = []
            while part := await response.read(timeout=0.25):
                parts.append(part)
            response.release()
            assert b"".join(parts) == b"onetwothree"

            response = await pool.request(server.url(), b"", BODY, timeout=5)
            assert server.connections == 1  # the same connection, its timer armed by the first exchange
            started = loop.time()
            with pytest.raises(httpclient.Timeout):
                await response.read(timeout=0.2)
            waited = loop.time() - started
            await asyncio.wait_for(closed.wait(), 5)
            pool.close()
            return waited

    waited = run(scenario())
    assert 0.19 <= waited < 1.5


def test_a_server_that_never_answers_misses_the_request_deadline():
    async def handler(server, reader, writer):
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def scenario():
        async with Server(handler) as server:
            pool = httpclient.Pool(asyncio.get_running_loop())
            with pytest.raises(httpclient.Timeout):
                await pool.request(server.url(), b"", BODY, timeout=0.2)
            pool.close()

    run(scenario())


# --- proxies from the environment ---------------------------------------------------------------


class ForwardProxy:
    """An HTTP proxy written here: CONNECT tunnels and absolute-form requests, each connection piped
    to its target. Records every request head it gets; with `credentials`, refuses others with 407."""

    def __init__(self, credentials: bytes | None = None):
        self.credentials = credentials
        self.heads: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ")
            if self.credentials is not None:
                expected = b"Proxy-Authorization: Basic " + base64.b64encode(self.credentials)
                if expected not in lines:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
            if method == b"CONNECT":
                host, port = target.rsplit(b":", 1)
                up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target.decode())
                up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
                up_writer.write(head.replace(target, url.path.encode(), 1))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _echo(server, reader, writer):
    while (body := await server.read_request(reader)) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


@pytest.fixture
def proxy_env(monkeypatch):
    """A clean proxy environment, and origins parsed afresh (they keep the proxy they were read with)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setattr(httpclient, "_origins", {})
    return monkeypatch


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_https_goes_through_the_proxys_connect_tunnel_with_its_credentials(proxy_env, loop, tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    # A private CA as an operator would trust it (README): the system trust store reads SSL_CERT_FILE.
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    proxy_env.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))

    async def main():
        async with Server(_echo, ssl_context=server_context) as server, ForwardProxy(b"steward:p@ss") as proxy:
            proxy_env.setenv("HTTPS_PROXY", f"http://steward:p%40ss@127.0.0.1:{proxy.port}")
            pool = httpclient.Pool(asyncio.get_running_loop())
            try:
                for _ in range(2):  # the second request reuses the tunnel
                    response, body = await _client_request(pool, server.url("https", "localhost"))
                    assert (response.status, body) == (200, BODY)
            finally:
                pool.close()
            return server, proxy

    factory = None if loop == "asyncio" else uvloop.new_event_loop  # Steward serves on uvloop
    with asyncio.Runner(loop_factory=factory) as runner:
        server, proxy = runner.run(main())
    [connect] = proxy.heads
    assert connect.startswith(f"CONNECT localhost:{server.port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"steward:p@ss") in connect
    # The request itself travelled inside TLS: the proxy saw only the CONNECT.
    assert server.connections == 1 and len(server.requests) == 2
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


def test_http_goes_to_the_proxy_in_absolute_form_and_no_proxy_hosts_go_direct(proxy_env):
    async def main():
        async with Server(_echo) as server, ForwardProxy() as proxy:
            proxy_env.setenv("http_proxy", proxy.url)
            pool = httpclient.Pool(asyncio.get_running_loop())
            response, body = await _client_request(pool, server.url())
            assert (response.status, body) == (200, BODY)
            proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
            httpclient._origins.clear()
            _, direct = await _client_request(pool, server.url("http", "localhost"))
            assert direct == BODY
            pool.close()
            return server, proxy

    server, proxy = run(main())
    [head] = proxy.heads
    assert head.startswith(f"POST http://127.0.0.1:{server.port}/v1/chat/completions HTTP/1.1\r\n".encode())
    # The upstream got the origin-form request the proxy passed on, then the direct one.
    assert [r.split(b"\r\n")[0] for r in server.requests] == [b"POST /v1/chat/completions HTTP/1.1"] * 2
    assert server.connections == 2


def test_a_proxy_that_refuses_or_is_unusable_is_a_client_error_naming_it(proxy_env):
    async def main():
        async with ForwardProxy(b"user:secret") as proxy:
            proxy_env.setenv("HTTPS_PROXY", proxy.url)  # no credentials: 407
            pool = httpclient.Pool(asyncio.get_running_loop())
            with pytest.raises(httpclient.HTTPClientError, match=r"refused a tunnel to localhost:9.*407"):
                await pool.request("https://localhost:9/v1", b"", BODY)
            proxy_env.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
            httpclient._origins.clear()
            with pytest.raises(httpclient.HTTPClientError, match="not an http://host:port URL"):
                await pool.request("https://localhost:9/v1", b"", BODY)
            proxy_env.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
            httpclient._origins.clear()
            with pytest.raises(httpclient.HTTPClientError, match=r"cannot connect to the proxy 127\.0\.0\.1:1\b"):
                await pool.request("https://localhost:9/v1", b"", BODY)
            pool.close()

    run(main())

"""Calling a deployment: a pooled aiohttp session for OpenAI-compatible upstreams, litellm for the rest.

aiohttp is used rather than httpx because its pool holds up at high concurrency. One session per
event loop (a session cannot cross loops); uvicorn's lifespan creates it, or the first request does.

Errors are mapped onto the project's own: `TransientUpstreamError` (connect errors, timeouts, 408,
409, 429, 5xx: worth another deployment) and `PermanentUpstreamError` (the upstream rejected the
request itself: retrying elsewhere will not help; its status and message go back to the client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson

from core.errors import PermanentUpstreamError, TransientUpstreamError

_sessions: dict[int, aiohttp.ClientSession] = {}
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


class UpstreamTimeout(TransientUpstreamError):
    status = 504
    code = "upstream_timeout"


def _session_new() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # admission control bounds concurrency; a second, hidden queue here would only add latency
        ttl_dns_cache=300,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        json_serialize=lambda o: orjson.dumps(o).decode(),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        read_bufsize=2**16,
    )


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    s = _sessions.get(id(loop))
    if s is None or s.closed:
        s = _session_new()
        _sessions[id(loop)] = s
    return s


async def sessions_close() -> None:
    loop = asyncio.get_running_loop()
    s = _sessions.pop(id(loop), None)
    if s is not None:
        await s.close()


def _headers(api_key: str | None, request_id: str) -> dict[str, str]:
    # Not `x-request-id`: some upstreams (llama.cpp's server) insist that one is a UUID and answer 400.
    headers = {"content-type": "application/json", "x-steward-request-id": request_id}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _error_message(status: int, raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    except orjson.JSONDecodeError:
        pass
    return f"upstream answered HTTP {status}"


def _raise_for(status: int, raw: bytes, deployment_name: str):
    message = _error_message(status, raw)
    if status in TRANSIENT_STATUSES:
        error = TransientUpstreamError(f"Upstream {deployment_name}: {message}", code="upstream_error")
    else:
        error = PermanentUpstreamError(message, code="upstream_rejected")
        # A request the provider refused (bad parameter, unknown model there) keeps its status for the client.
        error.status = status if 400 <= status < 500 else 502
    error.upstream_status = status
    raise error


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    data: dict


async def call_json(*, url: str, payload: bytes, api_key: str | None, timeout: float, request_id: str, name: str):
    """POST a JSON request and return the parsed JSON answer (non-streaming)."""
    try:
        async with session().post(
            url,
            data=payload,
            headers=_headers(api_key, request_id),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                _raise_for(resp.status, raw, name)
    except TimeoutError as exc:
        raise UpstreamTimeout(f"Upstream {name} did not answer within {timeout:g} s") from exc
    except aiohttp.ClientError as exc:
        raise TransientUpstreamError(f"Upstream {name} unreachable: {type(exc).__name__}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TransientUpstreamError(f"Upstream {name} answered with invalid JSON") from exc
    if not isinstance(data, dict):
        raise TransientUpstreamError(f"Upstream {name} answered with a non-object")
    return UpstreamResponse(status=resp.status, body=raw, data=data)


class SSEStream:
    """An open streaming response; iterate `batches()` for lists of complete SSE events (bytes, without
    the blank line).

    Bytes are split only on blank lines, so a multi-byte character cut by the network is reassembled
    before anything is forwarded; nothing is decoded here. A batch holds every complete event that
    had arrived when it was read (never waiting for more), so a fast upstream's burst costs the proxy
    one write to the client instead of one per event.
    """

    def __init__(self, ctx, resp: aiohttp.ClientResponse, name: str, read_timeout: float):
        self._ctx = ctx
        self._resp = resp
        self._name = name
        self._read_timeout = read_timeout

    async def batches(self) -> AsyncIterator[list[bytes]]:
        buffer = b""
        content = self._resp.content
        try:
            while True:
                # What is already buffered is taken without a suspension; only an empty buffer waits,
                # under a timer rather than wait_for (which on 3.11 starts a task per read).
                chunk = content.read_nowait()
                if not chunk:
                    if content.at_eof():
                        break
                    try:
                        async with asyncio.timeout(self._read_timeout):
                            chunk = await content.readany()
                    except TimeoutError as exc:
                        raise UpstreamTimeout(f"Upstream {self._name} stalled mid-stream") from exc
                    if not chunk:
                        break
                buffer += chunk
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                if b"\n\n" not in buffer:
                    continue
                *events, buffer = buffer.split(b"\n\n")
                events = [event for event in events if event]
                if events:
                    yield events
            if buffer.strip():
                yield [buffer.strip()]
        except aiohttp.ClientError as exc:
            raise TransientUpstreamError(f"Upstream {self._name} broke the stream: {type(exc).__name__}") from exc

    async def close(self) -> None:
        # Closing an unfinished response drops its connection: that is how the upstream learns of a cancel.
        self._resp.close()
        await self._ctx.__aexit__(None, None, None)


async def open_stream(
    *, url: str, payload: bytes, api_key: str | None, timeout: float, request_id: str, name: str
) -> SSEStream:
    """Send a streaming request and wait for the response headers (within `timeout`)."""
    ctx = session().post(
        url,
        data=payload,
        headers=_headers(api_key, request_id),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout),
    )
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for runs the call in a task of its own, which
        # costs two turns of a busy event loop before the first byte.
        async with asyncio.timeout(timeout):
            resp = await ctx.__aenter__()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"Upstream {name} did not answer within {timeout:g} s") from exc
    except aiohttp.ClientError as exc:
        raise TransientUpstreamError(f"Upstream {name} unreachable: {type(exc).__name__}") from exc
    if resp.status >= 400:
        try:
            raw = await asyncio.wait_for(resp.read(), timeout)
        except (TimeoutError, aiohttp.ClientError):
            raw = b""
        finally:
            resp.release()
        _raise_for(resp.status, raw, name)
    return SSEStream(ctx, resp, name, read_timeout=timeout)

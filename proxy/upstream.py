"""Calling a deployment: pooled HTTP/1.1 (`proxy.httpclient`) for OpenAI-compatible upstreams, litellm for the rest.

One connection pool per event loop (connections cannot cross loops); uvicorn's lifespan creates it,
or the first request does.

Errors are mapped onto the project's own: `TransientUpstreamError` (connect errors, timeouts, 408,
409, 429, 5xx: worth another deployment), `DeploymentMisconfigured` (401, 403: the deployment's
credentials are refused; worth another deployment, and a 502 for the client) and
`PermanentUpstreamError` (the upstream rejected the request itself: retrying elsewhere will not
help; its status and message go back to the client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from core import llm
from core.errors import DeploymentMisconfigured, PermanentUpstreamError, TransientUpstreamError, UpstreamRateLimited
from proxy import httpclient

logger = logging.getLogger(__name__)
_pools: dict[int, httpclient.Pool] = {}
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
MAX_ERROR_BODY = 2**20  # bytes of an error answer read for its message
# One SSE event (its lines up to the blank one) held while it is incomplete: past this the stream
# ends with an upstream error rather than the process buffering an endless line.
MAX_EVENT_BYTES = 8 * 2**20


class UpstreamTimeout(TransientUpstreamError):
    status = 504
    code = "upstream_timeout"


def pool() -> httpclient.Pool:
    loop = asyncio.get_running_loop()
    p = _pools.get(id(loop))
    if p is None or p.closed or p.loop is not loop:
        p = _pools[id(loop)] = httpclient.Pool(loop)
    return p


async def pools_close() -> None:
    """Close this event loop's upstream connections: the direct pool and litellm's pooled clients."""
    p = _pools.pop(id(asyncio.get_running_loop()), None)
    if p is not None:
        p.close()
    await llm.clients_close()


def _headers(api_key: str | None, request_id: str) -> bytes:
    # Not `x-request-id`: some upstreams (llama.cpp's server) insist that one is a UUID and answer 400.
    headers = {"Content-Type": "application/json", "X-Steward-Request-Id": request_id}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpclient.header_lines(headers)


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


def _raise_for(status: int, raw: bytes, deployment_name: str, retry_after: str | None = None):
    message = _error_message(status, raw)
    if status == 429:
        error = UpstreamRateLimited(deployment=deployment_name, message=message, retry_after=retry_after)
    elif status in TRANSIENT_STATUSES:
        error = TransientUpstreamError(f"Upstream {deployment_name}: {message}", code="upstream_error")
    elif status in DeploymentMisconfigured.STATUSES:
        error = DeploymentMisconfigured(status=status, deployment=deployment_name, message=message)
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


async def _open(
    url: str, payload: bytes, api_key: str | None, request_id: str, name: str, timeout: float
) -> httpclient.Response:
    """The answer's status and headers, within `timeout` (which also bounds reading its body)."""
    try:
        return await pool().request(url, _headers(api_key, request_id), payload, timeout=timeout)
    except httpclient.ConnectFailed as exc:
        raise _unreachable(name, exc) from exc
    except httpclient.Timeout as exc:
        raise UpstreamTimeout(f"Upstream {name} did not answer within {timeout:g} s") from exc
    except httpclient.HTTPClientError as exc:
        raise _unreachable(name, exc) from exc


def _unreachable(name: str, exc: Exception) -> TransientUpstreamError:
    """One answer for every way of not getting through (refused, unresolvable, refused by the egress
    policy, no connection before the deadline, not HTTP): the address, the port or the OS's words
    would let a client map the network behind Steward through its error messages. The detail goes to
    the log and to the attempt in the request log (`detail`)."""
    error = TransientUpstreamError(f"Upstream {name} could not be reached", code="upstream_error")
    error.detail = str(exc)[:500]
    logger.warning("upstream %s could not be reached: %s", name, error.detail)
    return error


def _broken(message: str, exc: Exception) -> TransientUpstreamError:
    error = TransientUpstreamError(message, code="upstream_error")
    error.detail = str(exc)[:500]
    return error


async def _raise_for_response(resp: httpclient.Response, name: str):
    try:
        raw = await resp.body(MAX_ERROR_BODY)
    except httpclient.HTTPClientError:
        resp.close()
        raw = b""
    _raise_for(resp.status, raw, name, resp.headers.get("retry-after"))


async def call_json(*, url: str, payload: bytes, api_key: str | None, timeout: float, request_id: str, name: str):
    """POST a JSON request and return the parsed JSON answer (non-streaming), all within `timeout`."""
    resp = await _open(url, payload, api_key, request_id, name, timeout)
    try:
        if resp.status >= 400:
            await _raise_for_response(resp, name)
        raw = await resp.body()
    except httpclient.Timeout as exc:
        resp.close()
        raise UpstreamTimeout(f"Upstream {name} did not answer within {timeout:g} s") from exc
    except httpclient.HTTPClientError as exc:
        raise _broken(f"Upstream {name} broke the answer", exc) from exc
    except BaseException:
        resp.close()
        raise
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

    def __init__(self, resp: httpclient.Response, name: str, read_timeout: float):
        self._resp = resp
        self._name = name
        self._read_timeout = read_timeout  # for every wait, the first event's included
        self._rest = b""
        self._events = False

    @property
    def finished(self) -> bool:
        """Every byte of the stream has arrived and been handed out: the last batch was the last."""
        return self._resp.at_eof and not self._rest.strip()

    async def batches(self) -> AsyncIterator[list[bytes]]:
        buffer = b""
        resp = self._resp
        try:
            while True:
                # What is already buffered is taken without a suspension; only an empty buffer waits,
                # bounded by the connection's deadline (no timer of its own, no task).
                chunk = resp.read_nowait()
                if not chunk:
                    if resp.at_eof:
                        break
                    try:
                        chunk = await resp.read(timeout=self._read_timeout)
                    except httpclient.Timeout as exc:
                        # The missed deadline has dropped the connection already.
                        if not self._events:
                            raise UpstreamTimeout(
                                f"Upstream {self._name} sent nothing within {self._read_timeout:g} s"
                            ) from exc
                        raise UpstreamTimeout(f"Upstream {self._name} stalled mid-stream") from exc
                    if not chunk:
                        break
                buffer += chunk
                if b"\r" in buffer:
                    buffer = buffer.replace(b"\r\n", b"\n")
                if b"\n\n" not in buffer:
                    if len(buffer) > MAX_EVENT_BYTES:
                        raise TransientUpstreamError(
                            f"Upstream {self._name} sent a stream event larger than {MAX_EVENT_BYTES} bytes"
                        )
                    continue
                *events, buffer = buffer.split(b"\n\n")
                events = [event for event in events if event]
                if events:
                    self._rest = buffer
                    self._events = True
                    yield events
            if buffer.strip():
                yield [buffer.strip()]
        except httpclient.HTTPClientError as exc:
            raise _broken(f"Upstream {self._name} broke the stream", exc) from exc

    async def close(self) -> None:
        # An unfinished response drops its connection: that is how the upstream learns of a cancel.
        self._resp.release()


async def open_stream(
    *, url: str, payload: bytes, api_key: str | None, timeout: float, request_id: str, name: str
) -> SSEStream:
    """Send a streaming request and wait for the response headers; each wait for the stream's
    bytes, the headers' included, is bounded by `timeout`."""
    resp = await _open(url, payload, api_key, request_id, name, timeout)
    if resp.status >= 400:
        await _raise_for_response(resp, name)
    return SSEStream(resp, name, read_timeout=timeout)

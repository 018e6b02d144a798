"""`GET /v1/moderation/{id}[?wait=N]`: the client's view of its held request.

Only the API key that made the request sees the item (any other key, of this organisation or
another, gets a 404 as if it did not exist). `wait` (0..60 seconds) long-polls: the answer comes as
soon as a reviewer decides, from any process (safety.moderation.ahold_decision_wait), or at the
end of the wait with the item still pending. The held text is never in the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import parse_qs

import orjson

from proxy.errors import ProxyError
from proxy.keyauth import aprincipal_for, bearer_token
from safety.models import ModerationItem, ModerationStatus
from safety.moderation import ahold_decision_wait, moderation_client_view, public_id_valid

logger = logging.getLogger("steward.proxy")

PREFIX = "/v1/moderation/"
MAX_WAIT_SECONDS = 60


def is_moderation_path(path: str) -> bool:
    return path.startswith(PREFIX) and len(path) > len(PREFIX)


def _bearer(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bearer_token(value)
    return None


def _wait_param(scope) -> float:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    values = query.get("wait")
    if not values:
        return 0.0
    try:
        wait = float(values[-1])
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT_SECONDS or wait != wait:
        raise ProxyError(
            400, f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS}.", code="invalid_wait", param="wait"
        )
    return wait


async def _send(send, status: int, body: bytes, headers=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def moderation_get(scope, receive, send) -> None:
    """Answer one request; every failure is an OpenAI error envelope."""
    try:
        if scope["method"] != "GET":
            raise ProxyError(
                405, f"{scope['path']} accepts GET only.", code="method_not_allowed", type="invalid_request_error"
            )
        principal = await aprincipal_for(_bearer(scope))
        wait = _wait_param(scope)
        public_id = scope["path"][len(PREFIX) :].rstrip("/")
        item = None
        if public_id_valid(public_id):
            item = await ModerationItem.objects.filter(
                public_id=public_id, organisation_id=principal.organisation_id, api_key_id=principal.id
            ).afirst()
        if item is None:
            raise ProxyError(404, f"No moderation item {public_id!r}.", code="moderation_item_not_found")
        if item.status == ModerationStatus.PENDING and wait > 0:
            waiting = asyncio.ensure_future(ahold_decision_wait(item.public_id, wait))
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                return  # the client left; nobody to answer
            item = waiting.result() or item
    except ProxyError as error:
        await _send(send, error.status, error.body(), error.headers())
        return
    except Exception:
        logger.exception("moderation lookup failed")
        error = ProxyError(500, "Internal error in Steward; it has been logged.", code="internal_error")
        await _send(send, error.status, error.body())
        return
    await _send(send, 200, orjson.dumps(moderation_client_view(item)), ((b"cache-control", b"no-store"),))

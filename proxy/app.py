"""The OpenAI-compatible API (`/v1/...`): a raw ASGI application placed ahead of Django.

No Django request cycle, no DRF: Django's costs about 1 ms of CPU per request, this path costs a
fraction of that. It shares Django's settings, models and services (config/asgi.py sets Django up
before importing it). The pipeline itself lives in proxy.pipeline; this module routes, runs the
lifespan (the pooled upstream session, Redis scripts) and guarantees that whatever happens the
client gets an OpenAI error envelope, never an HTML page.
"""

from __future__ import annotations

import gc
import logging

from core.redis import aredis_client, bounded
from proxy import metrics, upstream
from proxy.admission import scripts_load
from proxy.errors import ProxyError
from proxy.moderation_api import is_moderation_path, moderation_get
from proxy.pipeline import CHAT, COMPLETIONS, EMBEDDINGS, MODELS, ProxyRequest
from proxy.requestlog import log_buffers_flush

logger = logging.getLogger("steward.proxy")

ROUTES = {
    "/v1/chat/completions": ("POST", CHAT),
    "/v1/completions": ("POST", COMPLETIONS),
    "/v1/embeddings": ("POST", EMBEDDINGS),
    "/v1/models": ("GET", MODELS),
}


async def _send_plain_error(send, error: ProxyError, headers: tuple = ()) -> None:
    body = error.body()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *error.headers(),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Everything imported so far (Django, litellm's tables, the apps) lives as long as the
            # process. Frozen, the collector stops walking it: a full collection had taken 60-80 ms
            # with it, every few seconds under load, and set the proxy's p99.
            gc.collect()
            gc.freeze()
            upstream.pool()
            try:
                await bounded(scripts_load(aredis_client()))
            except Exception:
                # Redis may come up later; admission loads the scripts on first use (EVALSHA falls back to EVAL).
                logger.warning("could not preload the proxy's Redis scripts")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await log_buffers_flush()
                await upstream.pools_close()
            finally:
                await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind != "http":
        return
    path = scope["path"].rstrip("/") or "/"
    if is_moderation_path(path):
        await moderation_get(scope, receive, send)
        return
    route = ROUTES.get(path)
    if route is None and path.startswith("/v1/models/"):
        route = ROUTES["/v1/models"]  # one model: the pipeline reads its id from the path
    if route is None:
        metrics.count("unknown", "rejected")
        await _send_plain_error(
            send, ProxyError(404, f"Unknown URL {scope['path']}.", code="unknown_url", type="invalid_request_error")
        )
        return
    method, endpoint = route
    if scope["method"] != method:
        metrics.count(endpoint, "rejected")
        await _send_plain_error(
            send,
            ProxyError(
                405, f"{scope['path']} accepts {method} only.", code="method_not_allowed", type="invalid_request_error"
            ),
            ((b"allow", method.encode()),),
        )
        return
    request = ProxyRequest(scope, receive, send, endpoint)
    try:
        await request.run()
    except Exception:
        # The pipeline answers its own errors; this is the last line for bugs in that answering.
        logger.exception("unhandled error in the proxy")
        if not request.response_started:
            try:
                await _send_plain_error(
                    send, ProxyError(500, "Internal error in Steward; it has been logged.", code="internal_error")
                )
            except Exception:
                logger.debug("could not send the error response", exc_info=True)

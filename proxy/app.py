"""The OpenAI-compatible API (`/v1/...`): a lean ASGI application ahead of Django.

Placeholder until the proxy lands: every path answers in the OpenAI error envelope.
"""

from __future__ import annotations

import json


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps(
        {
            "error": {
                "message": f"Unknown path {scope['path']}",
                "type": "invalid_request_error",
                "param": None,
                "code": "not_found",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

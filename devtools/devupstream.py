"""A small OpenAI-compatible upstream for development, tests and benchmarks.

Deterministic replies, real SSE streaming, a `usage` block, and knobs for latency and failure:

    python -m devtools.devupstream --port 8100 [--delay-ms 0] [--name dev-a]

Knobs can be changed while it runs with `POST /_control` (JSON, any subset):
    delay_ms              wait before answering (before the first token when streaming)
    chunk_delay_ms        wait between streamed chunks
    fail_status           answer every request with this HTTP status (0 = off)
    fail_count            ... but only for the next N requests (then back to normal)
    hang                  accept requests and never answer (a slow, not dead, upstream)
    omit_usage            leave out `usage` (some providers do)
    split_multibyte       write streamed text in pieces that cut UTF-8 characters in half
    reply                 fixed reply text (default: derived from the last message)
    echo                  reply with the last message's text verbatim (what the upstream was sent)
`GET /_stats` tells what it saw: requests, cancellations (client went away mid-answer),
in-flight count and the last request body. `POST /_reset` restores defaults and zeroes stats.
It is a test double of a *provider*, with no Steward code in it, so it can run anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, field

from aiohttp import web

logger = logging.getLogger("steward.devupstream")

DEFAULT_MODELS = ("dev-small", "dev-large", "dev-embed")


@dataclass
class Knobs:
    delay_ms: float = 0
    chunk_delay_ms: float = 0
    fail_status: int = 0
    fail_count: int | None = None
    hang: bool = False
    omit_usage: bool = False
    split_multibyte: bool = False
    reply: str | None = None
    echo: bool = False
    # When set, every /v1 endpoint answers 401 unless sent `Authorization: Bearer <api_key>`.
    api_key: str | None = None
    # Sent as Retry-After with injected failures (as providers do with their 429s).
    retry_after: int | None = None


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled_tokens: list[int] = field(default_factory=list)
    # Client ports in order of first request: how many connections the callers opened.
    client_ports: list[int] = field(default_factory=list)
    last_request: dict | None = None
    last_headers: dict | None = None


def count_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: words and punctuation runs."""
    return max(1, len(text.split())) if text else 0


def reply_for(messages_text: str, max_tokens: int | None, fixed: str | None) -> list[str]:
    if fixed is not None:
        words = fixed.split(" ")
    else:
        digest = hashlib.sha256(messages_text.encode()).hexdigest()[:8]
        tail = " ".join(messages_text.split()[-6:])
        words = f"Steward dev reply {digest}: you said {tail}".split(" ")
    if max_tokens is not None:
        words = words[: max(1, max_tokens)]
    # Every piece but the first carries its leading space, as real tokenizers' pieces do.
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _messages_text(body: dict) -> str:
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n".join(parts)


def _last_text(body: dict) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


class DevUpstream:
    def __init__(self, *, name: str = "dev", models: tuple[str, ...] = DEFAULT_MODELS, knobs: Knobs | None = None):
        self.name = name
        self.models = models
        self.defaults = knobs or Knobs()
        self.knobs = Knobs(**asdict(self.defaults))
        self.stats = Stats()

    # --- plumbing -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/_control", self.control)
        app.router.add_post("/_reset", self.reset)
        app.router.add_get("/_stats", self.stats_view)
        app.router.add_get("/health", self.health)
        return app

    async def control(self, request: web.Request) -> web.Response:
        changes = await request.json()
        for key, value in changes.items():
            if not hasattr(self.knobs, key):
                return web.json_response({"error": f"unknown knob {key}"}, status=400)
            setattr(self.knobs, key, value)
        return web.json_response(asdict(self.knobs))

    async def reset(self, request: web.Request) -> web.Response:
        self.knobs = Knobs(**asdict(self.defaults))
        self.stats = Stats()
        return web.json_response({"ok": True})

    async def stats_view(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.stats))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name})

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.knobs.api_key is None or request.headers.get("Authorization") == f"Bearer {self.knobs.api_key}":
            return None
        return web.json_response(
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )

    async def list_models(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _error(self, status: int, message: str) -> web.Response:
        headers = {"Retry-After": str(self.knobs.retry_after)} if self.knobs.retry_after is not None else None
        return web.json_response(
            {"error": {"message": message, "type": "dev_upstream_error", "param": None, "code": str(status)}},
            status=status,
            headers=headers,
        )

    async def _admit(self, request: web.Request) -> tuple[dict | None, web.Response | None]:
        self.stats.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer and peer[1] not in self.stats.client_ports:
            self.stats.client_ports.append(peer[1])
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, self._error(400, "body is not JSON")
        self.stats.last_request = body
        self.stats.last_headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.stats.last_headers["authorization_present"] = "authorization" in {k.lower() for k in request.headers}
        refused = self._unauthorized(request)
        if refused is not None:
            self.stats.failed += 1
            return None, refused
        if self.knobs.hang:
            await asyncio.sleep(3600)
        if self.knobs.fail_status and (self.knobs.fail_count is None or self.knobs.fail_count > 0):
            if self.knobs.fail_count is not None:
                self.knobs.fail_count -= 1
            self.stats.failed += 1
            return None, self._error(int(self.knobs.fail_status), f"injected failure from {self.name}")
        if body.get("model") not in self.models:
            return None, self._error(404, f"model {body.get('model')!r} not served by {self.name}")
        if self.knobs.delay_ms:
            await asyncio.sleep(self.knobs.delay_ms / 1000)
        return body, None

    # --- endpoints ------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        produced = 0
        streaming = False
        try:
            body, error = await self._admit(request)
            if error is not None:
                return error
            prompt_text = _messages_text(body) if chat else str(body.get("prompt", ""))
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
            fixed = self.knobs.reply
            if self.knobs.echo:
                fixed = _last_text(body) if chat else str(body.get("prompt", ""))
            pieces = reply_for(prompt_text, max_tokens, fixed)
            prompt_tokens = count_tokens(prompt_text)
            completion_tokens = len(pieces)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if (body.get("messages") or [{}])[0].get("role") == "system" and "cached" in prompt_text:
                usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens // 2}
            finish = "length" if max_tokens is not None and completion_tokens >= max_tokens else "stop"
            created = int(time.time())
            ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
            if not body.get("stream"):
                text = "".join(pieces)
                choice = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                )
                payload = {
                    "id": ident,
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [choice],
                    "system_fingerprint": self.name,
                }
                if not self.knobs.omit_usage:
                    payload["usage"] = usage
                self.stats.completed += 1
                return web.json_response(payload, headers={"x-dev-upstream": self.name})

            streaming = True
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-dev-upstream": self.name}
            )
            await response.prepare(request)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            obj = "chat.completion.chunk" if chat else "text_completion"
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                await self._send(
                    response,
                    {"id": ident, "object": obj, "created": created, "model": body["model"], "choices": [first]},
                )
            for piece in pieces:
                if self.knobs.chunk_delay_ms:
                    await asyncio.sleep(self.knobs.chunk_delay_ms / 1000)
                choice = (
                    {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    if chat
                    else {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                )
                await self._send(
                    response,
                    {"id": ident, "object": obj, "created": created, "model": body["model"], "choices": [choice]},
                )
                produced += 1
            last = (
                {"index": 0, "delta": {}, "finish_reason": finish}
                if chat
                else {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}
            )
            await self._send(
                response, {"id": ident, "object": obj, "created": created, "model": body["model"], "choices": [last]}
            )
            if include_usage and not self.knobs.omit_usage:
                await self._send(
                    response,
                    {
                        "id": ident,
                        "object": obj,
                        "created": created,
                        "model": body["model"],
                        "choices": [],
                        "usage": usage,
                    },
                )
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.stats.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats.cancelled += 1
            self.stats.cancelled_tokens.append(produced)
            if streaming:
                logger.info("client went away after %s chunks", produced)
            raise
        finally:
            self.stats.in_flight -= 1

    async def _send(self, response: web.StreamResponse, payload: dict) -> None:
        data = ("data: " + json.dumps(payload, ensure_ascii=False) + "\n\n").encode()
        if not self.knobs.split_multibyte:
            await response.write(data)
            return
        # Cut inside every multi-byte character so a proxy that decodes per network read breaks it.
        cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]
        start = 0
        for cut in cuts:
            await response.write(data[start:cut])
            await asyncio.sleep(0.002)
            start = cut
        await response.write(data[start:])

    async def embeddings(self, request: web.Request) -> web.Response:
        self.stats.in_flight += 1
        try:
            body, error = await self._admit(request)
            if error is not None:
                return error
            inputs = body.get("input")
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not inputs:
                return self._error(400, "input must be a string or a non-empty list")
            dims = int(body.get("dimensions") or 8)
            data = []
            tokens = 0
            for i, text in enumerate(inputs):
                text = str(text)
                tokens += count_tokens(text)
                digest = hashlib.sha256(text.encode()).digest()
                vector = [((digest[j % len(digest)] / 255.0) * 2 - 1) for j in range(dims)]
                norm = math.sqrt(sum(v * v for v in vector)) or 1.0
                data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vector]})
            self.stats.completed += 1
            payload = {"object": "list", "data": data, "model": body["model"]}
            if not self.knobs.omit_usage:
                payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            return web.json_response(payload)
        finally:
            self.stats.in_flight -= 1


async def serve(upstream: DevUpstream, *, host: str = "127.0.0.1", port: int = 8100) -> web.AppRunner:
    """Start serving on host:port within the running loop; returns the runner to clean up."""
    runner = web.AppRunner(upstream.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--name", default="dev")
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    upstream = DevUpstream(
        name=args.name,
        models=tuple(m for m in args.models.split(",") if m),
        knobs=Knobs(delay_ms=args.delay_ms, chunk_delay_ms=args.chunk_delay_ms),
    )
    web.run_app(upstream.app(), host=args.host, port=args.port, handler_cancellation=True, access_log=None, print=None)


if __name__ == "__main__":
    main()

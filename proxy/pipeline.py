"""One proxied request, in explicit stages.

    authenticate -> resolve prompt -> pre-filters -> admit (limits, cache, deployment)
    -> reserve budget -> call upstream (retries, fallbacks) -> post-filters -> settle cost -> log

Each stage is timed; the timings go into the request-log record and a Prometheus histogram, and
`x-steward-overhead-ms` is the total minus the time spent waiting on upstreams. Nothing here
touches the database while the in-process caches (keys, prompts, routes, prices, budgets) are
warm; the only network work besides the upstream call is one Redis round trip before it (the
ADMIT script and the budget reservation, sent together) and one after (the FINISH script, the
cache write and the budget settlement, written before the answer goes out), on the event loop's
shared pipelined connection (`core.redis.abatch`). The request-log record is XADDed in a batch
with the records of every request that finished in the same turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import time
import types
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import redis.exceptions
from django.db import InterfaceError, OperationalError

from accounts.selectors import aapi_key_authenticate
from billing import services as billing
from core import llm
from core.conf import hot
from core.errors import ApplicationError, PermanentUpstreamError, TransientUpstreamError
from core.logging import request_id_var
from core.redis import Command, abatch, abatch_queue, aflushed
from proxy import admission, metrics, upstream
from proxy.errors import ProxyError, internal_error, proxy_error_from
from proxy.requestlog import log_buffer
from proxy.schemas import (
    REQUEST_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    body_validate,
    fields_check,
    unsupported_parameter,
)
from proxy.selectors import DeploymentTarget, RouteTarget, RoutingTable, arouting_table
from safety import services as safety
from safety.policies import FilterAction, FilterContext

logger = logging.getLogger("steward.proxy")

CHAT, COMPLETIONS, EMBEDDINGS, MODELS = "chat.completions", "completions", "embeddings", "models"
SCHEMAS = {CHAT: ChatCompletionRequest, COMPLETIONS: CompletionRequest, EMBEDDINGS: EmbeddingRequest}
UPSTREAM_PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}
# Parameters a prompt version may fix; a request changes them only if its key may override them.
PROMPT_PARAMS = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "frequency_penalty",
        "presence_penalty",
        "stop",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "n",
        "logit_bias",
        "reasoning_effort",
    }
)
CIRCUIT_PROBE_MS = 30_000
WATCH_AFTER_SECONDS = 0.1  # streams start watching for a hang-up this long after they begin
# A body not complete this long after the first wait for it counts as a slow one (`BodyReaders`).
BODY_READER_GRACE_SECONDS = 0.25

_state = {"in_flight": 0}

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
# A cached stream: this line, the usage as JSON on one line, then the events exactly as the client got them.
STREAM_CACHE_FORMAT = b"steward-sse-1\n"


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


class BodyReaders:
    """Requests of this process still sending their body, in all and per API key.

    They hold no in-flight slot (taken only once the body is complete), so slow senders cannot
    starve the process of slots; this bounds them instead: STEWARD_PROXY_MAX_BODY_READERS per
    process, and a key's `max_in_flight` per key and process (its Redis-held in-flight count covers
    its requests from admission on; a key may thus have up to `max_in_flight` requests sending their
    body in each process, besides `max_in_flight` admitted ones in all).
    """

    __slots__ = ("by_key", "total")

    def __init__(self):
        self.total = 0
        self.by_key: dict[int, int] = {}

    def enter(self, principal) -> None:
        if self.total >= hot.STEWARD_PROXY_MAX_BODY_READERS:
            raise ProxyError(
                503,
                "Steward is receiving too many request bodies; retry shortly.",
                code="overloaded",
                retry_after=1,
                outcome="rejected",
            )
        held = self.by_key.get(principal.id, 0)
        if principal.max_in_flight is not None and held >= principal.max_in_flight:
            raise ProxyError(
                429,
                "Rate limit reached for this API key (requests in flight).",
                code="rate_limit_exceeded",
                retry_after=1,
                extra={"limit": "in_flight"},
            )
        self.total += 1
        self.by_key[principal.id] = held + 1

    def leave(self, principal) -> None:
        self.total -= 1
        held = self.by_key.pop(principal.id) - 1
        if held:
            self.by_key[principal.id] = held


body_readers = BodyReaders()


@types.coroutine
def _resumed(receiving, waiting):
    """Await the rest of a `receive()` coroutine that was stepped once by hand and is suspended on
    `waiting` (what `await` would have done from the start; see `ProxyRequest.read_body`)."""
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:
            try:
                waiting = receiving.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = receiving.send(sent)
            except StopIteration as done:
                return done.value


def in_flight() -> int:
    return _state["in_flight"]


def _now_ms() -> int:
    return int(time.time() * 1000)


def weighted_order(deployments: list[DeploymentTarget]) -> list[DeploymentTarget]:
    """A random order in which each deployment comes first in proportion to its weight (Efraimidis-Spirakis)."""
    if len(deployments) < 2:
        return deployments
    return sorted(deployments, key=lambda d: random.random() ** (1.0 / d.weight), reverse=True)


def _usage_from(data: dict | None) -> dict | None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "cached_tokens": int((prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0) or 0),
        "reasoning_tokens": int(
            (completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else 0) or 0
        ),
        "estimated": False,
    }


def _response_text(endpoint: str, data: dict) -> str:
    parts = []
    for choice in data.get("choices") or []:
        if endpoint == CHAT:
            parts.append(str(((choice.get("message") or {}).get("content")) or ""))
        else:
            parts.append(str(choice.get("text") or ""))
    return "".join(parts)


class ProxyRequest:
    __slots__ = (
        "attempts",
        "body",
        "cache_hit",
        "cache_key",
        "cache_parts",
        "cache_value",
        "client_body",
        "client_usage",
        "dep_clean",
        "dep_tracked",
        "deployment",
        "disconnected",
        "endpoint",
        "error",
        "filter_context",
        "final",
        "http_status",
        "key_admitted",
        "model",
        "no_cache",
        "overhead_header_ms",
        "pending_finish",
        "principal",
        "prompt",
        "raw_body",
        "receive",
        "released",
        "request_id",
        "reservation",
        "response_data",
        "response_done",
        "response_started",
        "route",
        "scope",
        "send",
        "settle_t0",
        "settled",
        "slot",
        "started_at",
        "status",
        "stream",
        "stream_data",
        "stream_parsed",
        "stream_pieces",
        "t0",
        "table",
        "tail",
        "task",
        "timings",
        "unknown_fields",
        "upstream_s",
        "usage",
        "watcher",
    )

    def __init__(self, scope, receive, send, endpoint: str):
        self.scope = scope
        self.receive = receive
        self.send = send
        self.endpoint = endpoint
        # 128 random bits as 32 hex digits, uuid4().hex's format at a quarter of its cost.
        self.request_id = "req_" + os.urandom(16).hex()
        self.t0 = time.perf_counter()
        self.started_at = time.time()
        self.timings: dict[str, float] = {}
        self.principal = None
        self.table: RoutingTable | None = None
        self.route: RouteTarget | None = None
        self.model = ""
        self.raw_body = b""
        self.client_body: dict | None = None
        self.unknown_fields: set[str] | None = None  # body fields outside the endpoint's allowlist
        self.body: dict | None = None
        self.stream = False
        self.client_usage = False
        self.prompt = None
        self.attempts: list[dict] = []
        self.usage: dict | None = None
        self.upstream_s = 0.0
        self.status = "ok"
        self.http_status = 200
        self.error: ProxyError | None = None
        self.deployment: DeploymentTarget | None = None
        self.cache_key = ""
        self.cache_hit = False
        self.reservation = None
        self.settled = False
        self.settle_t0 = 0.0
        self.key_admitted = False
        self.pending_finish: tuple | None = None
        self.response_started = False
        self.response_done = False
        self.response_data: dict | None = None
        self.stream_data: list[bytes] = []  # the data of content events, parsed only when needed
        self.stream_parsed = 0
        self.stream_pieces: list[str] = []
        self.disconnected = False
        self.task = None
        self.watcher: asyncio.Task | None = None
        self.tail = b""  # the stream's last events, sent with [DONE]
        self.slot = False
        self.no_cache = False
        self.overhead_header_ms = 0.0
        self.filter_context: FilterContext | None = None
        self.cache_value: bytes | None = None
        self.cache_parts: list[bytes] | None = None  # a stream's events as sent, kept for the cache
        self.dep_clean = False
        self.dep_tracked = False
        self.released = False
        # (payload, x-steward-cache) of a non-streaming success, sent once the request is settled and logged
        self.final: tuple[bytes, str | None] | None = None

    # --- driver ---------------------------------------------------------------------------------

    async def run(self) -> None:
        request_id_var.set(self.request_id)
        watch_timer = None
        try:
            await self.authenticate()
            if self.endpoint != MODELS:
                # The body first: a slot is held only by requests that have sent theirs (slow senders
                # are bounded by `body_readers` and the body deadline instead).
                await self.read_body()
            if _state["in_flight"] >= hot.STEWARD_PROXY_MAX_IN_FLIGHT:
                raise ProxyError(
                    503, "Steward is at capacity; retry shortly.", code="overloaded", retry_after=1, outcome="rejected"
                )
            _state["in_flight"] += 1
            self.slot = True
            if self.endpoint == MODELS:
                await self.list_models()
                return
            if self.stream:
                # Only streams watch for the client going away, and only those still running after
                # WATCH_AFTER_SECONDS: a watching task costs about a tenth of a short stream's CPU,
                # and a client that hangs up sooner is noticed when the watch starts.
                # A non-streaming request learns of it when its answer cannot be sent.
                self.task = asyncio.current_task()
                watch_timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, self._watch_start)
            await self.resolve_prompt()
            await self.pre_filters()
            if self.stream:
                await self.call_streaming()
            else:
                await self.call()
        except ProxyError as exc:
            self.fail(exc)
        except ApplicationError as exc:
            self.fail(proxy_error_from(exc))
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            self.task.uncancel()
            self.status = "cancelled"
            self.http_status = 499
        except ClientGone:
            self.disconnected = True
            self.status = "cancelled"
            self.http_status = 499
        except (OperationalError, InterfaceError) as exc:
            # A cold cache (a new key, a prompt or route just changed) needs the database; while it
            # is unreachable that is a 503 to retry, not an internal error.
            logger.warning("database unreachable in the proxy pipeline: %s", exc)
            self.fail(
                ProxyError(
                    503,
                    "Steward cannot reach its database right now; retry shortly.",
                    code="database_unavailable",
                    retry_after=1,
                    outcome="error",
                )
            )
        except Exception:
            logger.exception("unexpected error in the proxy pipeline")
            self.fail(internal_error(self.request_id))
        finally:
            if watch_timer is not None:
                watch_timer.cancel()
                if self.watcher is not None:
                    self.watcher.cancel()
            if self.slot:
                _state["in_flight"] -= 1
        # Limits released and cost settled *before* the last bytes go out (written to Redis, which
        # runs them ahead of anything this process sends later): a client's next request finds its
        # slot free and its spend settled. Their replies are read while the answer travels.
        settling = await self.settle_start()
        try:
            await self.answer()
        finally:
            await self.settle_finish(settling)
            await self.log()

    async def answer(self) -> None:
        """The response's last part: the answer, the error, or the end of the stream."""
        if self.disconnected:
            return
        if self.error is not None:
            if not self.response_started:
                await self.send_error(self.error)
            elif not self.response_done:
                await self.send_stream_error(self.error)
        elif self.final is not None:
            await self.send_json(200, self.final[0], cache=self.final[1])
        elif self.stream and not self.response_done:
            await self.start_stream()
            self.response_done = True
            await self.send({"type": "http.response.body", "body": self.tail + DONE, "more_body": False})

    def fail(self, exc: ProxyError) -> None:
        self.error = exc
        self.status = exc.outcome
        self.http_status = exc.status

    def _watch_start(self) -> None:
        self.watcher = asyncio.ensure_future(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                if not self.response_done:
                    self.disconnected = True
                    if self.task is not None:
                        self.task.cancel()
                return

    def _lap(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] = round((now - since) * 1000, 3)
        return now

    # --- stage: authenticate --------------------------------------------------------------------

    async def authenticate(self) -> None:
        t = time.perf_counter()
        raw = None
        for name, value in self.scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    raw = token.strip().decode("latin-1")
            elif name == b"cache-control":
                self.no_cache = b"no-cache" in value or b"no-store" in value
        if raw is None:
            self._lap("authenticate", t)
            raise ProxyError(
                401,
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        principal = await aapi_key_authenticate(raw)
        self._lap("authenticate", t)
        if principal is None:
            raise ProxyError(401, "Incorrect, revoked or expired API key.", code="invalid_api_key")
        self.principal = principal

    async def read_body(self) -> None:
        limit = hot.STEWARD_PROXY_MAX_BODY_BYTES
        for name, value in self.scope["headers"]:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > limit:
                        raise ProxyError(413, f"Request body larger than {limit} bytes.", code="request_too_large")
        # Nearly every body arrives with its headers, and then `receive()` returns without
        # suspending. It is stepped by hand to find out: such a request is never counted as a body
        # reader and costs no timer. Only one whose `receive()` has to wait for the network (or
        # whose body comes in parts) takes the slow path, bounded and with a deadline.
        receiving = self.receive()
        try:
            waiting = receiving.send(None)
        except StopIteration as done:
            message, receiving, waiting = done.value, None, None
        else:
            message = None
        if message is not None and message["type"] == "http.request" and not message.get("more_body", False):
            self.raw_body = message.get("body", b"")
            if len(self.raw_body) > limit:
                raise ProxyError(413, f"Request body larger than {limit} bytes.", code="request_too_large")
        else:
            await self._read_body_slowly(limit, message, receiving, waiting)
        try:
            body = orjson.loads(self.raw_body)
        except orjson.JSONDecodeError:
            raise ProxyError(400, "The request body is not valid JSON.", code="invalid_json") from None
        body_validate(SCHEMAS[self.endpoint], body)
        fields = REQUEST_FIELDS[self.endpoint]
        if not fields.issuperset(body):  # a quarter of the cost of the difference, nearly always enough
            unknown = body.keys() - fields
            # Provider configuration is refused now; other fields once the route says whether it takes them.
            fields_check(unknown)
            self.unknown_fields = unknown
        self.client_body = body
        self.stream = bool(body.get("stream")) and self.endpoint != EMBEDDINGS
        if self.stream:
            options = body.get("stream_options") or {}
            self.client_usage = bool(options.get("include_usage"))

    async def _read_body_slowly(self, limit: int, first: dict | None, receiving, waiting) -> None:
        """The rest of a body that did not come with its headers, within
        STEWARD_PROXY_BODY_TIMEOUT_SECONDS of them. `first` is the first message when it came at
        once, else `receiving` is the `receive()` coroutine suspended on `waiting`.

        A body still incomplete after BODY_READER_GRACE_SECONDS counts among the process's and its
        key's body readers (both bounded) until it is complete. Not before: many clients write the
        headers and the body apart, and under a flood of slow senders such a request must not find
        the bound full."""
        principal = self.principal
        chunks: list[bytes] = []
        size = 0
        message = first
        counted = False
        deadline = self.t0 + hot.STEWARD_PROXY_BODY_TIMEOUT_SECONDS
        try:
            while True:
                now = time.perf_counter()
                until = deadline if counted else min(deadline, now + BODY_READER_GRACE_SECONDS)
                try:
                    async with asyncio.timeout(max(until - now, 0.0)):
                        while True:
                            if message is None:
                                if receiving is not None:
                                    resumed, receiving = _resumed(receiving, waiting), None
                                    message = await resumed
                                else:
                                    message = await self.receive()
                            if message["type"] == "http.disconnect":
                                raise ClientGone()
                            chunk = message.get("body", b"")
                            size += len(chunk)
                            if size > limit:
                                raise ProxyError(
                                    413, f"Request body larger than {limit} bytes.", code="request_too_large"
                                )
                            chunks.append(chunk)
                            if not message.get("more_body", False):
                                break
                            message = None
                    break
                except TimeoutError:
                    if counted or time.perf_counter() >= deadline:
                        raise ProxyError(
                            408,
                            f"The request body did not arrive within {hot.STEWARD_PROXY_BODY_TIMEOUT_SECONDS:g} s.",
                            code="request_timeout",
                            type="invalid_request_error",
                        ) from None
                    body_readers.enter(principal)
                    counted = True
        finally:
            if counted:
                body_readers.leave(principal)
            if receiving is not None:
                receiving.close()
        self.raw_body = b"".join(chunks)

    # --- stage: resolve prompt ------------------------------------------------------------------

    async def resolve_prompt(self) -> None:
        t = time.perf_counter()
        body = dict(self.client_body)
        reference = body.pop("prompt", None) if self.endpoint == CHAT else None
        if reference is not None:
            from registry.selectors import aprompt_resolve  # the registry may load later than the proxy

            principal = self.principal
            if not principal.prompt_allowed(reference["name"]):
                raise ProxyError(
                    403,
                    f"This API key may not use prompt {reference['name']!r}.",
                    code="prompt_not_allowed",
                    param="prompt.name",
                )
            rendered = await aprompt_resolve(
                organisation_id=principal.organisation_id,
                name=reference["name"],
                label=reference.get("label"),
                version=reference.get("version"),
                variables=reference.get("variables"),
            )
            fixed = dict(rendered.params)
            if rendered.model:
                fixed["model"] = rendered.model
            for param, value in fixed.items():
                if param in body and body[param] != value and param not in principal.overridable_params:
                    raise ProxyError(
                        403,
                        f"Prompt {rendered.prompt_name!r} fixes {param!r}; this API key may not override it.",
                        code="param_not_overridable",
                        param=param,
                    )
            merged = {**fixed, **body}
            merged["messages"] = list(rendered.messages) + list(body.get("messages") or [])
            body = merged
            self.prompt = rendered
        if self.endpoint == CHAT:
            if not body.get("model"):
                raise ProxyError(
                    400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
                )
            if not body.get("messages"):
                raise ProxyError(
                    400, "Missing required parameter: 'messages'.", code="missing_required_parameter", param="messages"
                )
        self.body = body
        self.model = body["model"]
        self.table = await arouting_table(organisation_id=self.principal.organisation_id)
        route = self.table.routes.get(self.model)
        self._lap("resolve_prompt", t)
        if route is None:
            raise ProxyError(404, f"The model {self.model!r} does not exist.", code="model_not_found", param="model")
        if not self.principal.model_allowed(self.model):
            raise ProxyError(
                403, f"This API key may not use model {self.model!r}.", code="model_not_allowed", param="model"
            )
        unknown = self.unknown_fields
        if unknown is not None and not unknown <= route.passthrough_params:
            name = min(unknown - route.passthrough_params)
            raise unsupported_parameter(
                name, f"is not a parameter of this endpoint, and model {self.model!r} does not pass it through."
            )
        if route.litellm_reachable and "metadata" in body:
            # OpenAI's field, but litellm's configuration (callbacks, logging) on the way to its deployments.
            raise unsupported_parameter(
                "metadata", f"is not supported by model {self.model!r} (some of its deployments go through litellm)."
            )
        self.route = route

    # --- stage: pre-filters ---------------------------------------------------------------------

    async def pre_filters(self) -> None:
        t = time.perf_counter()
        principal = self.principal
        self.filter_context = FilterContext(
            request_id=self.request_id,
            organisation_id=principal.organisation_id,
            api_key_id=principal.id,
            team_id=principal.team_id,
            endpoint=self.endpoint,
            model=self.model,
            prompt_version_id=self.prompt.version_id if self.prompt else None,
        )
        decision = await safety.apre_filter(context=self.filter_context, body=self.body)
        if decision.action == FilterAction.HOLD:
            decision = await safety.ahold_wait(decision=decision, timeout=hot.STEWARD_PROXY_HOLD_TIMEOUT_SECONDS)
        self._lap("pre_filters", t)
        if decision.action == FilterAction.BLOCK:
            raise ProxyError(
                400,
                f"The request was blocked by policy {decision.policy}: {decision.reason or 'no reason given'}.",
                code="content_policy_violation",
            )
        if decision.body is not None:
            self.body = decision.body

    # --- stages: admit, reserve budget, call upstream (with retries and fallbacks) ---------------

    def _cache_key(self) -> str:
        route = self.route
        if self.no_cache or not (route.cache_enabled or self.principal.cache_enabled):
            return ""
        canonical = orjson.dumps([self.endpoint, route.name, self.body], option=orjson.OPT_SORT_KEYS)
        # Streams have keys of their own, named after their format: a value is never read in another form.
        kind = "sse1:" if self.stream else ""
        return f"stw:cache:{self.principal.organisation_id}:{kind}{hashlib.sha256(canonical).hexdigest()}"

    async def _attempt_loop(self, run_one):
        """Try deployments until one answers: other deployments of the route, then its fallbacks.

        `run_one(deployment, timeout)` performs one attempt and returns its result; transient errors
        move on (with a short backoff), permanent ones end the request. Returns run_one's result, or
        ("cached", bytes) for a cache hit.
        """
        principal = self.principal
        table = self.table
        deadline = self.t0 + self.route.deadline_seconds
        # Fallbacks the key may not use are never tried: the key's model scope covers every attempt.
        chain = [self.route] + [
            table.routes[name]
            for name in self.route.fallbacks
            if name in table.routes and principal.model_allowed(name)
        ]
        max_attempts = hot.STEWARD_PROXY_MAX_ATTEMPTS
        expire_ms = int(self.route.deadline_seconds * 1000) + 5_000
        last_error: ApplicationError | None = None
        unavailable: admission.Admission | None = None
        first = True
        self.cache_key = self._cache_key()
        for route in chain:
            tried: set[int] = set()
            while len(self.attempts) < max_attempts:
                candidates = [d for d in route.deployments if d.id not in tried]
                if not candidates:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise ProxyError(
                        504,
                        f"No answer within the model's deadline of {self.route.deadline_seconds:g} s.",
                        code="deadline_exceeded",
                        outcome="error",
                    )
                if route.strategy != "least_in_flight":
                    candidates = weighted_order(candidates)
                plan = None
                if first and self.reservation is None and not self.cache_key:
                    # The budget reservation travels with the admission check: one Redis round trip for
                    # both. (With the cache on, a hit must not reserve: those requests reserve after it.)
                    plan = await self._reserve_plan(chain)
                t = time.perf_counter()
                call = admission.admit_call(
                    now_ms=_now_ms(),
                    request_id=self.request_id,
                    expire_ms=expire_ms,
                    key_id=principal.id if first else None,
                    key_rpm=principal.rpm_limit,
                    key_tpm=principal.tpm_limit,
                    key_max_in_flight=principal.max_in_flight,
                    cache_key=self.cache_key if first else "",
                    strategy=route.strategy,
                    probe_ms=CIRCUIT_PROBE_MS,
                    candidates=candidates,
                )
                try:
                    # In the write that ends this loop turn, with other requests' commands: one system
                    # call for several requests under load, each costing more CPU than most stages.
                    if plan is not None and plan.call is not None:
                        results = await abatch([call, plan.call])
                    else:
                        results = await abatch([call])
                    decision = admission.admission_from(results[0])
                except redis.exceptions.RedisError as exc:
                    # Limits cannot be enforced without Redis: refuse rather than let traffic through unchecked.
                    logger.error("admission failed: Redis unreachable (%s)", type(exc).__name__)
                    raise ProxyError(
                        503,
                        "Steward cannot check rate limits right now; retry shortly.",
                        code="limits_unavailable",
                        retry_after=1,
                        outcome="error",
                    ) from exc
                if first:
                    self._lap("admit", t)
                outcome = decision.outcome
                budget_error = None
                if plan is not None:
                    # Read the reservation before anything can end the request, so that one that was
                    # made is given back by the settle stage whatever happens next.
                    t = time.perf_counter()
                    try:
                        self.reservation = await billing.abudget_reserve_complete(
                            plan, results[1] if plan.call is not None else None
                        )
                    except ApplicationError as exc:
                        budget_error = exc
                    self.timings["reserve_budget"] += round((time.perf_counter() - t) * 1000, 3)
                if outcome.startswith("key_"):
                    self._reject_key(decision)
                if budget_error is not None:
                    if outcome == "ok":
                        self.key_admitted = principal.max_in_flight is not None or principal.tpm_limit is not None
                        self.pending_finish = (candidates[decision.index], "neutral", 0)
                    raise budget_error
                if outcome == "cached":
                    return ("cached", decision.cached)
                if outcome != "ok":
                    if unavailable is None or outcome == "deployment_limited":
                        unavailable = decision
                    break
                if first:
                    first = False
                    self.key_admitted = principal.max_in_flight is not None or principal.tpm_limit is not None
                deployment = candidates[decision.index]
                self.dep_clean = decision.clean
                self.dep_tracked = route.strategy == "least_in_flight"
                if self.reservation is None:
                    await self._reserve(chain, deployment)
                elif self.attempts and self.attempts[-1].get("may_bill"):
                    await self._reserve_retry(deployment)
                tried.add(deployment.id)
                result = await self._attempt(run_one, deployment, min(deployment.timeout_seconds, remaining))
                if isinstance(result, ApplicationError):
                    last_error = result
                    if isinstance(result, PermanentUpstreamError):
                        error = proxy_error_from(result)
                        error.outcome = "error"
                        raise error
                    backoff = min(0.05 * 2 ** (len(self.attempts) - 1), 1.0, max(0.0, deadline - time.perf_counter()))
                    await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                    continue
                return result
        if last_error is not None:
            error = proxy_error_from(last_error)
            error.outcome = "error"
            raise error
        if unavailable is not None and unavailable.outcome == "deployment_limited":
            raise ProxyError(
                429,
                f"Every deployment of {self.model!r} is at its rate limit.",
                code="deployment_rate_limited",
                retry_after=unavailable.retry_after_ms / 1000,
            )
        if unavailable is not None and unavailable.outcome == "unhealthy":
            raise ProxyError(
                503,
                f"Every deployment of {self.model!r} is failing; retry later.",
                code="model_unavailable",
                retry_after=max(1.0, unavailable.retry_after_ms / 1000),
                outcome="error",
            )
        raise ProxyError(
            503,
            f"The model {self.model!r} has no deployment to serve it.",
            code="no_deployment",
            outcome="error",
            retry_after=5,
        )

    def _reject_key(self, decision: admission.Admission) -> None:
        limit = {
            "key_rpm": "requests per minute",
            "key_tpm": "tokens per minute",
            "key_in_flight": "requests in flight",
        }
        raise ProxyError(
            429,
            f"Rate limit reached for this API key ({limit[decision.outcome]}).",
            code="rate_limit_exceeded",
            retry_after=max(1.0, decision.retry_after_ms / 1000),
            extra={"limit": decision.outcome.removeprefix("key_")},
        )

    async def _reserve_plan(self, chain: list[RouteTarget]) -> billing.ReservePlan:
        """Work out the reservation: the worst case over every deployment the request may land on
        (retries and fallbacks may reach a dearer model)."""
        t = time.perf_counter()
        principal = self.principal
        body = self.body
        targets = [(d.model, d.id) for r in chain for d in r.deployments]
        # Sized by what goes upstream: a rendered prompt or a filter can make it far larger than the
        # client's body. While it is still the client's (a shallow copy compares in O(keys), values
        # by identity) the raw body's length is that size already; otherwise serialising it once
        # costs about 1 us per KB, and only such requests pay it.
        sent_bytes = len(self.raw_body) if body == self.client_body else len(orjson.dumps(body))
        if self.endpoint == EMBEDDINGS:
            choices, max_output = 1, 0
        else:
            # Every choice is generated and billed: chat's `n`, a completion's `best_of` candidates.
            n = body.get("n")
            choices = n if type(n) is int and n > 1 else 1
            best_of = body.get("best_of") if self.endpoint == COMPLETIONS else None
            if type(best_of) is int and best_of > choices:
                choices = best_of
            max_output = body.get("max_completion_tokens") or body.get("max_tokens")
        try:
            return await billing.abudget_reserve_plan(
                request_id=self.request_id,
                scope=billing.BudgetScope(
                    organisation_id=principal.organisation_id,
                    api_key_id=principal.id,
                    team_id=principal.team_id,
                    prompt_id=self.prompt.prompt_id if self.prompt else None,
                ),
                model=targets[0][0],
                deployment_id=targets[0][1],
                input_text_bytes=sent_bytes,
                max_output_tokens=max_output,
                alternatives=tuple(targets[1:]),
                choices=choices,
            )
        finally:
            self.timings["reserve_budget"] = round((time.perf_counter() - t) * 1000, 3)

    async def _reserve(self, chain: list[RouteTarget], deployment: DeploymentTarget) -> None:
        """Reserve on its own round trip, after an admission that could have been a cache hit."""
        t = time.perf_counter()
        try:
            # Planning may refuse too (cost ceiling, unknown price), after admission took a slot.
            plan = await self._reserve_plan(chain)
            self.reservation = await billing.abudget_reserve_send(plan)
        except BaseException:
            # The deployment slot taken by admission is given back; the key's is released at the end.
            self.pending_finish = (deployment, "neutral", 0)
            raise
        finally:
            self.timings["reserve_budget"] += round((time.perf_counter() - t) * 1000, 3)

    async def _reserve_retry(self, deployment: DeploymentTarget) -> None:
        """A retry after an attempt the provider may bill (it timed out once the request was sent;
        the provider can go on generating and charge for it) holds a worst case of its own, so what
        all attempts cost stays within what was reserved; a budget that cannot hold it refuses the
        retry (429 budget_exceeded) rather than let the request cost up to twice its worst case."""
        t = time.perf_counter()
        try:
            await billing.abudget_extend(reservation=self.reservation)
        except BaseException:
            self.pending_finish = (deployment, "neutral", 0)
            raise
        finally:
            self.timings["reserve_budget"] = self.timings.get("reserve_budget", 0.0) + round(
                (time.perf_counter() - t) * 1000, 3
            )

    async def _attempt(self, run_one, deployment: DeploymentTarget, timeout: float):
        n = len(self.attempts) + 1
        attempt = {
            "n": n,
            "deployment_id": deployment.id,
            "deployment": deployment.name,
            "model": deployment.model,
            "status": "ok",
            "http_status": 200,
            "error_type": "",
            "latency_ms": 0.0,
            "usage": None,
            "circuit": "",
        }
        self.attempts.append(attempt)
        self.deployment = deployment
        t = time.perf_counter()
        try:
            result = await run_one(deployment, timeout)
        except (TransientUpstreamError, PermanentUpstreamError) as exc:
            elapsed = time.perf_counter() - t
            self.upstream_s += elapsed
            attempt.update(
                status="error",
                http_status=getattr(exc, "upstream_status", None) or exc.status,
                error_type=exc.code,
                latency_ms=round(elapsed * 1000, 3),
            )
            if detail := getattr(exc, "detail", None):
                attempt["error_detail"] = detail  # for admins (the client got a generic message)
            if exc.code == "upstream_timeout":
                # The provider read the request and may bill it (see `_reserve_retry`, `_settle_call`).
                attempt["may_bill"] = True
            transient = isinstance(exc, TransientUpstreamError)
            attempt["circuit"] = await self._finish_deployment(deployment, "fail" if transient else "neutral", 0)
            return exc
        except BaseException:
            elapsed = time.perf_counter() - t
            self.upstream_s += elapsed
            attempt.update(status="cancelled", http_status=499, latency_ms=round(elapsed * 1000, 3))
            self.pending_finish = (deployment, "neutral", 0)
            raise
        elapsed = time.perf_counter() - t
        self.upstream_s += elapsed
        attempt["latency_ms"] = round(elapsed * 1000, 3)
        return result

    async def _finish_deployment(self, deployment: DeploymentTarget, outcome: str, tokens: int) -> str:
        try:
            return await admission.finish(
                now_ms=_now_ms(),
                request_id=self.request_id,
                key_id=None,
                key_tokens=0,
                deployment_id=deployment.id,
                outcome=outcome,
                deployment_tokens=tokens,
                threshold=hot.STEWARD_PROXY_CIRCUIT_FAILURES,
                cooldown_ms=int(hot.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS * 1000),
                release_key=False,
                tracked=self.dep_tracked,
            )
        except redis.exceptions.RedisError:
            logger.warning("could not record the outcome of deployment %s", deployment.id)
            return ""

    # --- non-streaming ----------------------------------------------------------------------------

    def _upstream_body(self, deployment: DeploymentTarget) -> dict:
        """The upstream request, built from the fields the endpoint (and the route) allow: whatever
        else the body came to hold (a prompt's parameters, a filter's rewrite) stays here."""
        fields = self.route.upstream_fields[self.endpoint]
        body = self.body
        body = dict(body) if fields.issuperset(body) else {k: v for k, v in body.items() if k in fields}
        body["model"] = deployment.model
        return body

    async def _one_json(self, deployment: DeploymentTarget, timeout: float):
        body = self._upstream_body(deployment)
        if deployment.direct:
            return await upstream.call_json(
                url=deployment.api_base + UPSTREAM_PATHS[self.endpoint],
                payload=orjson.dumps(body),
                api_key=deployment.api_key,
                timeout=timeout,
                request_id=self.request_id,
                name=deployment.name,
            )
        data = await llm.acall(
            endpoint=self.endpoint,
            body=body,
            model=deployment.model,
            api_base=deployment.api_base or None,
            api_key=deployment.api_key,
            timeout=timeout,
            name=deployment.name,
        )
        return upstream.UpstreamResponse(status=200, body=orjson.dumps(data), data=data)

    async def call(self) -> None:
        t = time.perf_counter()
        result = await self._attempt_loop(self._one_json)
        self.timings["call_upstream"] = round((time.perf_counter() - t) * 1000, 3)
        if isinstance(result, tuple):
            payload = result[1]
            self.cache_hit = True
            self.status = "cached"
            with contextlib.suppress(orjson.JSONDecodeError):
                self.usage = _usage_from(orjson.loads(payload))
            self.final = (payload, "hit")
            return
        data = result.data
        usage = _usage_from(data)
        self.attempts[-1]["usage"] = usage
        self.usage = usage
        self.response_data = data
        payload = result.body

        t = time.perf_counter()
        decision = await safety.apost_filter(context=self.filter_context, response=data, streamed=False)
        if decision.action == FilterAction.HOLD:
            decision = await safety.ahold_wait(decision=decision, timeout=hot.STEWARD_PROXY_HOLD_TIMEOUT_SECONDS)
        self._lap("post_filters", t)
        self.pending_finish = (
            self.deployment,
            "ok",
            usage["prompt_tokens"] + usage["completion_tokens"] if usage else 0,
        )
        if decision.action == FilterAction.BLOCK:
            self.cache_key = ""
            raise ProxyError(
                400,
                f"The response was withheld by policy {decision.policy}: {decision.reason or 'no reason given'}.",
                code="content_policy_violation",
            )
        if decision.body is not None:
            self.response_data = decision.body
            payload = orjson.dumps(decision.body)
        self.cache_value = payload if self.cache_key else None
        self.final = (payload, "miss" if self.cache_key else None)

    # --- streaming --------------------------------------------------------------------------------

    async def _one_stream(self, deployment: DeploymentTarget, timeout: float):
        """Open the stream and wait for its first event, so a failure before any content is retried."""
        body = self._upstream_body(deployment)
        if deployment.direct:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
            stream = await upstream.open_stream(
                url=deployment.api_base + UPSTREAM_PATHS[self.endpoint],
                payload=orjson.dumps(body),
                api_key=deployment.api_key,
                timeout=timeout,
                request_id=self.request_id,
                name=deployment.name,
            )
            batches = stream.batches()
            closer = stream.close

            def finished() -> bool:
                return stream.finished

        else:
            chunks = await llm.astream(
                endpoint=self.endpoint,
                body=body,
                model=deployment.model,
                api_base=deployment.api_base or None,
                api_key=deployment.api_key,
                timeout=timeout,
                name=deployment.name,
            )

            async def _batches():
                async for chunk in chunks:
                    yield [b"data: " + orjson.dumps(chunk)]

            batches = _batches()

            def finished() -> bool:
                return False  # litellm's iterator cannot tell

            async def closer():
                with contextlib.suppress(Exception):
                    await chunks.aclose()

        try:
            if deployment.direct:
                first = await anext(batches)  # each of its waits has its own deadline (upstream.SSEStream)
            else:
                # asyncio.timeout rather than wait_for: no extra task, one loop turn less before the first byte.
                async with asyncio.timeout(timeout):
                    first = await anext(batches)
        except StopAsyncIteration:
            await closer()
            raise TransientUpstreamError(f"Upstream {deployment.name} closed the stream without data") from None
        except TimeoutError:
            await closer()
            raise upstream.UpstreamTimeout(f"Upstream {deployment.name} sent nothing within {timeout:g} s") from None
        except BaseException:
            await closer()
            raise
        return (first, batches, closer, finished)

    async def call_streaming(self) -> None:
        t = time.perf_counter()
        # The stream is opened in this task; keep-alives come from a helper task that only exists once
        # the first token is slow. No extra task or loop turn on the common, fast path.
        interval = hot.STEWARD_PROXY_KEEPALIVE_SECONDS
        keepalive: asyncio.Task | None = None

        def slow_first_token() -> None:
            nonlocal keepalive
            keepalive = asyncio.ensure_future(self._keepalive(interval))

        timer = asyncio.get_running_loop().call_later(interval, slow_first_token)
        try:
            result = await self._attempt_loop(self._one_stream)
        finally:
            timer.cancel()
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(BaseException):
                    await keepalive
        if len(result) == 2:  # ("cached", value)
            self._replay_cached_stream(result[1])
            self.timings["call_upstream"] = round((time.perf_counter() - t) * 1000, 3)
            return
        first, batches, closer, finished = result
        if self.cache_key:
            self.cache_parts = []
        # The response head goes out with the first events, in the same write (`_forward`).
        t_stream = time.perf_counter()
        self.timings["call_upstream"] = round((t_stream - t) * 1000, 3)
        deployment = self.deployment
        attempt = self.attempts[-1]
        try:
            # The first batch goes out at once, even when it is the whole stream: holding it for
            # [DONE] saved a write (about 4% of such a stream's CPU) but put the settlement and a
            # loop turn in front of the first token (0.3-0.4 ms at 16 streams). Only the last bytes
            # must wait for the settlement.
            await self._forward(first)
            # The first token is out: let streams still waiting for theirs (already woken, in the
            # loop's ready queue) go ahead of this one's remaining chunks, settlement and log.
            await asyncio.sleep(0)
            async for batch in batches:
                # A later batch known to be the stream's last waits for [DONE] and goes out with it,
                # one write instead of two.
                await self._forward(batch, hold=finished())
        except (TransientUpstreamError, PermanentUpstreamError) as exc:
            attempt.update(status="error", error_type=exc.code, http_status=exc.status)
            self.pending_finish = (deployment, "fail", self._stream_tokens())
            self.fail(proxy_error_from(exc))
            self.error.outcome = "error"
            await self.start_stream()  # the stream had begun: it ends with an error event, after what came
            return
        except BaseException:
            attempt.update(status="cancelled", http_status=499)
            self.pending_finish = (deployment, "neutral", self._stream_tokens())
            raise
        finally:
            await closer()
            elapsed = time.perf_counter() - t_stream
            self.upstream_s += elapsed
            attempt["latency_ms"] = round(attempt["latency_ms"] + elapsed * 1000, 3)
            attempt["usage"] = self.usage
        self.pending_finish = (deployment, "ok", self._stream_tokens())
        t = time.perf_counter()
        decision = await safety.apost_filter(context=self.filter_context, response=None, streamed=True)
        self._lap("post_filters", t)
        if decision.action == FilterAction.BLOCK:
            # The chunks already went out; the decision is recorded, and the stream ends with an error event.
            self.fail(ProxyError(400, "The response was flagged by policy.", code="content_policy_violation"))
            await self.start_stream()
            return
        if self.cache_parts is not None:
            # Only a stream that ran to its end is kept: the same events, usage included if the client
            # asked (the usage itself joins them once settlement has estimated any the upstream left out).
            self.cache_value = b"".join(self.cache_parts)

    def _replay_cached_stream(self, value: bytes) -> None:
        """A cache hit on a stream: its events go out in one write, with [DONE], at no upstream cost."""
        if not value.startswith(STREAM_CACHE_FORMAT):
            # Only this code writes under a stream key: anything else there was put by someone else.
            logger.error("the cache entry %s is not a cached stream", self.cache_key)
            raise ProxyError(500, "Steward's response cache holds a damaged entry.", code="cache_damaged")
        self.cache_hit = True
        self.status = "cached"
        usage_line, _, events = value[len(STREAM_CACHE_FORMAT) :].partition(b"\n")
        with contextlib.suppress(orjson.JSONDecodeError):
            usage = orjson.loads(usage_line)
            self.usage = usage if isinstance(usage, dict) else None
        self.tail = events

    async def _keepalive(self, interval: float) -> None:
        """A slow first token: keep the connection (and proxies on the way) from timing out."""
        while True:
            await self.start_stream()
            await self.send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
            await asyncio.sleep(interval)

    def _stream_tokens(self) -> int:
        if self.usage:
            return self.usage["prompt_tokens"] + self.usage["completion_tokens"]
        return len(self._stream_content())

    def _stream_content(self) -> list[str]:
        """The text pieces streamed so far, one per content chunk. Parsed here rather than as they
        pass: only a stream without usage (cancelled, or an upstream that reports none) or a stored
        body needs them, and parsing every chunk on the way costs the hot path."""
        data = self.stream_data
        if self.stream_parsed < len(data):
            pieces = self.stream_pieces
            chat = self.endpoint == CHAT
            for raw in data[self.stream_parsed :]:
                try:
                    chunk = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    if piece and isinstance(piece, str):
                        pieces.append(piece)
            self.stream_parsed = len(data)
        return self.stream_pieces

    async def _forward(self, batch: list[bytes], hold: bool = False) -> None:
        """Pass a batch of upstream events on in one write, reading usage on the way (`hold`: keep
        them for the write that ends the response)."""
        out = []
        data_seen = self.stream_data
        try:
            for event in batch:
                # A plain content chunk (nearly every event) is passed on untouched and read later if
                # at all; anything else (usage, errors, comments, [DONE]) goes through `_event_out`.
                if event[:7] == b"data: {":
                    data = event[6:]
                    if b'"usage"' not in data and b'"error"' not in data:
                        data_seen.append(data)
                        out.append(event)
                        out.append(b"\n\n")
                        continue
                event = self._event_out(event)
                if event is not None:
                    out.append(event)
                    out.append(b"\n\n")
        finally:
            # Events ahead of an upstream error event still reach the client, as they would one by one.
            if out and self.cache_parts is not None:
                self.cache_parts.extend(out)
            if out and (hold or self.tail):
                self.tail += b"".join(out)
            elif out:
                if not self.response_started:  # no coroutine per batch once the head is out
                    await self.start_stream()
                await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": True})

    def _event_out(self, event: bytes) -> bytes | None:
        """The event as the client gets it, or None when it is not for the client."""
        if event[:1] == b":":
            return None  # upstream comments (its own keep-alives) are not the client's business
        data = event[6:] if event.startswith(b"data: ") else event[5:] if event.startswith(b"data:") else None
        if data is None:
            return event
        if b'"usage"' not in data and b'"error"' not in data:
            # A plain content chunk (or [DONE]): passed on untouched, read later if at all.
            if data.strip() == b"[DONE]":
                return None
            self.stream_data.append(data)
            return event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if isinstance(chunk, dict):
            if chunk.get("error"):
                message = chunk["error"].get("message") if isinstance(chunk["error"], dict) else str(chunk["error"])
                raise TransientUpstreamError(f"Upstream error mid-stream: {message}")
            if chunk.get("choices"):
                self.stream_data.append(data)
            usage = chunk.get("usage")
            if usage:
                self.usage = _usage_from(chunk)
                if not self.client_usage:
                    if not chunk.get("choices"):
                        return None
                    del chunk["usage"]
                    event = b"data: " + orjson.dumps(chunk)
        return event

    async def start_stream(self) -> None:
        if self.response_started:
            return
        self.response_started = True
        headers = list(_SSE)
        headers.extend(self._common_headers("hit" if self.cache_hit else "miss" if self.cache_key else None))
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def send_stream_error(self, error: ProxyError) -> None:
        self.response_done = True
        with contextlib.suppress(Exception):
            event = self.tail + b"data: " + error.body() + b"\n\n"
            await self.send({"type": "http.response.body", "body": event, "more_body": True})
            await self.send({"type": "http.response.body", "body": DONE, "more_body": False})

    # --- responses ----------------------------------------------------------------------------

    def _common_headers(self, cache: str | None = None) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", self.request_id.encode())]
        if self.deployment is not None:
            headers.append((b"x-steward-model-deployment", self.deployment.name.encode()))
        if self.prompt is not None:
            headers.append(
                (b"x-steward-prompt-version", f"{self.prompt.prompt_name}:{self.prompt.version_number}".encode())
            )
        if cache is not None:
            headers.append((b"x-steward-cache", cache.encode()))
        overhead = (time.perf_counter() - self.t0 - self.upstream_s) * 1000
        self.overhead_header_ms = overhead
        headers.append((b"x-steward-overhead-ms", f"{overhead:.3f}".encode()))
        return headers

    async def send_json(self, status: int, payload: bytes, *, cache: str | None = None, extra=()) -> None:
        headers = [_JSON, (b"content-length", str(len(payload)).encode())]
        headers.extend(extra)
        headers.extend(self._common_headers(cache))
        self.response_started = True
        self.response_done = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": payload})

    async def send_error(self, error: ProxyError) -> None:
        with contextlib.suppress(Exception):
            await self.send_json(error.status, error.body(), extra=error.headers())

    async def list_models(self) -> None:
        principal = self.principal
        self.table = await arouting_table(organisation_id=principal.organisation_id)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "steward"}
            for name in sorted(self.table.routes)
            if principal.model_allowed(name)
        ]
        wanted = self.scope["path"].rstrip("/").removeprefix("/v1/models").lstrip("/")
        if not wanted:
            await self.send_json(200, orjson.dumps({"object": "list", "data": data}))
            return
        self.model = wanted
        found = next((m for m in data if m["id"] == wanted), None)
        if found is None:
            raise ProxyError(404, f"The model {wanted!r} does not exist.", code="model_not_found", param="model")
        await self.send_json(200, orjson.dumps(found))

    # --- stages: settle cost, log ------------------------------------------------------------------

    def _needs_estimate(self) -> bool:
        if self.deployment is None or not self.attempts or self.usage is not None or self.body is None:
            return False
        last = self.attempts[-1]["status"]
        return (
            (self.status == "ok" and not self.cache_hit)
            or (self.status == "cancelled" and last == "cancelled")
            or (self.status == "error" and bool(self.stream and self._stream_content()))
        )

    async def _estimate_usage(self) -> None:
        """No usage from the upstream (or a cancelled stream): count with the model's tokenizer, off the loop."""
        attempt = self.attempts[-1]
        if self.endpoint == CHAT:
            completion = (
                "".join(self._stream_content()) if self.stream else _response_text(CHAT, self.response_data or {})
            )
            messages = self.body.get("messages") or []
            prompt_args = {"messages": messages}
        elif self.endpoint == COMPLETIONS:
            completion = (
                "".join(self._stream_content())
                if self.stream
                else _response_text(COMPLETIONS, self.response_data or {})
            )
            prompt = self.body.get("prompt")
            prompt_args = {"text": prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()}
        else:
            value = self.body.get("input")
            prompt_args = {"text": value if isinstance(value, str) else orjson.dumps(value).decode()}
            completion = ""
        model = self.deployment.model

        def count() -> dict:
            prompt_tokens = llm.token_count(model=model, **prompt_args)
            completion_tokens = llm.token_count(model=model, text=completion) if completion else 0
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "estimated": True,
            }

        try:
            usage = await asyncio.to_thread(count)
        except Exception:
            logger.exception("token counting failed; usage estimated from chunks")
            usage = {
                "prompt_tokens": 0,
                "completion_tokens": len(self._stream_content()) if self.stream else 0,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "estimated": True,
            }
        attempt["usage"] = usage
        self.usage = usage

    async def _estimate_unanswered(self, attempt: dict) -> None:
        """An attempt that timed out reached the provider, which bills the prompt it read: count it
        (off the loop), so the ledger and the budgets carry it, marked estimated. What the provider
        generated for an answer nobody waited for is unknown to Steward; `_reserve_retry` held a
        worst case for it while the request ran."""
        body = self.body
        if self.endpoint == CHAT:
            args = {"messages": body.get("messages") or []}
        else:
            value = body.get("prompt" if self.endpoint == COMPLETIONS else "input")
            args = {"text": value if isinstance(value, str) else orjson.dumps(value).decode()}
        try:
            tokens = await asyncio.to_thread(llm.token_count, model=attempt["model"], **args)
        except Exception:
            logger.exception("token counting failed; the prompt of a timed-out attempt is sized by its bytes")
            tokens = len(orjson.dumps(args))
        attempt["usage"] = {
            "prompt_tokens": tokens,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "estimated": True,
        }

    async def _settle_call(self):
        """Estimate usage the upstream did not report, price every attempt, and return the script
        call that settles the reservation at that cost (or releases it when nothing was produced)."""
        if self._needs_estimate():
            await self._estimate_usage()
        for attempt in self.attempts:
            if attempt.get("may_bill") and attempt.get("usage") is None:
                await self._estimate_unanswered(attempt)
        if self.reservation is None or self.settled:
            return None
        total = Decimal("0")
        at = datetime.fromtimestamp(self.started_at, UTC)
        for attempt in self.attempts:
            usage = attempt.get("usage")
            if not usage:
                continue
            cost = await billing.acost_compute(
                organisation_id=self.principal.organisation_id,
                model=attempt["model"],
                deployment_id=attempt["deployment_id"],
                usage=billing.Usage(
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    cached_tokens=usage["cached_tokens"],
                    reasoning_tokens=usage["reasoning_tokens"],
                    estimated=usage["estimated"],
                ),
                at=at,
            )
            total += cost.total
        produced = total > 0 or any(a.get("usage") for a in self.attempts)
        return billing.budget_finish_call(reservation=self.reservation, actual_cost=total if produced else None)

    def record(self) -> dict:
        principal = self.principal
        deployment = self.deployment
        prompt = self.prompt
        total_ms = (time.perf_counter() - self.t0) * 1000
        upstream_ms = self.upstream_s * 1000
        error = self.error
        record = {
            "request_id": self.request_id,
            "organisation_id": principal.organisation_id,
            "api_key_id": principal.id,
            "team_id": principal.team_id,
            "endpoint": self.endpoint,
            "model": self.model,
            "stream": self.stream,
            "deployment_id": deployment.id if deployment else None,
            "deployment_name": deployment.name if deployment else "",
            "prompt_id": prompt.prompt_id if prompt else None,
            "prompt_version_id": prompt.version_id if prompt else None,
            "prompt_name": prompt.prompt_name if prompt else "",
            "prompt_version_number": prompt.version_number if prompt else None,
            "status": self.status,
            "http_status": self.http_status,
            "error_type": error.code if error else "",
            "error_message": error.message[:500] if error else "",
            "cache_hit": self.cache_hit,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "latency_ms": round(total_ms, 3),
            "overhead_ms": round(total_ms - upstream_ms, 3),
            "upstream_ms": round(upstream_ms, 3),
            "timings": self.timings,
            "usage": self.usage
            or {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
                "estimated": False,
            },
            "attempts": self.attempts,
        }
        if self.table is not None and self.table.store_bodies and self.client_body is not None:
            response = (
                {"stream": True, "content": "".join(self._stream_content())} if self.stream else self.response_data
            )
            record["bodies"] = {"request": self.client_body, "response": response}
        return record

    def _finish_args(self) -> list | None:
        """FINISH arguments when something in Redis must be given back or updated, else None.

        Nothing is needed for the common case: a key without in-flight or TPM limits, on a weighted
        route, whose deployment answered with its circuit closed and no TPM limit of its own.
        """
        deployment, outcome, tokens = self.pending_finish or (None, "neutral", 0)
        need_deployment = deployment is not None and (
            self.dep_tracked
            or outcome == "fail"
            or (outcome == "ok" and not self.dep_clean)
            or (tokens > 0 and deployment.tpm_limit is not None)
        )
        if not need_deployment and not self.key_admitted:
            return None
        return admission.finish_args(
            now_ms=_now_ms(),
            request_id=self.request_id,
            key_id=self.principal.id if self.key_admitted else None,
            key_tokens=tokens,
            deployment_id=deployment.id if need_deployment else None,
            # A success on a circuit that was clean at admission moves nothing (as when FINISH is
            # skipped altogether); here it only counts tokens.
            outcome="neutral" if outcome == "ok" and self.dep_clean else outcome,
            deployment_tokens=tokens,
            threshold=hot.STEWARD_PROXY_CIRCUIT_FAILURES,
            cooldown_ms=int(hot.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS * 1000),
            release_key=self.key_admitted and self.principal.max_in_flight is not None,
            tracked=self.dep_tracked,
        )

    def _release_calls(self) -> list:
        """Give back in-flight slots, count tokens, move the circuit and fill the cache."""
        if self.released or self.principal is None:
            return []
        self.released = True
        calls = []
        finish = self._finish_args()
        if finish is not None:
            calls.append(admission.FINISH.call(args=finish))
        if self.cache_key and self.cache_value is not None:
            value = self.cache_value
            if self.stream:
                value = b"".join([STREAM_CACHE_FORMAT, orjson.dumps(self.usage), b"\n", value])
            calls.append(Command("SET", self.cache_key, value, "EX", self.route.cache_ttl_seconds))
        return calls

    async def settle_start(self):
        """The settle stage with the release of limits: one batch, written to Redis before this
        returns (in the write it shares with the loop turn's other commands). Its replies are read by
        `settle_finish` once the answer is on its way: whatever this process sends to Redis
        afterwards, a client's next request included, Redis runs after it, and so does a request
        the client sends to another process after reading the answer."""
        self.settle_t0 = time.perf_counter()
        settle = None
        try:
            settle = await self._settle_call()
        except Exception:
            logger.exception("pricing the request failed; its budget reservation will expire")
        calls = self._release_calls()  # after pricing: a cached stream keeps the usage it estimated
        if settle is not None:
            calls.append(settle)
        if not calls:
            return None
        pending = abatch_queue(calls)
        try:
            await aflushed()
        except BaseException:
            pending.close()  # the commands are on their way; nobody is left to read the replies
            raise
        return pending, settle is not None

    async def settle_finish(self, started) -> None:
        if started is not None:
            pending, settling = started
            try:
                results = await pending
            except redis.exceptions.RedisError as exc:
                results = [exc, exc] if settling else [exc]
            if settling:
                try:
                    billing.budget_finish_complete(reservation=self.reservation, result=results.pop())
                    self.settled = True
                except Exception:
                    logger.exception("settling the budget reservation failed; it will expire")
            if any(isinstance(r, Exception) for r in results):
                # In-flight entries expire by themselves; the circuit and token counts miss one update.
                logger.error("request %s could not release its limits: %s", self.request_id, results)
        self._lap("settle_cost", self.settle_t0)

    async def log(self) -> None:
        t = time.perf_counter()
        if self.principal is None:
            # No organisation to file it under (missing or bad key): metrics only.
            metrics.count(self.endpoint, self.status)
            return
        record = self.record()
        self.timings["log"] = round((time.perf_counter() - t) * 1000, 3)  # the record shares this dict
        log_buffer().add(orjson.dumps(record))
        metrics.observe(self.timings, record["overhead_ms"], self.endpoint, self.status)

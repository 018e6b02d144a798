"""One proxied request, in explicit stages.

    authenticate -> read body -> resolve prompt -> pre-filters -> admit (limits, cache, deployment)
    -> reserve budget -> call upstream (retries, fallbacks) -> post-filters -> settle cost -> log

`ProxyRequest.run` shows the sequence; the request holds the state, and the larger parts are
modules of their own: `proxy.dispatch` (admit, reserve and call upstream, attempt after attempt),
`proxy.sse` (the stream relay, on bytes) and `proxy.settlement` (usage, its estimation, pricing).

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
import time
import types

import orjson
import redis.exceptions
from django.db import InterfaceError, OperationalError

from billing import services as billing
from core.conf import hot
from core.errors import ApplicationError, PermanentUpstreamError, TransientUpstreamError
from core.logging import request_id_var
from core.redis import Command, abatch_queue, aflushed
from proxy import admission, dispatch, metrics, sse
from proxy.errors import ProxyError, internal_error, proxy_error_from
from proxy.keyauth import aprincipal_for, bearer_token
from proxy.requestlog import log_buffer
from proxy.safetystage import RequestSafety
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
from proxy.settlement import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    MODELS,
    Usage,
    attempts_price,
    request_record,
    response_text,
    unanswered_estimate,
    usage_estimate,
)
from safety.resolution import apolicy_for

logger = logging.getLogger("steward.proxy")

SCHEMAS = {CHAT: ChatCompletionRequest, COMPLETIONS: CompletionRequest, EMBEDDINGS: EmbeddingRequest}
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
WATCH_AFTER_SECONDS = 0.1  # streams start watching for a hang-up this long after they begin
# A body not complete this long after the first wait for it counts as a slow one (`BodyReaders`).
BODY_READER_GRACE_SECONDS = 0.25

# Requests of this process holding an in-flight slot (STEWARD_PROXY_MAX_IN_FLIGHT bounds them).
_in_flight = 0

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


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
    return _in_flight


class ProxyRequest:
    """One request to /v1/, from its headers to its request-log record; `run` shows the stages."""

    __slots__ = (
        "attempts",
        "body",
        "cache_hit",
        "cache_key",
        "cache_value",
        "circuit_clean",
        "client_body",
        "client_usage",
        "deployment",
        "deployment_outcome",
        "deployment_tracked",
        "disconnected",
        "endpoint",
        "error",
        "holds_slot",
        "http_status",
        "json_answer",
        "key_admitted",
        "model",
        "no_cache",
        "overhead_header_ms",
        "principal",
        "prompt",
        "raw_body",
        "receive",
        "relay",
        "released",
        "request_id",
        "reservation",
        "response_data",
        "response_done",
        "response_started",
        "route",
        "safety",
        "scope",
        "send",
        "settle_started",
        "settled",
        "started_at",
        "status",
        "stream",
        "t0",
        "table",
        "task",
        "timings",
        "unknown_fields",
        "upstream_s",
        "usage",
        "user_header",
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
        self.usage: Usage | None = None
        self.upstream_s = 0.0
        self.status = "ok"
        self.http_status = 200
        self.error: ProxyError | None = None
        self.deployment: DeploymentTarget | None = None
        self.cache_key = ""
        self.cache_hit = False
        self.reservation = None
        self.settled = False
        self.settle_started = 0.0
        self.key_admitted = False
        # (deployment, outcome, tokens) for FINISH to report once the request ends: set once an
        # admitted deployment's attempt is over (or given back unused)
        self.deployment_outcome: tuple[DeploymentTarget, str, int] | None = None
        self.circuit_clean = False  # the deployment's circuit had no failures at admission
        self.deployment_tracked = False  # its in-flight count is kept (least_in_flight routes)
        self.response_started = False
        self.response_done = False
        self.response_data: dict | None = None
        self.relay: sse.StreamRelay | None = None
        self.disconnected = False
        self.task = None
        self.watcher: asyncio.Task | None = None
        self.holds_slot = False
        self.no_cache = False
        self.user_header: str | None = None
        self.overhead_header_ms = 0.0
        self.safety: RequestSafety | None = None  # set when a safety policy applies
        self.cache_value: bytes | None = None
        self.released = False
        # (payload, x-steward-cache) of a non-streaming success, sent once the request is settled and logged
        self.json_answer: tuple[bytes, str | None] | None = None

    async def run(self) -> None:
        global _in_flight
        request_id_var.set(self.request_id)
        watch_timer = None
        try:
            await self.authenticate()
            if self.endpoint != MODELS:
                # The body first: a slot is held only by requests that have sent theirs (slow senders
                # are bounded by `body_readers` and the body deadline instead).
                await self.read_body()
            if _in_flight >= hot.STEWARD_PROXY_MAX_IN_FLIGHT:
                raise ProxyError(
                    503, "Steward is at capacity; retry shortly.", code="overloaded", retry_after=1, outcome="rejected"
                )
            _in_flight += 1
            self.holds_slot = True
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
            # admit, reserve budget, call upstream (`dispatch`), post-filters; a stream is relayed
            # as it comes (`sse`), the JSON answer waits in `json_answer` for the settlement
            if self.safety is not None and self.safety.answered:
                pass  # a held request, answered without the upstream
            elif self.stream:
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
            if self.holds_slot:
                _in_flight -= 1
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
        elif self.json_answer is not None:
            await self.send_json(200, self.json_answer[0], cache=self.json_answer[1])
        elif self.stream and not self.response_done:
            await self.start_stream()
            self.response_done = True
            held = self.relay.held if self.relay is not None else b""
            await self.send({"type": "http.response.body", "body": held + sse.DONE, "more_body": False})

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

    def lap(self, stage: str, since: float) -> float:
        """Time `stage` from `since` to now (returned)."""
        now = time.perf_counter()
        self.timings[stage] = round((now - since) * 1000, 3)
        return now

    # --- stage: authenticate --------------------------------------------------------------------

    async def authenticate(self) -> None:
        t = time.perf_counter()
        raw = None
        # One pass over the headers for everything the later stages read from them.
        for name, value in self.scope["headers"]:
            if name == b"authorization":
                raw = bearer_token(value)
            elif name == b"cache-control":
                self.no_cache = b"no-cache" in value or b"no-store" in value
            elif name == b"x-steward-user":
                self.user_header = value.decode("latin-1")
        try:
            self.principal = await aprincipal_for(raw)
        finally:
            self.lap("authenticate", t)

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
            user = body.get("user")
            rendered = await aprompt_resolve(
                organisation_id=principal.organisation_id,
                name=reference["name"],
                label=reference.get("label"),
                version=reference.get("version"),
                variables=reference.get("variables"),
                # the end user's sticky key, should the label be under an experiment (registry.experiments)
                user=user if isinstance(user, str) else None,
                user_header=self.user_header,
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
        self.lap("resolve_prompt", t)
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
        """Resolve the request's safety policy (a dict read when warm) and check the request with it."""
        t = time.perf_counter()
        principal = self.principal
        policy = await apolicy_for(
            organisation_id=principal.organisation_id,
            api_key_id=principal.id,
            prompt_id=self.prompt.prompt_id if self.prompt is not None else None,
            route_id=self.route.id,
        )
        if policy is not None:
            self.safety = RequestSafety(policy, self)
            try:
                await self.safety.pre(self)
            finally:
                self.lap("pre_filters", t)
        else:
            self.lap("pre_filters", t)

    # --- stages: admit, reserve budget, call upstream (`dispatch`), post-filters -------------------

    def _cache_key(self) -> str:
        route = self.route
        if self.no_cache or not (route.cache_enabled or self.principal.cache_enabled):
            return ""
        canonical = orjson.dumps([self.endpoint, route.name, self.body], option=orjson.OPT_SORT_KEYS)
        # Streams have keys of their own, named after their format: a value is never read in another form.
        kind = "sse1:" if self.stream else ""
        return f"stw:cache:{self.principal.organisation_id}:{kind}{hashlib.sha256(canonical).hexdigest()}"

    async def call(self) -> None:
        t = time.perf_counter()
        self.cache_key = self._cache_key()
        result = await dispatch.attempts_run(self, dispatch.json_attempt)
        self.timings["call_upstream"] = round((time.perf_counter() - t) * 1000, 3)
        if type(result) is dispatch.CacheHit:
            payload = result.value
            self.cache_hit = True
            self.status = "cached"
            data = None
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(payload)
                self.usage = Usage.from_response(data)
            self.json_answer = (payload, "hit")
            if self.safety is not None and isinstance(data, dict):
                # The cache keeps the upstream's answer: it is filtered on its way out every time.
                self.response_data = data
                t = time.perf_counter()
                try:
                    filtered = await self.safety.post_json(self, data)
                finally:
                    self.lap("post_filters", t)
                if filtered is not None:
                    self.json_answer = (filtered, "hit")
            return
        data = result.data
        usage = Usage.from_response(data)
        self.attempts[-1]["usage"] = usage
        self.usage = usage
        self.response_data = data
        payload = result.body

        self.deployment_outcome = (self.deployment, "ok", usage.tokens if usage else 0)
        self.json_answer = (payload, "miss" if self.cache_key else None)
        t = time.perf_counter()
        if self.safety is None:
            self.lap("post_filters", t)
        else:
            try:
                filtered = await self.safety.post_json(self, data)
            except ProxyError:
                self.cache_key = ""  # a withheld answer is not cached
                raise
            finally:
                self.lap("post_filters", t)
            if self.safety.held_output:
                self.cache_key = ""  # nor is a held one (the hold's answer is in `json_answer`)
                return
            if filtered is not None:
                self.json_answer = (filtered, self.json_answer[1])
        # The upstream's answer is what the cache keeps; filters run on it on every way out.
        self.cache_value = payload if self.cache_key else None

    async def call_streaming(self) -> None:
        t = time.perf_counter()
        self.cache_key = self._cache_key()
        # The stream is opened in this task; keep-alives come from a helper task that only exists once
        # the first token is slow. No extra task or loop turn on the common, fast path.
        interval = hot.STEWARD_PROXY_KEEPALIVE_SECONDS
        keepalive: asyncio.Task | None = None

        def slow_first_token() -> None:
            nonlocal keepalive
            keepalive = asyncio.ensure_future(self._keepalive(interval))

        timer = asyncio.get_running_loop().call_later(interval, slow_first_token)
        try:
            result = await dispatch.attempts_run(self, dispatch.stream_attempt)
        finally:
            timer.cancel()
            if keepalive is not None:
                keepalive.cancel()
                with contextlib.suppress(BaseException):
                    await keepalive
        if type(result) is dispatch.CacheHit:
            self.timings["call_upstream"] = round((time.perf_counter() - t) * 1000, 3)
            await self._replay_cached_stream(result.value)
            return
        relay = self.relay = sse.StreamRelay(
            chat=self.endpoint == CHAT, client_usage=self.client_usage, cache=bool(self.cache_key)
        )
        # Under a safety policy the relay's output goes through the stream's filter (`streamfilter`).
        screen = self.safety.stream_filter(self) if self.safety is not None else None
        # The response head goes out with the first events, in the same write.
        t_stream = time.perf_counter()
        self.timings["call_upstream"] = round((t_stream - t) * 1000, 3)
        deployment = self.deployment
        attempt = self.attempts[-1]
        send = self.send
        finished = result.finished
        try:
            # The first batch goes out at once, even when it is the whole stream: holding it for
            # [DONE] saved a write (about 4% of such a stream's CPU) but put the settlement and a
            # loop turn in front of the first token (0.3-0.4 ms at 16 streams). Only the last bytes
            # must wait for the settlement.
            out = relay.relay(result.first)
            if screen is not None and out is not None:
                out = await screen.feed(out)
            if out is not None:
                await self.start_stream()
                await send({"type": "http.response.body", "body": out, "more_body": True})
            # The first token is out: let streams still waiting for theirs (already woken, in the
            # loop's ready queue) go ahead of this one's remaining chunks, settlement and log.
            await asyncio.sleep(0)
            async for batch in result.batches:
                if screen is not None:
                    if screen.ended:
                        break  # a window's violation ended the stream: nothing more is read or sent
                    out = relay.relay(batch)
                    if out is not None:
                        out = await screen.feed(out)
                else:
                    # A later batch known to be the stream's last waits for [DONE] and goes out with it,
                    # one write instead of two.
                    out = relay.relay(batch, finished())
                if out is not None:
                    if not self.response_started:  # no coroutine per batch once the head is out
                        await self.start_stream()
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except (TransientUpstreamError, PermanentUpstreamError) as exc:
            self.usage = relay.usage
            attempt.update(status="error", error_type=exc.code, http_status=exc.status)
            self.deployment_outcome = (deployment, "fail", relay.tokens())
            self.fail(proxy_error_from(exc))
            self.error.outcome = "error"
            if screen is not None:
                relay.held = b""  # unchecked text never goes out
            await self.start_stream()  # the stream had begun: it ends with an error event, after what came
            return
        except BaseException:
            self.usage = relay.usage
            attempt.update(status="cancelled", http_status=499)
            self.deployment_outcome = (deployment, "neutral", relay.tokens())
            raise
        finally:
            await result.close()
            elapsed = time.perf_counter() - t_stream
            self.upstream_s += elapsed
            attempt["latency_ms"] = round(attempt["latency_ms"] + elapsed * 1000, 3)
            attempt["usage"] = relay.usage
        self.usage = relay.usage
        self.deployment_outcome = (deployment, "ok", relay.tokens())
        t = time.perf_counter()
        if screen is None:
            self.lap("post_filters", t)
        else:
            try:
                relay.held = await self.safety.stream_end(self)
            except ProxyError:
                self.cache_key = ""  # a withheld answer is not cached
                raise
            finally:
                self.lap("post_filters", t)
            if screen.ended or self.safety.held_output:
                self.cache_key = ""  # nor is a stream cut short or held
                if screen.ended:
                    self.status = "rejected"
                return
        if relay.sent is not None:
            # Only a stream that ran to its end is kept: the same events, usage included if the client
            # asked (the usage itself joins them once settlement has estimated any the upstream left out).
            self.cache_value = b"".join(relay.sent)

    async def _replay_cached_stream(self, value: bytes) -> None:
        """A cache hit on a stream: its events go out in one write, with [DONE], at no upstream cost."""
        try:
            usage, events = sse.cached_stream_read(value)
        except sse.CacheDamaged:
            # Only this code writes under a stream key: anything else there was put by someone else.
            logger.error("the cache entry %s is not a cached stream", self.cache_key)
            raise ProxyError(500, "Steward's response cache holds a damaged entry.", code="cache_damaged") from None
        self.cache_hit = True
        self.status = "cached"
        self.usage = usage
        relay = self.relay = sse.StreamRelay(chat=self.endpoint == CHAT, client_usage=self.client_usage, cache=False)
        screen = self.safety.stream_filter(self) if self.safety is not None else None
        if screen is None:
            relay.held = events
            return
        # The cache keeps the upstream's events: they are filtered on their way out every time.
        relay.contents.extend(e[6:] for e in events.split(b"\n\n") if e.startswith(b"data: {"))
        t = time.perf_counter()
        try:
            out = await screen.feed(events) or b""
            relay.held = out + await self.safety.stream_end(self)
        finally:
            self.lap("post_filters", t)

    async def _keepalive(self, interval: float) -> None:
        """A slow first token: keep the connection (and proxies on the way) from timing out."""
        while True:
            await self.start_stream()
            await self.send({"type": "http.response.body", "body": sse.KEEPALIVE, "more_body": True})
            await asyncio.sleep(interval)

    def _stream_content(self) -> list[str]:
        return self.relay.content() if self.relay is not None else []

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
            held = self.relay.held if self.relay is not None else b""
            event = held + b"data: " + error.body() + b"\n\n"
            await self.send({"type": "http.response.body", "body": event, "more_body": True})
            await self.send({"type": "http.response.body", "body": sse.DONE, "more_body": False})

    # --- responses ----------------------------------------------------------------------------

    def _common_headers(self, cache: str | None = None) -> list[tuple[bytes, bytes]]:
        headers = [(b"x-request-id", self.request_id.encode())]
        if self.deployment is not None:
            headers.append((b"x-steward-model-deployment", self.deployment.name.encode()))
        if self.prompt is not None:
            headers.append(
                (b"x-steward-prompt-version", f"{self.prompt.prompt_name}:{self.prompt.version_number}".encode())
            )
            if self.prompt.experiment is not None:
                arm = self.prompt.experiment
                headers.append((b"x-steward-experiment", f"{arm.experiment_id}:{arm.variant}".encode()))
        if cache is not None:
            headers.append((b"x-steward-cache", cache.encode()))
        overhead = (time.perf_counter() - self.t0 - self.upstream_s) * 1000 - self.timings.get("hold_wait", 0.0)
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

    async def _settle_call(self):
        """Estimate usage the upstream did not report, price every attempt, and return the script
        call that settles the reservation at that cost (or releases it when nothing was produced)."""
        if self._needs_estimate():
            if self.endpoint == EMBEDDINGS:
                completion = ""
            elif self.stream:
                completion = "".join(self._stream_content())
            else:
                completion = response_text(self.endpoint, self.response_data or {})
            usage = await usage_estimate(
                endpoint=self.endpoint,
                body=self.body,
                model=self.deployment.model,
                completion=completion,
                pieces=len(self._stream_content()) if self.stream else 0,
            )
            self.attempts[-1]["usage"] = usage
            self.usage = usage
        for attempt in self.attempts:
            if attempt.get("may_bill") and attempt.get("usage") is None:
                attempt["usage"] = await unanswered_estimate(
                    endpoint=self.endpoint, body=self.body, model=attempt["model"]
                )
        if self.reservation is None or self.settled:
            return None
        price = await attempts_price(
            organisation_id=self.principal.organisation_id, attempts=self.attempts, started_at=self.started_at
        )
        produced = price.total > 0 or any(a.get("usage") for a in self.attempts)
        return billing.budget_finish_call(reservation=self.reservation, actual_cost=price.total if produced else None)

    def record(self) -> dict:
        return request_record(self)

    def _finish_args(self) -> list | None:
        """FINISH arguments when something in Redis must be given back or updated, else None.

        Nothing is needed for the common case: a key without in-flight or TPM limits, on a weighted
        route, whose deployment answered with its circuit closed and no TPM limit of its own.
        """
        deployment, outcome, tokens = self.deployment_outcome or (None, "neutral", 0)
        need_deployment = deployment is not None and (
            self.deployment_tracked
            or outcome == "fail"
            or (outcome == "ok" and not self.circuit_clean)
            or (tokens > 0 and deployment.tpm_limit is not None)
        )
        if not need_deployment and not self.key_admitted:
            return None
        return admission.finish_args(
            now_ms=dispatch.now_ms(),
            request_id=self.request_id,
            key_id=self.principal.id if self.key_admitted else None,
            key_tokens=tokens,
            deployment_id=deployment.id if need_deployment else None,
            # A success on a circuit that was clean at admission moves nothing (as when FINISH is
            # skipped altogether); here it only counts tokens.
            outcome="neutral" if outcome == "ok" and self.circuit_clean else outcome,
            deployment_tokens=tokens,
            threshold=hot.STEWARD_PROXY_CIRCUIT_FAILURES,
            cooldown_ms=int(hot.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS * 1000),
            release_key=self.key_admitted and self.principal.max_in_flight is not None,
            tracked=self.deployment_tracked,
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
                value = sse.cache_value(self.usage, value)
            calls.append(Command("SET", self.cache_key, value, "EX", self.route.cache_ttl_seconds))
        return calls

    async def settle_start(self):
        """The settle stage with the release of limits: one batch, written to Redis before this
        returns (in the write it shares with the loop turn's other commands). Its replies are read by
        `settle_finish` once the answer is on its way: whatever this process sends to Redis
        afterwards, a client's next request included, Redis runs after it, and so does a request
        the client sends to another process after reading the answer."""
        self.settle_started = time.perf_counter()
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
        self.lap("settle_cost", self.settle_started)

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

"""Dispatch: the attempts of one proxied request, until a deployment answers.

`attempts_run` tries the route's deployments, then its fallbacks; each attempt is admitted (limits,
circuit, cache, in one Redis round trip that carries the budget reservation too), reserved for,
performed and recorded. It returns what came of it, typed: a `CacheHit`, an
`upstream.UpstreamResponse` (a JSON answer) or an `OpenStream`. The state it leaves (attempts,
reservation, what FINISH must report for the deployment) is the request's, which the settle stage
reads; these are functions of the request rather than an object of their own, which would cost
the hot path an allocation and an indirection per access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import redis.exceptions

from billing import services as billing
from core import llm
from core.conf import hot
from core.errors import ApplicationError, PermanentUpstreamError, TransientUpstreamError
from core.redis import abatch
from proxy import admission, upstream
from proxy.errors import ProxyError, proxy_error_from
from proxy.selectors import DeploymentTarget, RouteTarget
from proxy.settlement import CHAT, COMPLETIONS, EMBEDDINGS

if TYPE_CHECKING:
    from proxy.pipeline import ProxyRequest

logger = logging.getLogger("steward.proxy")

CIRCUIT_PROBE_MS = 30_000
UPSTREAM_PATHS = {CHAT: "/chat/completions", COMPLETIONS: "/completions", EMBEDDINGS: "/embeddings"}


@dataclass(slots=True)
class CacheHit:
    """The response cache held the answer: no attempt was made."""

    value: bytes


@dataclass(slots=True)
class OpenStream:
    """A stream whose first batch of events has arrived (a failure before it was retried)."""

    first: list[bytes]
    batches: AsyncIterator[list[bytes]]
    close: Callable[[], Awaitable[None]]
    finished: Callable[[], bool]  # whether the last batch read was the stream's last


Outcome = CacheHit | upstream.UpstreamResponse | OpenStream
AttemptFn = Callable[["ProxyRequest", DeploymentTarget, float], Awaitable[upstream.UpstreamResponse | OpenStream]]


def now_ms() -> int:
    return int(time.time() * 1000)


def weighted_order(deployments: list[DeploymentTarget]) -> list[DeploymentTarget]:
    """A random order in which each deployment comes first in proportion to its weight (Efraimidis-Spirakis)."""
    if len(deployments) < 2:
        return deployments
    return sorted(deployments, key=lambda d: random.random() ** (1.0 / d.weight), reverse=True)


async def attempts_run(r: ProxyRequest, attempt_fn: AttemptFn) -> Outcome:
    """Try deployments until one answers: other deployments of the route, then its fallbacks.

    `attempt_fn(request, deployment, timeout)` performs one attempt (`json_attempt`,
    `stream_attempt`); transient errors move on (with a short backoff), permanent ones end the
    request (a ProxyError), as does running out of deployments, attempts or time.
    """
    principal = r.principal
    table = r.table
    deadline = r.t0 + r.route.deadline_seconds
    # Fallbacks the key may not use are never tried: the key's model scope covers every attempt.
    chain = [r.route] + [
        table.routes[name] for name in r.route.fallbacks if name in table.routes and principal.model_allowed(name)
    ]
    max_attempts = hot.STEWARD_PROXY_MAX_ATTEMPTS
    expire_ms = int(r.route.deadline_seconds * 1000) + 5_000
    last_error: ApplicationError | None = None
    unavailable: admission.Admission | None = None
    first = True
    for route in chain:
        tried: set[int] = set()
        while len(r.attempts) < max_attempts:
            candidates = [d for d in route.deployments if d.id not in tried]
            if not candidates:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise ProxyError(
                    504,
                    f"No answer within the model's deadline of {r.route.deadline_seconds:g} s.",
                    code="deadline_exceeded",
                    outcome="error",
                )
            if route.strategy != "least_in_flight":
                candidates = weighted_order(candidates)
            plan = None
            if first and r.reservation is None and not r.cache_key:
                # The budget reservation travels with the admission check: one Redis round trip for
                # both. (With the cache on, a hit must not reserve: those requests reserve after it.)
                plan = await _reserve_plan(r, chain)
            t = time.perf_counter()
            call = admission.admit_call(
                now_ms=now_ms(),
                request_id=r.request_id,
                expire_ms=expire_ms,
                key_id=principal.id if first else None,
                key_rpm=principal.rpm_limit,
                key_tpm=principal.tpm_limit,
                key_max_in_flight=principal.max_in_flight,
                cache_key=r.cache_key if first else "",
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
                r.lap("admit", t)
            outcome = decision.outcome
            budget_error = None
            if plan is not None:
                # Read the reservation before anything can end the request, so that one that was
                # made is given back by the settle stage whatever happens next.
                t = time.perf_counter()
                try:
                    r.reservation = await billing.abudget_reserve_complete(
                        plan, results[1] if plan.call is not None else None
                    )
                except ApplicationError as exc:
                    budget_error = exc
                r.timings["reserve_budget"] += round((time.perf_counter() - t) * 1000, 3)
            if outcome.startswith("key_"):
                _reject_key(decision)
            if budget_error is not None:
                if outcome == "ok":
                    r.key_admitted = principal.max_in_flight is not None or principal.tpm_limit is not None
                    r.deployment_outcome = (candidates[decision.index], "neutral", 0)
                raise budget_error
            if outcome == "cached":
                return CacheHit(decision.cached)
            if outcome != "ok":
                if unavailable is None or outcome == "deployment_limited":
                    unavailable = decision
                break
            if first:
                first = False
                r.key_admitted = principal.max_in_flight is not None or principal.tpm_limit is not None
            deployment = candidates[decision.index]
            r.circuit_clean = decision.clean
            r.deployment_tracked = route.strategy == "least_in_flight"
            if r.reservation is None:
                await _reserve(r, chain, deployment)
            elif r.attempts and r.attempts[-1].get("may_bill"):
                await _reserve_retry(r, deployment)
            tried.add(deployment.id)
            result = await _attempt(r, attempt_fn, deployment, min(deployment.timeout_seconds, remaining))
            if isinstance(result, ApplicationError):
                last_error = result
                if isinstance(result, PermanentUpstreamError):
                    error = proxy_error_from(result)
                    error.outcome = "error"
                    raise error
                backoff = min(0.05 * 2 ** (len(r.attempts) - 1), 1.0, max(0.0, deadline - time.perf_counter()))
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
            f"Every deployment of {r.model!r} is at its rate limit.",
            code="deployment_rate_limited",
            retry_after=unavailable.retry_after_ms / 1000,
        )
    if unavailable is not None and unavailable.outcome == "unhealthy":
        raise ProxyError(
            503,
            f"Every deployment of {r.model!r} is failing; retry later.",
            code="model_unavailable",
            retry_after=max(1.0, unavailable.retry_after_ms / 1000),
            outcome="error",
        )
    raise ProxyError(
        503,
        f"The model {r.model!r} has no deployment to serve it.",
        code="no_deployment",
        outcome="error",
        retry_after=5,
    )


_KEY_LIMITS = {"key_rpm": "requests per minute", "key_tpm": "tokens per minute", "key_in_flight": "requests in flight"}


def _reject_key(decision: admission.Admission) -> None:
    raise ProxyError(
        429,
        f"Rate limit reached for this API key ({_KEY_LIMITS[decision.outcome]}).",
        code="rate_limit_exceeded",
        retry_after=max(1.0, decision.retry_after_ms / 1000),
        extra={"limit": decision.outcome.removeprefix("key_")},
    )


async def _reserve_plan(r: ProxyRequest, chain: list[RouteTarget]) -> billing.ReservePlan:
    """Work out the reservation: the worst case over every deployment the request may land on
    (retries and fallbacks may reach a dearer model)."""
    t = time.perf_counter()
    principal = r.principal
    body = r.body
    targets = [(d.model, d.id) for route in chain for d in route.deployments]
    # Sized by what goes upstream: a rendered prompt or a filter can make it far larger than the
    # client's body. While it is still the client's (a shallow copy compares in O(keys), values
    # by identity) the raw body's length is that size already; otherwise serialising it once
    # costs about 1 us per KB, and only such requests pay it.
    sent_bytes = len(r.raw_body) if body == r.client_body else len(orjson.dumps(body))
    if r.endpoint == EMBEDDINGS:
        choices, max_output = 1, 0
    else:
        # Every choice is generated and billed: chat's `n`, a completion's `best_of` candidates.
        n = body.get("n")
        choices = n if type(n) is int and n > 1 else 1
        best_of = body.get("best_of") if r.endpoint == COMPLETIONS else None
        if type(best_of) is int and best_of > choices:
            choices = best_of
        max_output = body.get("max_completion_tokens") or body.get("max_tokens")
    try:
        return await billing.abudget_reserve_plan(
            request_id=r.request_id,
            scope=billing.BudgetScope(
                organisation_id=principal.organisation_id,
                api_key_id=principal.id,
                team_id=principal.team_id,
                prompt_id=r.prompt.prompt_id if r.prompt else None,
            ),
            model=targets[0][0],
            deployment_id=targets[0][1],
            input_text_bytes=sent_bytes,
            max_output_tokens=max_output,
            alternatives=tuple(targets[1:]),
            choices=choices,
        )
    finally:
        r.timings["reserve_budget"] = round((time.perf_counter() - t) * 1000, 3)


async def _reserve(r: ProxyRequest, chain: list[RouteTarget], deployment: DeploymentTarget) -> None:
    """Reserve on its own round trip, after an admission that could have been a cache hit."""
    t = time.perf_counter()
    try:
        # Planning may refuse too (cost ceiling, unknown price), after admission took a slot.
        plan = await _reserve_plan(r, chain)
        r.reservation = await billing.abudget_reserve_send(plan)
    except BaseException:
        # The deployment slot taken by admission is given back; the key's is released at the end.
        r.deployment_outcome = (deployment, "neutral", 0)
        raise
    finally:
        r.timings["reserve_budget"] += round((time.perf_counter() - t) * 1000, 3)


async def _reserve_retry(r: ProxyRequest, deployment: DeploymentTarget) -> None:
    """A retry after an attempt the provider may bill (it timed out once the request was sent;
    the provider can go on generating and charge for it) holds a worst case of its own, so what
    all attempts cost stays within what was reserved; a budget that cannot hold it refuses the
    retry (429 budget_exceeded) rather than let the request cost up to twice its worst case."""
    t = time.perf_counter()
    try:
        await billing.abudget_extend(reservation=r.reservation)
    except BaseException:
        r.deployment_outcome = (deployment, "neutral", 0)
        raise
    finally:
        r.timings["reserve_budget"] = r.timings.get("reserve_budget", 0.0) + round((time.perf_counter() - t) * 1000, 3)


async def _attempt(r: ProxyRequest, attempt_fn: AttemptFn, deployment: DeploymentTarget, timeout: float):
    """One attempt, recorded in `r.attempts`: its result, or the upstream error that ended it."""
    attempt = {
        "n": len(r.attempts) + 1,
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
    r.attempts.append(attempt)
    r.deployment = deployment
    t = time.perf_counter()
    try:
        result = await attempt_fn(r, deployment, timeout)
    except (TransientUpstreamError, PermanentUpstreamError) as exc:
        elapsed = time.perf_counter() - t
        r.upstream_s += elapsed
        attempt.update(
            status="error",
            http_status=getattr(exc, "upstream_status", None) or exc.status,
            error_type=exc.code,
            latency_ms=round(elapsed * 1000, 3),
        )
        if detail := getattr(exc, "detail", None):
            attempt["error_detail"] = detail  # for admins (the client got a generic message)
        if exc.code == "upstream_timeout":
            # The provider read the request and may bill it (see `_reserve_retry`, `settlement.unanswered_estimate`).
            attempt["may_bill"] = True
        transient = isinstance(exc, TransientUpstreamError)
        attempt["circuit"] = await _deployment_finish(r, deployment, "fail" if transient else "neutral")
        return exc
    except BaseException:
        elapsed = time.perf_counter() - t
        r.upstream_s += elapsed
        attempt.update(status="cancelled", http_status=499, latency_ms=round(elapsed * 1000, 3))
        r.deployment_outcome = (deployment, "neutral", 0)
        raise
    elapsed = time.perf_counter() - t
    r.upstream_s += elapsed
    attempt["latency_ms"] = round(elapsed * 1000, 3)
    return result


async def _deployment_finish(r: ProxyRequest, deployment: DeploymentTarget, outcome: str) -> str:
    """Record a failed attempt's outcome for the deployment's circuit at once (the request goes on)."""
    try:
        return await admission.finish(
            now_ms=now_ms(),
            request_id=r.request_id,
            key_id=None,
            key_tokens=0,
            deployment_id=deployment.id,
            outcome=outcome,
            deployment_tokens=0,
            threshold=hot.STEWARD_PROXY_CIRCUIT_FAILURES,
            cooldown_ms=int(hot.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS * 1000),
            release_key=False,
            tracked=r.deployment_tracked,
        )
    except redis.exceptions.RedisError:
        logger.warning("could not record the outcome of deployment %s", deployment.id)
        return ""


# --- attempts -------------------------------------------------------------------------------------


def _upstream_body(r: ProxyRequest, deployment: DeploymentTarget) -> dict:
    """The upstream request, built from the fields the endpoint (and the route) allow: whatever
    else the body came to hold (a prompt's parameters, a filter's rewrite) stays here."""
    fields = r.route.upstream_fields[r.endpoint]
    body = r.body
    body = dict(body) if fields.issuperset(body) else {k: v for k, v in body.items() if k in fields}
    body["model"] = deployment.model
    return body


async def json_attempt(r: ProxyRequest, deployment: DeploymentTarget, timeout: float) -> upstream.UpstreamResponse:
    body = _upstream_body(r, deployment)
    if deployment.direct:
        return await upstream.call_json(
            url=deployment.api_base + UPSTREAM_PATHS[r.endpoint],
            payload=orjson.dumps(body),
            api_key=deployment.api_key,
            timeout=timeout,
            request_id=r.request_id,
            name=deployment.name,
        )
    data = await llm.acall(
        endpoint=r.endpoint,
        body=body,
        model=deployment.model,
        api_base=deployment.api_base or None,
        api_key=deployment.api_key,
        timeout=timeout,
        name=deployment.name,
    )
    return upstream.UpstreamResponse(status=200, body=orjson.dumps(data), data=data)


def _never_known() -> bool:
    return False  # litellm's iterator cannot tell


async def stream_attempt(r: ProxyRequest, deployment: DeploymentTarget, timeout: float) -> OpenStream:
    """Open the stream and wait for its first event, so a failure before any content is retried."""
    body = _upstream_body(r, deployment)
    if deployment.direct:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
        stream = await upstream.open_stream(
            url=deployment.api_base + UPSTREAM_PATHS[r.endpoint],
            payload=orjson.dumps(body),
            api_key=deployment.api_key,
            timeout=timeout,
            request_id=r.request_id,
            name=deployment.name,
        )
        batches = stream.batches()
        close = stream.close

        def finished() -> bool:
            return stream.finished

    else:
        chunks = await llm.astream(
            endpoint=r.endpoint,
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
        finished = _never_known

        async def close():
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
        await close()
        raise TransientUpstreamError(f"Upstream {deployment.name} closed the stream without data") from None
    except TimeoutError:
        await close()
        raise upstream.UpstreamTimeout(f"Upstream {deployment.name} sent nothing within {timeout:g} s") from None
    except BaseException:
        await close()
        raise
    return OpenStream(first, batches, close, finished)

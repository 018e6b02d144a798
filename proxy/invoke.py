"""Calling the proxy pipeline in-process, for Steward's own pages (the prompt playground).

`achat_completion_invoke` runs the very `ProxyRequest` stages a service's call goes through
(prompt resolution, pre/post filters, admission and limits, budget reserve/settle, retries and
fallbacks, the request log); only the transport differs: the principal is handed in instead of
being read from an `Authorization` header, and the answer is captured instead of sent.

Sync views call `chat_completion_invoke`, which runs the coroutine on one long-lived event loop
per process ("the invoke loop"). asgiref's `async_to_sync` would, outside an ASGI server, make a
new loop per call, and the proxy's per-loop resources (Redis pools, the upstream connection pool, keyed by
`id(loop)`, which Python reuses) must not outlive their loop.

The playground spends as a per-organisation, system-managed API key (`PLAYGROUND_KEY_NAME`), so
budgets, the usage ledger and the request log attribute playground spend to that key.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import orjson
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, Organisation
from accounts.selectors import ApiKeyPrincipal
from accounts.services import api_key_create
from audit.actions import Action
from audit.services import audit_event_record
from billing import services as billing
from billing.models import BudgetScope, KeyCostCeiling
from billing.selectors import budgets_list
from core.actors import Actor
from core.errors import TransientUpstreamError
from proxy import upstream
from proxy.pipeline import ProxyRequest
from proxy.requestlog import log_buffers_flush
from proxy.settlement import CHAT, NO_USAGE, attempts_price

PLAYGROUND_KEY_NAME = "playground (system)"
INVOKE_TIMEOUT_SECONDS = 300.0


@dataclass
class InvokeResult:
    """What a caller of the pipeline gets back: the request-log record's figures plus the answer."""

    request_id: str
    status: str  # the request-log status: ok, cached, error, rejected, cancelled
    http_status: int
    text: str = ""
    response: dict | None = None
    error_code: str = ""
    error_message: str = ""
    error_param: str | None = None
    model: str = ""
    deployment: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    latency_ms: float = 0.0
    upstream_ms: float = 0.0
    cost: Decimal | None = None
    cost_basis: str = ""  # billing.Cost.basis of the attempts ("priced", "estimated", "no_price", ...)
    cost_reason: str = ""
    currency: str = "USD"
    attempts: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "cached")

    @property
    def cost_display(self) -> str:
        """The cost without the ledger's trailing zeros (0.000017, not 0.000017000000)."""
        return "" if self.cost is None else f"{self.cost.normalize():f}"


def _principal_of(key: ApiKey) -> ApiKeyPrincipal:
    return ApiKeyPrincipal(
        id=key.id,
        organisation_id=key.organisation_id,
        team_id=key.team_id,
        name=key.name,
        prefix=key.prefix,
        expires_at=key.expires_at,
        allowed_models=tuple(key.allowed_models),
        allowed_prompts=tuple(key.allowed_prompts),
        roles=tuple(key.roles),
        rpm_limit=key.rpm_limit,
        tpm_limit=key.tpm_limit,
        max_in_flight=key.max_in_flight,
        cache_enabled=key.cache_enabled,
        overridable_params=tuple(key.overridable_params),
    )


def playground_key_ensure(*, organisation: Organisation) -> ApiKeyPrincipal:
    """The organisation's playground key as a principal, created (by Actor.system, audited) on first use.

    Idempotent: one active key per organisation (creation is serialised on the organisation row).
    Its secret is discarded at once: nothing can call /v1/ with it. Limits, scopes, team and revocation
    set on it by an admin apply to the playground like to any key; a revoked or expired one is replaced
    by one that keeps its limits (`_playground_key_replace`), so revoking it never lifts them.
    """

    def active():
        return (
            ApiKey.objects.filter(
                organisation=organisation, name=PLAYGROUND_KEY_NAME, created_by__isnull=True, revoked_at__isnull=True
            )
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
            .order_by("id")
            .first()
        )

    key = active()
    if key is None:
        with transaction.atomic():
            Organisation.objects.select_for_update().filter(pk=organisation.pk).first()
            key = active()
            if key is None:
                key = _playground_key_replace(organisation=organisation)
    return _principal_of(key)


# What an admin may have limited on a playground key; the replacement keeps all of it (not the
# expiry, which is what made an expired key need replacing, nor roles: nothing uses its secret).
_CARRIED_OVER = (
    "team",
    "allowed_models",
    "allowed_prompts",
    "rpm_limit",
    "tpm_limit",
    "max_in_flight",
    "cache_enabled",
    "overridable_params",
)


def _billing_limits_copy(*, source: ApiKey, target: ApiKey, actor: Actor) -> dict:
    """Give `target` the cost ceiling and (copies of) the key budgets of `source`, through billing's
    audited services. The copies are new budgets: the old key's spend stays with the old key."""
    carried: dict = {"max_request_cost": None, "budgets": []}
    ceiling = KeyCostCeiling.objects.filter(api_key=source).first()
    if ceiling is not None:
        billing.key_cost_ceiling_set(api_key=target, actor=actor, max_request_cost=ceiling.max_request_cost)
        carried["max_request_cost"] = str(ceiling.max_request_cost)
    for budget in budgets_list(organisation=source.organisation).filter(api_key=source, scope=BudgetScope.API_KEY):
        copy = billing.budget_create(
            organisation=source.organisation,
            actor=actor,
            name=f"{budget.name} (playground key {target.prefix})"[:200],
            scope=BudgetScope.API_KEY,
            amount=budget.amount,
            period=budget.period,
            api_key_id=target.id,
            soft_threshold_percent=budget.soft_threshold_percent,
            hard_limit=budget.hard_limit,
        )
        carried["budgets"].append(copy.id)
    return carried


def _playground_key_replace(*, organisation: Organisation) -> ApiKey:
    """Create the playground key (caller holds the organisation lock). When an earlier one exists
    (revoked or expired), the new one gets its limits, its cost ceiling and copies of its own
    budgets, and an audit event says where they came from: re-creation never silently lifts a limit."""
    actor = Actor.system("playground")
    previous = (
        ApiKey.objects.filter(organisation=organisation, name=PLAYGROUND_KEY_NAME, created_by__isnull=True)
        .order_by("-id")
        .first()
    )
    limits = {field: getattr(previous, field) for field in _CARRIED_OVER} if previous is not None else {}
    key = api_key_create(organisation=organisation, name=PLAYGROUND_KEY_NAME, actor=actor, **limits).api_key
    if previous is None:
        return key
    carried = _billing_limits_copy(source=previous, target=key, actor=actor)
    audit_event_record(
        organisation_id=organisation.id,
        actor=actor,
        action=Action.API_KEY_UPDATED,
        target_type="api_key",
        target_id=key.id,
        before={"replaces": previous.id, "prefix": previous.prefix},
        after={
            "carried_over_from": previous.id,
            **{field: getattr(key, field + "_id" if field == "team" else field) for field in _CARRIED_OVER},
            **carried,
        },
    )
    return key


class _InProcessRequest(ProxyRequest):
    """A ProxyRequest whose principal is given and whose answer is kept rather than sent."""

    def __init__(self, *, principal: ApiKeyPrincipal, raw_body: bytes):
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # nothing more will come; never a disconnect
            sent = True
            return {"type": "http.request", "body": raw_body, "more_body": False}

        async def send(message):
            return None

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"content-length", str(len(raw_body)).encode())],
        }
        super().__init__(scope, receive, send, CHAT)
        self.given_principal = principal
        self.log_record: dict | None = None

    async def authenticate(self) -> None:
        # The caller authenticated the person and chose the key; the stage is timed like any other.
        t = time.perf_counter()
        self.principal = self.given_principal
        self.lap("authenticate", t)

    def record(self) -> dict:
        record = super().record()
        self.log_record = record
        return record


async def _cost(request: _InProcessRequest) -> tuple[Decimal | None, str, str, str]:
    """The cost as the settle stage prices it (`settlement.attempts_price`), and how it came about."""
    price = await attempts_price(
        organisation_id=request.principal.organisation_id, attempts=request.attempts, started_at=request.started_at
    )
    if not price.bases:
        return (None, "cached" if request.cache_hit else "no_usage", "", price.currency)
    basis = next((b for b in ("no_price", "estimated") if b in price.bases), price.bases[0])
    return (price.total, basis, "; ".join(dict.fromkeys(price.reasons)), price.currency)


async def achat_completion_invoke(*, principal: ApiKeyPrincipal, body: dict) -> InvokeResult:
    """Run one non-streaming chat completion through the full proxy pipeline as `principal`.

    `body` is what a service would POST to /v1/chat/completions (a `prompt` reference included).
    Never raises for the request's own failures: they come back in the result, as a client would
    get them, and the request is logged either way. Side effects: those of any proxied request.
    """
    body = {**body, "stream": False}
    request = _InProcessRequest(principal=principal, raw_body=orjson.dumps(body))
    await request.run()
    record = request.log_record or {}
    usage = request.usage or NO_USAGE
    result = InvokeResult(
        request_id=request.request_id,
        status=request.status,
        http_status=request.http_status,
        model=request.model,
        deployment=request.deployment.name if request.deployment else "",
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        usage_estimated=usage.estimated,
        latency_ms=record.get("latency_ms", 0.0),
        upstream_ms=record.get("upstream_ms", 0.0),
        attempts=list(request.attempts),
    )
    if request.error is not None:
        result.error_code = request.error.code
        result.error_message = request.error.message
        result.error_param = request.error.param
    elif request.json_answer is not None:
        data = orjson.loads(request.json_answer[0])
        result.response = data
        result.text = "".join(
            str((choice.get("message") or {}).get("content") or "") for choice in data.get("choices") or []
        )
    if request.principal is not None:
        result.cost, result.cost_basis, result.cost_reason, result.currency = await _cost(request)
    return result


class _InvokeLoop:
    """One event loop in a daemon thread, started on first use, for the life of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None or self.loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="steward-invoke-loop", daemon=True).start()
                self.loop = loop
                atexit.register(self.close)
            return self.loop

    def close(self) -> None:
        """Hand the last request records to Redis and close the upstream session (at process exit)."""
        with self.lock:
            loop, self.loop = self.loop, None
        if loop is None or loop.is_closed():
            return

        async def shutdown():
            await log_buffers_flush()
            await upstream.pools_close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


_invoke_loop = _InvokeLoop()


def chat_completion_invoke(*, principal: ApiKeyPrincipal, body: dict) -> InvokeResult:
    """Sync twin of `achat_completion_invoke` for views: blocks until the pipeline is done.

    Raises TransientUpstreamError (after cancelling the run) if it takes over INVOKE_TIMEOUT_SECONDS;
    the route's own deadline normally ends a request well before that.
    """
    coro = achat_completion_invoke(principal=principal, body=body)
    # Scheduled from an empty context: under an ASGI server the view's context carries asgiref's
    # thread-sensitive executor, i.e. this very thread, blocked below; the pipeline's database
    # reads (sync_to_async) would queue behind it and deadlock.
    future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, _invoke_loop.get())
    try:
        return future.result(INVOKE_TIMEOUT_SECONDS)
    except TimeoutError:
        future.cancel()
        raise TransientUpstreamError(
            f"No answer within {INVOKE_TIMEOUT_SECONDS:g} s; the run was cancelled (see the request log)."
        ) from None

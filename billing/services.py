"""Billing's writes, and the contract the proxy pipeline calls.

Contract (the proxy depends on exactly these names and signatures):
- `abudget_reserve(...)` at the "reserve budget" stage, before any upstream call. Raises
  `BudgetExceeded` (HTTP 429, code `budget_exceeded`) when a hard limit would be crossed,
  `CostCeilingExceeded` (a `BudgetExceeded`, HTTP 400, code `cost_ceiling_exceeded`) when the
  request's worst case is above its key's ceiling, and `BudgetUnavailable` (HTTP 503, code
  `budget_unavailable`) when Redis cannot be reached and the organisation fails closed.
- `abudget_settle(...)` at the "settle cost" stage with the request's actual cost (use
  `acost_compute` to price the usage first).
- `abudget_release(...)` when the request fails or is cancelled before anything was produced.
- `abudget_extend(...)` before a retry that follows an attempt the provider may have billed (a
  timeout): the reservation holds the worst case once more, or `BudgetExceeded` refuses the retry.
- `PriceUnknown` (HTTP 503, code `price_unknown`) from the reserve stage when a hard budget or cost
  ceiling applies but a model the request may reach has no price.
- The same in parts, for a caller that sends the Redis work together with its own in one round
  trip (the proxy does, with its admission check and its release of limits):
  `abudget_reserve_plan(...)` gives the reservation's script call and `abudget_reserve_complete(...)`
  reads its answer (`abudget_reserve_send(plan)` makes it on a round trip of its own);
  `budget_finish_call(...)` gives the settle (or release) call and `budget_finish_complete(...)`
  reads its answer. Send the calls with `core.redis.abatch`.
- `cost_compute(...)` / `acost_compute(...)` price one attempt's usage (Decimal, never float).
- `usage_lines_record(...)` is called off the hot path by the request-log consumer with
  finished request records; it writes one ledger line per attempt, idempotently.

Budget enforcement lives in Redis: per budget and period, a spent counter, a sum of held
reservations, the reservations themselves and their expiry times (see billing/lua/). Amounts there
are integer nano-dollars rounded up; the ledger in PostgreSQL keeps exact 12-place Decimals.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from audit.actions import Action
from audit.services import audit_event_record
from billing import models as m
from billing.money import (
    EPOCH,
    MAX_BUDGET_AMOUNT,
    ZERO,
    day_bounds,
    decimal_from_price,
    local_day,
    money,
    nano_ceil,
    nano_to_decimal,
    period_bounds,
)
from core.actors import Actor
from core.conf import hot
from core.crypto import RotationReport, secret_decrypt, secret_encrypt, secrets_reencrypt
from core.db import read_retrying
from core.errors import ApplicationError, ValidationFailed
from core.invalidation import LocalCache, invalidate
from core.redis import Script, ScriptCall, abatch, redis_client

logger = logging.getLogger(__name__)

CONFIG_NAMESPACE = "billing.config"
PRICES_NAMESPACE = "billing.prices"
_config_cache = LocalCache(CONFIG_NAMESPACE)
_price_cache = LocalCache(PRICES_NAMESPACE, max_entries=5_000)
DEV_MODEL_PRICES = {
    # Development upstream models: demo prices (USD per million tokens) so the demo shows real costs.
    "dev-small": {"input": "0.50", "output": "1.50", "cached": "0.05", "max_output": 4096},
    "dev-large": {"input": "3.00", "output": "15.00", "cached": "0.30", "max_output": 8192},
    "dev-embed": {"input": "0.02", "output": "0", "cached": None, "max_output": 1},
}
PER_MILLION = Decimal(1_000_000)


def _caches_invalidate(namespace: str) -> None:
    # This process forgets at once (its own next read sees the change, even before commit);
    # every other process forgets when the transaction commits.
    for cache in (_config_cache, _price_cache):
        if cache.namespace == namespace:
            cache.clear()
    invalidate(namespace)


INPUT_OVERHEAD_TOKENS = 16


def _db_read_retrying(fn, *args):
    """`core.db.read_retrying`, reporting the budget store unavailable (503) rather than failing
    the request with an internal error when the database stays unreachable."""
    from django.db import DatabaseError

    try:
        return read_retrying(fn, *args)
    except DatabaseError as exc:
        raise BudgetUnavailable("Budgets cannot be checked right now (the database is unreachable).") from exc


async def _adb_read(fn, *args):
    return await sync_to_async(_db_read_retrying)(fn, *args)


# --- contract types ---------------------------------------------------------------------------


class BudgetExceeded(ApplicationError):
    status = 429
    code = "budget_exceeded"

    def __init__(self, message: str, *, budget_name: str, resets_at: datetime | None, retry_after: float | None = 60):
        super().__init__(
            message, extra={"budget": budget_name, "resets_at": resets_at.isoformat() if resets_at else None}
        )
        self.budget_name = budget_name
        self.resets_at = resets_at
        self.retry_after = retry_after


class CostCeilingExceeded(BudgetExceeded):
    """The request could cost more than its key allows for one request; retrying will not help."""

    status = 400
    code = "cost_ceiling_exceeded"


class BudgetUnavailable(ApplicationError):
    """Budgets cannot be checked (Redis unreachable) and the organisation fails closed."""

    status = 503
    code = "budget_unavailable"


class PriceUnknown(ApplicationError):
    """A hard budget or cost ceiling applies but a model the request may reach has no price, so its
    worst case cannot be bounded. 503, not 400: the request is fine, Steward's configuration is not
    (like `no_deployment`), and it counts as an error an operator must fix by setting a price or
    marking the model free; the client cannot change anything to get through."""

    status = 503
    code = "price_unknown"

    def __init__(self, model: str):
        super().__init__(
            f"No price is known for model {model!r}, so the budgets of this request cannot be enforced; "
            "an administrator must set a price for it (or mark it free).",
            param="model",
            extra={"model": model},
        )
        self.model = model


@dataclass(frozen=True)
class BudgetScope:
    organisation_id: int
    api_key_id: int | None
    team_id: int | None
    prompt_id: int | None = None


@dataclass
class Reservation:
    id: str
    scope: BudgetScope
    # budget id -> reserved amount; empty when no budget applies to the request
    amounts: dict[str, Decimal] = field(default_factory=dict)
    # budget id -> Redis key prefix of the budget's current period
    keys: dict[str, str] = field(default_factory=dict)
    worst_case: Decimal = ZERO
    # True when Redis was unreachable and the organisation chose to fail open.
    failed_open: bool = False
    # budget id -> its window (limit, name, period end), for holding more before a retry
    windows: dict = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not self.amounts


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class Cost:
    total: Decimal
    currency: str = "USD"
    # How the total came about: "priced", "estimated", "cached", "no_price", "no_usage" (with reason)
    basis: str = "priced"
    reason: str = ""
    price_id: int | None = None


# --- prices -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceInfo:
    id: int
    level: int  # 0 organisation + deployment, 1 organisation + model, 2 global
    effective_from: datetime
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    reasoning: Decimal
    request_fee: Decimal
    max_output_tokens: int | None

    @classmethod
    def from_row(cls, row: m.Price, *, level: int) -> PriceInfo:
        return cls(
            id=row.pk,
            level=level,
            effective_from=row.effective_from,
            input=row.input_per_token,
            output=row.output_per_token,
            cached_input=row.cached_input_per_token if row.cached_input_per_token is not None else row.input_per_token,
            cache_write=row.cache_write_per_token if row.cache_write_per_token is not None else row.input_per_token,
            reasoning=row.reasoning_per_token if row.reasoning_per_token is not None else row.output_per_token,
            request_fee=row.request_fee,
            max_output_tokens=row.max_output_tokens,
        )


def _model_names(model: str) -> list[str]:
    # Routes may name litellm model strings ("openai/gpt-4o"); the global table also knows "gpt-4o".
    names = [model]
    if "/" in model:
        names.append(model.split("/", 1)[1])
    return names


def _price_rows_load(organisation_id: int, model: str, deployment_id: int | None) -> tuple[PriceInfo, ...]:
    from django.db.models import Q

    names = _model_names(model)
    rows = m.Price.objects.filter(model__in=names).filter(
        Q(organisation__isnull=True, deployment_id__isnull=True)
        | Q(organisation_id=organisation_id, deployment_id__isnull=True)
        | Q(organisation_id=organisation_id, deployment_id=deployment_id)
        if deployment_id is not None
        else Q(organisation__isnull=True, deployment_id__isnull=True)
        | Q(organisation_id=organisation_id, deployment_id__isnull=True)
    )
    infos = []
    for row in rows:
        if row.organisation_id is None:
            # An exact model name beats the name without its provider prefix.
            level = 2 if row.model == model else 3
        else:
            level = 0 if row.deployment_id is not None else 1
        infos.append(PriceInfo.from_row(row, level=level))
    infos.sort(key=lambda p: (p.level, -p.effective_from.timestamp()))
    return tuple(infos)


def _price_pick(rows: tuple[PriceInfo, ...], at: datetime) -> PriceInfo | None:
    # Most specific level that has a row in force at `at`; within it, the latest start.
    for row in rows:  # sorted by level, then newest first
        if row.effective_from <= at:
            return row
    return None


def price_resolve(*, organisation_id: int, model: str, deployment_id: int | None, at: datetime) -> PriceInfo | None:
    """The price in force at `at` (served from the in-process cache; every row of the model is
    cached, so a future-dated change takes effect at its start without an invalidation)."""
    key = (organisation_id, model, deployment_id)
    rows = _price_cache.get(key)
    if rows is None:
        epoch = _price_cache.epoch()
        rows = _price_rows_load(organisation_id, model, deployment_id)
        _price_cache.set(key, rows, epoch=epoch)
    return _price_pick(rows, at)


async def aprice_resolve(
    *, organisation_id: int, model: str, deployment_id: int | None, at: datetime
) -> PriceInfo | None:
    key = (organisation_id, model, deployment_id)
    rows = _price_cache.get(key)
    if rows is None:
        epoch = _price_cache.epoch()
        rows = await _adb_read(_price_rows_load, organisation_id, model, deployment_id)
        _price_cache.set(key, rows, epoch=epoch)
    return _price_pick(rows, at)


def cost_from_price(*, price: PriceInfo | None, model: str, usage: Usage) -> Cost:
    """Pure pricing of one attempt. OpenAI-style usage counts cached and cache-write tokens inside
    `prompt_tokens` and reasoning tokens inside `completion_tokens`; each part is priced at its own rate."""
    tokens = usage.prompt_tokens + usage.completion_tokens
    if price is None:
        return Cost(total=ZERO, basis="no_price", reason=f"no price known for model {model}"[:200])
    if tokens == 0 and usage.cache_write_tokens == 0:
        return Cost(total=money(price.request_fee), basis="no_usage", reason="no tokens were used", price_id=price.id)
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cache_write = min(usage.cache_write_tokens, max(usage.prompt_tokens - cached, 0))
    plain_input = max(usage.prompt_tokens - cached - cache_write, 0)
    reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
    plain_output = usage.completion_tokens - reasoning
    total = (
        price.request_fee
        + plain_input * price.input
        + cached * price.cached_input
        + cache_write * price.cache_write
        + plain_output * price.output
        + reasoning * price.reasoning
    )
    total = money(total)
    if usage.estimated:
        return Cost(
            total=total, basis="estimated", reason="upstream reported no usage; tokens counted", price_id=price.id
        )
    reason = "" if total > 0 else "the price of this model is zero"
    return Cost(total=total, basis="priced", reason=reason, price_id=price.id)


def cost_compute(*, organisation_id: int, model: str, deployment_id: int | None, usage: Usage, at: datetime) -> Cost:
    """Price one attempt's usage at the prices in force at `at`. Sync: do not call from an event
    loop (the price table may need a database read); use `acost_compute` there."""
    price = price_resolve(organisation_id=organisation_id, model=model, deployment_id=deployment_id, at=at)
    return cost_from_price(price=price, model=model, usage=usage)


async def acost_compute(
    *, organisation_id: int, model: str, deployment_id: int | None, usage: Usage, at: datetime
) -> Cost:
    price = await aprice_resolve(organisation_id=organisation_id, model=model, deployment_id=deployment_id, at=at)
    return cost_from_price(price=price, model=model, usage=usage)


def worst_case_cost(
    *, price: PriceInfo | None, input_text_bytes: int, max_output_tokens: int | None, choices: int = 1
) -> Decimal:
    """Upper bound of a request's cost: every input byte a token (no tokenizer emits more tokens
    than bytes) at the dearer of input and cache-write rates, and all output of every choice (`n`,
    or a completion's `best_of` candidates, all of which the provider bills) at the dearer of output
    and reasoning rates. `input_text_bytes` is the size of the body as sent upstream (after prompt
    rendering), not the client's. Zero without a price: callers that enforce a limit must refuse
    (`PriceUnknown`) rather than treat an unknown cost as zero."""
    if price is None:  # zero: the caller decides (see abudget_reserve_plan)
        return ZERO
    out = max_output_tokens if max_output_tokens is not None else price.max_output_tokens
    if out is None:
        out = hot.STEWARD_BILLING_DEFAULT_MAX_OUTPUT_TOKENS
    input_tokens = max(input_text_bytes, 0) + INPUT_OVERHEAD_TOKENS
    total = (
        price.request_fee
        + input_tokens * max(price.input, price.cache_write)
        + max(out, 0) * max(choices, 1) * max(price.output, price.reasoning)
    )
    return money(total)


def prices_seed(*, price_model=None, now: datetime | None = None, litellm: bool = True) -> int:
    """Insert the global price table from litellm's bundled cost map, plus demo prices for the
    development models. Idempotent: models already in the global table are left alone (a changed
    price is a new effective-dated row, made with `price_set`). Returns how many rows were added.
    `price_model` lets a data migration pass its historical model; `litellm=False` adds only the
    development models' rows (a few, where the whole map is thousands)."""
    from core.llm import model_cost_map

    Price = price_model or m.Price
    known = set(
        Price.objects.filter(organisation__isnull=True, deployment_id__isnull=True).values_list("model", flat=True)
    )
    rows = []
    for name, info in (model_cost_map() if litellm else {}).items():
        if name in known or name == "sample_spec" or len(name) > 200:
            continue
        input_price = decimal_from_price(info.get("input_cost_per_token"))
        output_price = decimal_from_price(info.get("output_cost_per_token"))
        if input_price is None and output_price is None:
            continue
        max_out = info.get("max_output_tokens") or info.get("max_tokens")
        rows.append(
            Price(
                organisation=None,
                model=name,
                deployment_id=None,
                effective_from=EPOCH,
                input_per_token=input_price or ZERO,
                output_per_token=output_price or ZERO,
                cached_input_per_token=decimal_from_price(info.get("cache_read_input_token_cost")),
                cache_write_per_token=decimal_from_price(info.get("cache_creation_input_token_cost")),
                reasoning_per_token=decimal_from_price(info.get("output_cost_per_reasoning_token")),
                request_fee=ZERO,
                max_output_tokens=int(max_out) if isinstance(max_out, int | float) and max_out > 0 else None,
                source=m.PriceSource.LITELLM,
                created_by="litellm",
            )
        )
    for name, p in DEV_MODEL_PRICES.items():
        if name in known:
            continue
        rows.append(
            Price(
                organisation=None,
                model=name,
                deployment_id=None,
                effective_from=EPOCH,
                input_per_token=Decimal(p["input"]) / PER_MILLION,
                output_per_token=Decimal(p["output"]) / PER_MILLION,
                cached_input_per_token=Decimal(p["cached"]) / PER_MILLION if p["cached"] else None,
                request_fee=ZERO,
                max_output_tokens=p["max_output"],
                source=m.PriceSource.DEMO,
                created_by="seed",
            )
        )
    Price.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    if price_model is None:
        _caches_invalidate(PRICES_NAMESPACE)
    return len(rows)


def _price_public(price: m.Price) -> dict:
    return {
        "model": price.model,
        "deployment_id": price.deployment_id,
        "effective_from": price.effective_from.isoformat(),
        "input_per_token": str(price.input_per_token),
        "output_per_token": str(price.output_per_token),
        "cached_input_per_token": None if price.cached_input_per_token is None else str(price.cached_input_per_token),
        "cache_write_per_token": None if price.cache_write_per_token is None else str(price.cache_write_per_token),
        "reasoning_per_token": None if price.reasoning_per_token is None else str(price.reasoning_per_token),
        "request_fee": str(price.request_fee),
        "free": price.free,
    }


def _non_negative(name: str, value: Decimal | None) -> None:
    if value is not None and value < 0:
        raise ValidationFailed(f"{name} must not be negative", param=name)


@transaction.atomic
def price_set(
    *,
    organisation,
    model: str,
    actor: Actor,
    input_per_token: Decimal,
    output_per_token: Decimal,
    deployment_id: int | None = None,
    effective_from: datetime | None = None,
    cached_input_per_token: Decimal | None = None,
    cache_write_per_token: Decimal | None = None,
    reasoning_per_token: Decimal | None = None,
    request_fee: Decimal = ZERO,
    max_output_tokens: int | None = None,
    free: bool = False,
) -> m.Price:
    """Add an organisation's price for a model (or one deployment) from `effective_from` (default:
    now) on. Past costs keep the price they were computed with. Audited (price.changed).

    `free=True` declares the model free on purpose (every rate must be zero, and is recorded so):
    the only way to serve a model at no cost under a hard budget or to enable a deployment of a
    model that has no price, since an unknown price never counts as zero."""
    model = (model or "").strip()
    if not model or len(model) > 200:
        raise ValidationFailed("model is required (at most 200 characters)", param="model")
    if free:
        for name, value in [
            ("input_per_token", input_per_token),
            ("output_per_token", output_per_token),
            ("cached_input_per_token", cached_input_per_token),
            ("cache_write_per_token", cache_write_per_token),
            ("reasoning_per_token", reasoning_per_token),
            ("request_fee", request_fee),
        ]:
            if value:
                raise ValidationFailed(f"a free model cannot have a {name} above zero", param=name)
    for name, value in [
        ("input_per_token", input_per_token),
        ("output_per_token", output_per_token),
        ("cached_input_per_token", cached_input_per_token),
        ("cache_write_per_token", cache_write_per_token),
        ("reasoning_per_token", reasoning_per_token),
        ("request_fee", request_fee),
    ]:
        if isinstance(value, float):
            raise ValidationFailed(f"{name} must be a decimal, not a float", param=name)
        _non_negative(name, value)
    now = timezone.now()
    effective_from = effective_from or now
    if effective_from < now - dt.timedelta(minutes=1):
        raise ValidationFailed(
            "a price cannot start in the past: costs already recorded are never rewritten", param="effective_from"
        )
    before = (
        m.Price.objects.filter(
            organisation=organisation, model=model, deployment_id=deployment_id, effective_from__lte=effective_from
        )
        .order_by("-effective_from")
        .first()
    )
    try:
        with transaction.atomic():
            price = m.Price.objects.create(
                organisation=organisation,
                model=model,
                deployment_id=deployment_id,
                effective_from=effective_from,
                input_per_token=input_per_token,
                output_per_token=output_per_token,
                cached_input_per_token=cached_input_per_token,
                cache_write_per_token=cache_write_per_token,
                reasoning_per_token=reasoning_per_token,
                request_fee=request_fee or ZERO,
                max_output_tokens=max_output_tokens,
                source=m.PriceSource.MANUAL,
                free=bool(free),
                created_by=actor.label[:200],
            )
    except IntegrityError as exc:
        raise ValidationFailed("a price for this model already starts at that moment", param="effective_from") from exc
    price.refresh_from_db()
    audit_event_record(
        organisation_id=organisation.pk,
        actor=actor,
        action=Action.PRICE_CHANGED,
        target_type="price",
        target_id=price.pk,
        before=_price_public(before) if before else None,
        after=_price_public(price),
    )
    _caches_invalidate(PRICES_NAMESPACE)
    return price


# --- budgets: configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRule:
    id: int
    name: str
    scope: str
    team_id: int | None
    api_key_id: int | None
    prompt_id: int | None
    amount: Decimal
    period: str
    hard_limit: bool
    soft_threshold_percent: int | None

    def applies(self, scope: BudgetScope) -> bool:
        if self.scope == m.BudgetScope.ORGANISATION:
            return True
        if self.scope == m.BudgetScope.TEAM:
            return scope.team_id is not None and self.team_id == scope.team_id
        if self.scope == m.BudgetScope.API_KEY:
            return scope.api_key_id is not None and self.api_key_id == scope.api_key_id
        if self.scope == m.BudgetScope.PROMPT:
            return scope.prompt_id is not None and self.prompt_id == scope.prompt_id
        return False


@dataclass(frozen=True)
class BillingConfig:
    """What the hot path needs to know about an organisation, cached in-process."""

    organisation_id: int
    time_zone: str
    fail_open: bool
    rules: tuple[BudgetRule, ...]
    ceilings: dict[int, Decimal]
    # (api key, team, prompt) -> the hard budgets that apply and their current periods; it lives and
    # dies with this config, so a changed budget (a new config) never meets a stale entry.
    windows: dict = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def idle(self) -> bool:
        return not self.ceilings and not any(r.hard_limit for r in self.rules)


@dataclass(frozen=True)
class BudgetWindow:
    """One hard budget in its current period, with what its Redis counters need."""

    rule: BudgetRule
    rule_key: str  # the rule's id as the reservation's maps key it
    start: datetime
    end: datetime | None
    prefix: str
    keys: tuple[str, ...]
    limit_nano: int
    expire_at_ms: int


WINDOWS_PER_CONFIG = 10_000
MAX_DATETIME = dt.datetime.max.replace(tzinfo=dt.UTC)


def budget_windows(config: BillingConfig, scope: BudgetScope, now: datetime) -> tuple[BudgetWindow, ...]:
    """The hard budgets that apply to `scope` at `now`. Every priced request asks and the answer
    only changes when one of the periods ends, so it is kept on the config until then."""
    memo_key = (scope.api_key_id, scope.team_id, scope.prompt_id)
    memo = config.windows.get(memo_key)
    if memo is not None and memo[0] <= now < memo[1]:
        return memo[2]
    windows = []
    valid_from, valid_until = EPOCH, MAX_DATETIME
    for rule in config.rules:
        if rule.hard_limit and rule.applies(scope):
            start, end = period_bounds(rule.period, at=now, time_zone=config.time_zone)
            prefix = _budget_key_prefix(rule, start)
            windows.append(
                BudgetWindow(
                    rule=rule,
                    rule_key=str(rule.id),
                    start=start,
                    end=end,
                    prefix=prefix,
                    keys=tuple(_period_keys(prefix)),
                    limit_nano=nano_ceil(rule.amount) if rule.amount > 0 else 0,
                    expire_at_ms=_keys_expire_at_ms(end),
                )
            )
            valid_from = max(valid_from, start)
            if end is not None:
                valid_until = min(valid_until, end)
    result = tuple(windows)
    if len(config.windows) >= WINDOWS_PER_CONFIG:
        config.windows.clear()
    config.windows[memo_key] = (valid_from, valid_until, result)
    return result


def billing_config_load(organisation_id: int) -> BillingConfig:
    from accounts.models import Organisation

    org = Organisation.objects.filter(pk=organisation_id).only("time_zone").first()
    billing = m.BillingSettings.objects.filter(organisation_id=organisation_id).first()
    rules = tuple(
        BudgetRule(
            id=b.pk,
            name=b.name,
            scope=b.scope,
            team_id=b.team_id,
            api_key_id=b.api_key_id,
            prompt_id=b.prompt_id,
            amount=b.amount,
            period=b.period,
            hard_limit=b.hard_limit,
            soft_threshold_percent=b.soft_threshold_percent,
        )
        for b in m.Budget.objects.filter(organisation_id=organisation_id).order_by("id")
    )
    ceilings = dict(
        m.KeyCostCeiling.objects.filter(api_key__organisation_id=organisation_id).values_list(
            "api_key_id", "max_request_cost"
        )
    )
    return BillingConfig(
        organisation_id=organisation_id,
        time_zone=(org.time_zone if org else "UTC") or "UTC",
        fail_open=bool(billing and billing.fail_open),
        rules=rules,
        ceilings=ceilings,
    )


def billing_config_get(organisation_id: int) -> BillingConfig:
    config = _config_cache.get(organisation_id)
    if config is None:
        epoch = _config_cache.epoch()
        config = billing_config_load(organisation_id)
        _config_cache.set(organisation_id, config, epoch=epoch)
    return config


async def abilling_config_get(organisation_id: int) -> BillingConfig:
    config = _config_cache.get(organisation_id)
    if config is None:
        epoch = _config_cache.epoch()
        config = await _adb_read(billing_config_load, organisation_id)
        _config_cache.set(organisation_id, config, epoch=epoch)
    return config


def _budget_public(budget: m.Budget) -> dict:
    return {
        "name": budget.name,
        "scope": budget.scope,
        "team_id": budget.team_id,
        "api_key_id": budget.api_key_id,
        "prompt_id": budget.prompt_id,
        "amount": str(budget.amount),
        "period": budget.period,
        "soft_threshold_percent": budget.soft_threshold_percent,
        "hard_limit": budget.hard_limit,
    }


def _budget_validate(*, organisation, budget: m.Budget) -> None:
    from accounts.models import ApiKey, Team

    budget.name = (budget.name or "").strip()
    if not budget.name or len(budget.name) > 200:
        raise ValidationFailed("name is required (at most 200 characters)", param="name")
    if budget.scope not in m.BudgetScope.values:
        raise ValidationFailed(f"scope must be one of {', '.join(m.BudgetScope.values)}", param="scope")
    if budget.period not in m.BudgetPeriod.values:
        raise ValidationFailed(f"period must be one of {', '.join(m.BudgetPeriod.values)}", param="period")
    if isinstance(budget.amount, float) or budget.amount is None:
        raise ValidationFailed("amount must be a decimal", param="amount")
    budget.amount = Decimal(budget.amount)
    if budget.amount < 0 or budget.amount > MAX_BUDGET_AMOUNT:
        raise ValidationFailed(f"amount must be between 0 and {MAX_BUDGET_AMOUNT}", param="amount")
    if budget.amount != money(budget.amount):
        raise ValidationFailed("amount has more than 12 decimal places", param="amount")
    pct = budget.soft_threshold_percent
    if pct is not None and not 1 <= pct <= 100:
        raise ValidationFailed("soft_threshold_percent must be between 1 and 100", param="soft_threshold_percent")
    needs = {
        m.BudgetScope.TEAM: "team",
        m.BudgetScope.API_KEY: "api_key",
        m.BudgetScope.PROMPT: "prompt_id",
    }.get(budget.scope)
    if budget.scope != m.BudgetScope.TEAM:
        budget.team = None
    if budget.scope != m.BudgetScope.API_KEY:
        budget.api_key = None
    if budget.scope != m.BudgetScope.PROMPT:
        budget.prompt_id = None
    if needs == "team" and (
        budget.team_id is None or not Team.objects.filter(pk=budget.team_id, organisation=organisation).exists()
    ):
        raise ValidationFailed("a team budget needs a team of this organisation", param="team_id")
    if needs == "api_key" and (
        budget.api_key_id is None or not ApiKey.objects.filter(pk=budget.api_key_id, organisation=organisation).exists()
    ):
        raise ValidationFailed("an API key budget needs a key of this organisation", param="api_key_id")
    if needs == "prompt_id" and not budget.prompt_id:
        raise ValidationFailed("a prompt budget needs prompt_id", param="prompt_id")


@transaction.atomic
def budget_create(
    *,
    organisation,
    actor: Actor,
    name: str,
    scope: str,
    amount: Decimal,
    period: str = m.BudgetPeriod.MONTH,
    team_id: int | None = None,
    api_key_id: int | None = None,
    prompt_id: int | None = None,
    soft_threshold_percent: int | None = None,
    hard_limit: bool = True,
) -> m.Budget:
    """Create a budget; it applies to the next request in every process (config cache invalidated). Audited."""
    budget = m.Budget(
        organisation=organisation,
        name=name,
        scope=scope,
        amount=amount,
        period=period,
        team_id=team_id,
        api_key_id=api_key_id,
        prompt_id=prompt_id,
        soft_threshold_percent=soft_threshold_percent,
        hard_limit=hard_limit,
    )
    _budget_validate(organisation=organisation, budget=budget)
    if m.Budget.objects.filter(organisation=organisation, name=budget.name).exists():
        raise ValidationFailed("a budget with this name exists", param="name")
    budget.save()
    audit_event_record(
        organisation_id=organisation.pk,
        actor=actor,
        action=Action.BUDGET_CREATED,
        target_type="budget",
        target_id=budget.pk,
        after=_budget_public(budget),
    )
    _caches_invalidate(CONFIG_NAMESPACE)
    return budget


@transaction.atomic
def budget_update(*, budget: m.Budget, actor: Actor, **changes) -> m.Budget:
    """Change a budget's name, amount, period, threshold or hard flag (its scope stays). Audited."""
    budget = m.Budget.objects.select_for_update().get(pk=budget.pk)
    before = _budget_public(budget)
    allowed = {"name", "amount", "period", "soft_threshold_percent", "hard_limit"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed(f"cannot change {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    for key, value in changes.items():
        setattr(budget, key, value)
    _budget_validate(organisation=budget.organisation, budget=budget)
    if m.Budget.objects.filter(organisation=budget.organisation, name=budget.name).exclude(pk=budget.pk).exists():
        raise ValidationFailed("a budget with this name exists", param="name")
    budget.save()
    audit_event_record(
        organisation_id=budget.organisation_id,
        actor=actor,
        action=Action.BUDGET_UPDATED,
        target_type="budget",
        target_id=budget.pk,
        before=before,
        after=_budget_public(budget),
    )
    _caches_invalidate(CONFIG_NAMESPACE)
    return budget


@transaction.atomic
def budget_delete(*, budget: m.Budget, actor: Actor) -> None:
    before = _budget_public(budget)
    organisation_id, budget_id = budget.organisation_id, budget.pk
    budget.delete()
    audit_event_record(
        organisation_id=organisation_id,
        actor=actor,
        action=Action.BUDGET_DELETED,
        target_type="budget",
        target_id=budget_id,
        before=before,
    )
    _caches_invalidate(CONFIG_NAMESPACE)


@transaction.atomic
def billing_settings_update(
    *,
    organisation,
    actor: Actor,
    fail_open: bool | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> m.BillingSettings:
    """Change the fail mode (audited as budget.fail_mode_changed) and/or the threshold webhook
    (audited as webhook.configured; the secret itself is never written to the audit log)."""
    from django.core.exceptions import ValidationError
    from django.core.validators import URLValidator

    from core import egress

    current, _ = m.BillingSettings.objects.select_for_update().get_or_create(organisation=organisation)
    if fail_open is not None and fail_open != current.fail_open:
        audit_event_record(
            organisation_id=organisation.pk,
            actor=actor,
            action=Action.BUDGET_FAIL_MODE_CHANGED,
            target_type="organisation",
            target_id=organisation.pk,
            before={"fail_open": current.fail_open},
            after={"fail_open": fail_open},
        )
        current.fail_open = fail_open
    if webhook_url is not None or webhook_secret is not None:
        url = current.webhook_url if webhook_url is None else webhook_url.strip()
        if url:
            try:
                URLValidator(schemes=["http", "https"])(url)
            except ValidationError as exc:
                raise ValidationFailed("webhook_url must be an http(s) URL", param="webhook_url") from exc
            if refusal := egress.url_refusal(url):
                # Host names are checked when the webhook is sent, on the address it resolves to.
                raise ValidationFailed(
                    f"webhook_url is not allowed by the egress policy: {refusal}", param="webhook_url"
                )
        # A stored secret that no longer decrypts (the encryption key changed) counts as unset, so a
        # URL alone cannot be saved over it: the admin is asked for the secret again.
        stored = (secret_decrypt(current.webhook_secret_encrypted) or "") if current.webhook_secret_encrypted else ""
        secret = stored if webhook_secret is None else webhook_secret
        if url and len(secret) < 16:
            raise ValidationFailed("webhook_secret must have at least 16 characters", param="webhook_secret")
    if (webhook_url is not None or webhook_secret is not None) and (url, secret) != (current.webhook_url, stored):
        audit_event_record(
            organisation_id=organisation.pk,
            actor=actor,
            action=Action.WEBHOOK_CONFIGURED,
            target_type="organisation",
            target_id=organisation.pk,
            before={"webhook_url": current.webhook_url, "secret_set": bool(current.webhook_secret_encrypted)},
            after={"webhook_url": url, "secret_set": bool(secret), "secret_changed": secret != stored},
        )
        current.webhook_url = url
        current.webhook_secret_encrypted = secret_encrypt(secret) if secret else ""
    current.save()
    _caches_invalidate(CONFIG_NAMESPACE)
    return current


def webhook_secrets_rotate() -> RotationReport:
    """Re-encrypt every organisation's webhook signing secret under the newest encryption key
    (`manage.py secrets_rotate`). Idempotent and safe while the app runs (core.crypto.secrets_reencrypt);
    the secrets themselves do not change, so nothing is audited and no cache holds them."""
    return secrets_reencrypt(
        queryset=m.BillingSettings.objects.all(),
        field_name="webhook_secret_encrypted",
        label="webhook signing secrets",
        describe=lambda row: f"organisation {row['organisation_id']}",
        describe_fields=("organisation_id",),
    )


@transaction.atomic
def key_cost_ceiling_set(*, api_key, actor: Actor, max_request_cost: Decimal | None) -> None:
    """Set (or clear with None) the most one request of this key may cost in the worst case. Audited."""
    before = m.KeyCostCeiling.objects.filter(api_key=api_key).first()
    if max_request_cost is not None:
        if isinstance(max_request_cost, float) or max_request_cost < 0:
            raise ValidationFailed("max_request_cost must be a non-negative decimal", param="max_request_cost")
        m.KeyCostCeiling.objects.update_or_create(api_key=api_key, defaults={"max_request_cost": max_request_cost})
    elif before:
        before.delete()
    audit_event_record(
        organisation_id=api_key.organisation_id,
        actor=actor,
        action=Action.API_KEY_UPDATED,
        target_type="api_key",
        target_id=api_key.pk,
        before={"max_request_cost": str(before.max_request_cost) if before else None},
        after={"max_request_cost": str(max_request_cost) if max_request_cost is not None else None},
    )
    _caches_invalidate(CONFIG_NAMESPACE)


# --- budgets: enforcement in Redis ------------------------------------------------------------

_LUA_DIR = Path(__file__).resolve().parent / "lua"


@functools.cache
def _lua(name: str) -> str:
    return (_LUA_DIR / f"{name}.lua").read_text()


RESERVE = Script(_lua("reserve"))
SETTLE = Script(_lua("settle"))
EXTEND = Script(_lua("extend"))


def _budget_key_prefix(rule: BudgetRule, period_start: datetime) -> str:
    return f"billing:bp:{rule.id}:{int(period_start.timestamp())}"


def _period_keys(prefix: str) -> list[str]:
    return [f"{prefix}:spent", f"{prefix}:rsv", f"{prefix}:res", f"{prefix}:exp"]


def _keys_expire_at_ms(period_end: datetime | None) -> int:
    if period_end is None:
        return 0
    # Counters outlive their period a little so the usage page can still read them at the turn.
    return int((period_end + dt.timedelta(days=2)).timestamp() * 1000)


def budget_spent_from_ledger(
    *, rule: BudgetRule, organisation_id: int, start: datetime, end: datetime | None
) -> Decimal:
    lines = m.UsageLine.objects.filter(organisation_id=organisation_id, started_at__gte=start)
    if end is not None:
        lines = lines.filter(started_at__lt=end)
    if rule.scope == m.BudgetScope.TEAM:
        lines = lines.filter(team_id=rule.team_id)
    elif rule.scope == m.BudgetScope.API_KEY:
        lines = lines.filter(api_key_id=rule.api_key_id)
    elif rule.scope == m.BudgetScope.PROMPT:
        lines = lines.filter(prompt_id=rule.prompt_id)
    return lines.aggregate(total=Sum("cost"))["total"] or ZERO


def _spent_rebuild(config: BillingConfig, windows: list[BudgetWindow]) -> None:
    """Redis lost a spent counter: set it from the ledger (only if still missing)."""
    client = redis_client()
    for window in windows:
        spent = budget_spent_from_ledger(
            rule=window.rule, organisation_id=config.organisation_id, start=window.start, end=window.end
        )
        if window.expire_at_ms:
            client.set(f"{window.prefix}:spent", nano_ceil(spent), nx=True, pxat=window.expire_at_ms)
        else:
            client.set(f"{window.prefix}:spent", nano_ceil(spent), nx=True)
        logger.warning("billing: rebuilt spent counter of budget %s from the ledger", window.rule.id)


def _retry_after(resets_at: datetime | None, now: datetime) -> float:
    if resets_at is None:
        return 3600
    return max(1.0, min((resets_at - now).total_seconds(), 86400))


@dataclass
class ReservePlan:
    """A reservation worked out but not yet made: `call` is the one Redis script that makes it (None
    when no hard budget applies). The proxy sends it together with its admission check, in one round
    trip, then hands the answer to `abudget_reserve_complete`."""

    reservation: Reservation
    call: ScriptCall | None = None
    config: BillingConfig | None = None
    windows: tuple[BudgetWindow, ...] = ()
    now: datetime | None = None


async def abudget_reserve_plan(
    *,
    request_id: str,
    scope: BudgetScope,
    model: str,
    deployment_id: int | None,
    input_text_bytes: int,
    max_output_tokens: int | None,
    alternatives: tuple[tuple[str, int | None], ...] = (),
    choices: int = 1,
) -> ReservePlan:
    """Price the request's worst case and name the budgets it must be reserved against (see
    `abudget_reserve`). No Redis access; raises `CostCeilingExceeded` at once when the worst case is
    above the key's per-request ceiling, and `PriceUnknown` when a hard budget or a ceiling applies
    but one of the models has no price (its cost could not be bounded, so it is never taken as 0).

    `input_text_bytes` is the size of the request as sent upstream; `choices` how many completions
    the provider generates and bills (`n`, or `best_of` for a text completion)."""
    rid = request_id or uuid.uuid4().hex
    config = await abilling_config_get(scope.organisation_id)
    reservation = Reservation(id=rid, scope=scope)
    if config.idle:
        return ReservePlan(reservation)
    now = timezone.now()
    worst = ZERO
    unpriced = None
    for candidate_model, candidate_deployment in ((model, deployment_id), *alternatives):
        price = await aprice_resolve(
            organisation_id=scope.organisation_id, model=candidate_model, deployment_id=candidate_deployment, at=now
        )
        if price is None:
            unpriced = unpriced or candidate_model
            continue
        worst = max(
            worst,
            worst_case_cost(
                price=price, input_text_bytes=input_text_bytes, max_output_tokens=max_output_tokens, choices=choices
            ),
        )
    reservation.worst_case = worst
    ceiling = config.ceilings.get(scope.api_key_id) if scope.api_key_id is not None else None
    if unpriced is not None and (ceiling is not None or budget_windows(config, scope, now)):
        raise PriceUnknown(unpriced)
    if ceiling is not None and worst > ceiling:
        raise CostCeilingExceeded(
            f"This request could cost up to {worst} USD, above this key's limit of {ceiling} USD per request; "
            "lower max_tokens or shorten the input.",
            budget_name="per-request ceiling",
            resets_at=None,
            retry_after=None,  # retrying the same request cannot help
        )
    windows = budget_windows(config, scope, now)
    if not windows:
        return ReservePlan(reservation)
    amount_nano = nano_ceil(worst)
    amount = nano_to_decimal(amount_nano)
    now_ms = int(now.timestamp() * 1000)
    ttl_ms = int(hot.STEWARD_BILLING_RESERVATION_TTL_SECONDS * 1000)
    keys: list[str] = []
    args: list = [now_ms, now_ms + ttl_ms, rid, len(windows)]
    for window in windows:
        keys.extend(window.keys)
        args.extend((window.limit_nano, amount_nano, window.expire_at_ms))
        reservation.amounts[window.rule_key] = amount
        reservation.keys[window.rule_key] = window.prefix
        reservation.windows[window.rule_key] = window
    return ReservePlan(reservation, RESERVE.call(keys, args), config, windows, now)


async def abudget_reserve_complete(plan: ReservePlan, result) -> Reservation:
    """Read the answer to `plan.call` (or the exception met sending it) and return the reservation,
    or raise `BudgetExceeded` / `BudgetUnavailable` as `abudget_reserve` does."""
    reservation, config, windows = plan.reservation, plan.config, plan.windows
    if plan.call is None:
        return reservation
    try:
        if isinstance(result, Exception):
            raise result
        if int(result[0]) == -1:
            missing = [windows[int(i) - 1] for i in result[1:]]
            await _adb_read(_spent_rebuild, config, missing)
            [result] = await abatch([plan.call])
            if isinstance(result, Exception):
                raise result
    except Exception as exc:
        if _is_redis_error(exc):
            reservation.amounts.clear()
            reservation.keys.clear()
            if config.fail_open:
                logger.warning("billing: Redis unreachable, organisation %s fails open", config.organisation_id)
                reservation.failed_open = True
                return reservation
            raise BudgetUnavailable(
                "Budgets cannot be checked right now (the budget store is unreachable); the request was not sent.",
                extra={"retry_after": 5},
            ) from exc
        raise
    status = int(result[0])
    if status in (1, 2):
        return reservation
    reservation.amounts.clear()
    reservation.keys.clear()
    if status == 0:
        window = windows[int(result[1]) - 1]
        rule, end = window.rule, window.end
        raise BudgetExceeded(
            f"Budget '{rule.name}' would be exceeded by this request (worst case {reservation.worst_case} USD).",
            budget_name=rule.name,
            resets_at=end,
            retry_after=_retry_after(end, plan.now),
        )
    raise BudgetUnavailable("Budget check gave an unexpected answer; the request was not sent.")


async def abudget_reserve(**kwargs) -> Reservation:
    """Reserve the worst-case cost of the request against every hard budget that applies, atomically
    (one Lua script for all of them). Cheap when the organisation has no budget: the configuration
    comes from the in-process cache and Redis is not touched.

    Arguments as `abudget_reserve_plan`. `alternatives` lists other (model, deployment_id) pairs the
    request may fall back to; the worst case is taken over all of them, so a fallback to a dearer
    model stays covered.

    Idempotent per `request_id` while the reservation is held. The reservation expires after
    STEWARD_BILLING_RESERVATION_TTL_SECONDS if its process dies before settling or releasing.
    """
    return await abudget_reserve_send(await abudget_reserve_plan(**kwargs))


async def abudget_reserve_send(plan: ReservePlan) -> Reservation:
    """Make a planned reservation on a round trip of its own (see `abudget_reserve_complete`)."""
    if plan.call is None:
        return plan.reservation
    try:
        [result] = await abatch([plan.call])
    except Exception as exc:
        result = exc
    return await abudget_reserve_complete(plan, result)


async def abudget_extend(*, reservation: Reservation) -> None:
    """Hold the request's worst case once more, on top of what its reservation holds: before a
    retry that follows an attempt the provider may have billed (it timed out after reading the
    request), so every attempt's cost stays within what was reserved. All or nothing across the
    budgets; raises `BudgetExceeded` when one cannot cover it (the retry is not made) and
    `BudgetUnavailable` when Redis cannot be reached (unless the organisation fails open).
    Nothing to do for a request no hard budget covers. The settle stage gives back the unused rest."""
    if reservation.empty or not reservation.windows:
        return
    extra = nano_ceil(reservation.worst_case)
    if extra <= 0:
        return
    now = timezone.now()
    expiry_ms = int(now.timestamp() * 1000) + int(hot.STEWARD_BILLING_RESERVATION_TTL_SECONDS * 1000)
    keys: list[str] = []
    args: list = [reservation.id, expiry_ms, len(reservation.keys)]
    rule_keys = list(reservation.keys)
    for rule_key in rule_keys:
        keys.extend(_period_keys(reservation.keys[rule_key]))
        args.extend((reservation.windows[rule_key].limit_nano, extra))
    try:
        [result] = await abatch([EXTEND.call(keys, args)])
        if isinstance(result, Exception):
            raise result
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        config = await abilling_config_get(reservation.scope.organisation_id)
        if config.fail_open:
            logger.warning("billing: Redis unreachable, organisation %s fails open", config.organisation_id)
            return
        raise BudgetUnavailable(
            "Budgets cannot be checked right now (the budget store is unreachable); the request was not retried.",
            extra={"retry_after": 5},
        ) from exc
    status = int(result[0])
    if status == 1:
        for rule_key in rule_keys:
            reservation.amounts[rule_key] = nano_to_decimal(nano_ceil(reservation.amounts[rule_key]) + extra)
        return
    window = reservation.windows[rule_keys[int(result[1]) - 1]]
    if status == 0:
        raise BudgetExceeded(
            f"Budget '{window.rule.name}' cannot cover a retry of this request (worst case "
            f"{reservation.worst_case} USD more, after an attempt that timed out).",
            budget_name=window.rule.name,
            resets_at=window.end,
            retry_after=_retry_after(window.end, now),
        )
    raise BudgetUnavailable("The budget reservation of this request lapsed; it was not retried.")


def _is_redis_error(exc: BaseException) -> bool:
    import redis

    # Only "cannot reach Redis" decides fail-open/closed; a script error is a bug and must surface.
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError | ConnectionError | OSError | TimeoutError)


def budget_finish_call(*, reservation: Reservation, actual_cost: Decimal | None) -> ScriptCall | None:
    """The script that settles a reservation at `actual_cost`, or releases it all when None; None when
    there is nothing to give back. Send it with `abatch` (or through `abudget_settle`/`abudget_release`)
    and pass the answer to `budget_finish_complete`."""
    if reservation.empty:
        return None
    if isinstance(actual_cost, float):
        raise TypeError("actual_cost must be a Decimal")
    actual_nano = 0 if actual_cost is None else nano_ceil(max(actual_cost, ZERO))
    keys = [f"billing:done:{reservation.id}"]
    for prefix in reservation.keys.values():
        keys.extend(_period_keys(prefix))
    done_ttl_ms = int(hot.STEWARD_BILLING_RESERVATION_TTL_SECONDS * 1000) * 2
    args = [reservation.id, actual_nano, done_ttl_ms, len(reservation.keys)]
    # The amounts as the reserve script stored them (`amounts` and `keys` were filled together).
    args.extend(nano_ceil(amount) for amount in reservation.amounts.values())
    return SETTLE.call(keys, args)


def budget_finish_complete(*, reservation: Reservation, result) -> list[int]:
    """Read the settle script's answer: the budgets' spent counters (nano-dollars; -1 where missing)."""
    if isinstance(result, Exception):
        if _is_redis_error(result):
            # The call already happened: its cost reaches the ledger anyway and the reservation expires.
            logger.error("billing: could not settle reservation %s: %s", reservation.id, result)
            return []
        raise result
    return [int(x) for x in result[1:]]


async def _afinish(reservation: Reservation, actual_cost: Decimal | None) -> list[int]:
    call = budget_finish_call(reservation=reservation, actual_cost=actual_cost)
    if call is None:
        return []
    try:
        [result] = await abatch([call])
    except Exception as exc:
        result = exc
    return budget_finish_complete(reservation=reservation, result=result)


async def abudget_settle(*, reservation: Reservation, actual_cost: Decimal) -> None:
    """Replace the reservation with the actual cost; the unused remainder becomes available again.
    Idempotent: a second settle (or a settle after a release) changes nothing."""
    if isinstance(actual_cost, float):
        raise TypeError("actual_cost must be a Decimal")
    await _afinish(reservation, actual_cost)


async def abudget_release(*, reservation: Reservation) -> None:
    """Give the whole reservation back (failure, cancellation with nothing produced, rejection)."""
    await _afinish(reservation, None)


def reservations_sweep() -> int:
    """Drop expired reservations (of processes that died) from every budget period in Redis.
    Idempotent; reserve also drops them lazily, this keeps the usage page's numbers true."""
    client = redis_client()
    script = client.register_script(_lua("sweep"))
    now_ms = int(time.time() * 1000)
    dropped = 0
    for key in client.scan_iter(match="billing:bp:*:exp", count=500):
        prefix = key.decode().rsplit(":", 1)[0]
        dropped += int(script(keys=[f"{prefix}:rsv", f"{prefix}:res", f"{prefix}:exp"], args=[now_ms]))
    return dropped


def budget_counters_read(*, rule: BudgetRule, period_start: datetime) -> tuple[Decimal | None, Decimal]:
    """(settled spend or None if Redis has no counter, held reservations) for one budget period."""
    prefix = _budget_key_prefix(rule, period_start)
    spent, reserved = redis_client().mget(f"{prefix}:spent", f"{prefix}:rsv")
    return (
        nano_to_decimal(int(spent)) if spent is not None else None,
        nano_to_decimal(int(reserved)) if reserved is not None else ZERO,
    )


# --- ledger -----------------------------------------------------------------------------------


def _usage_from(data: dict | None) -> Usage | None:
    if not data:
        return None

    def count(name: str) -> int:
        value = data.get(name) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValidationFailed(f"usage.{name} must be a non-negative integer", param=name)
        return value

    return Usage(
        prompt_tokens=count("prompt_tokens"),
        completion_tokens=count("completion_tokens"),
        cached_tokens=count("cached_tokens"),
        cache_write_tokens=count("cache_write_tokens"),
        reasoning_tokens=count("reasoning_tokens"),
        estimated=bool(data.get("estimated", False)),
    )


def _int_or_none(value) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _lines_for_record(record: dict) -> list[m.UsageLine]:
    request_id = str(record["request_id"])[:64]
    organisation_id = int(record["organisation_id"])
    started_at = record.get("started_at")
    if isinstance(started_at, str):
        started_at = parse_datetime(started_at)
    if started_at is None:
        raise ValidationFailed("record.started_at is required", param="started_at")
    if timezone.is_naive(started_at):
        started_at = timezone.make_aware(started_at, dt.UTC)
    common = {
        "request_id": request_id,
        "organisation_id": organisation_id,
        "api_key_id": _int_or_none(record.get("api_key_id")),
        "team_id": _int_or_none(record.get("team_id")),
        "prompt_id": _int_or_none(record.get("prompt_id")),
        "prompt_version_id": _int_or_none(record.get("prompt_version_id")),
        "prompt_name": str(record.get("prompt_name") or "")[:100],
        "prompt_version_number": _int_or_none(record.get("prompt_version_number")),
        "started_at": started_at,
    }
    record_usage = _usage_from(record.get("usage")) or Usage()
    if record.get("cache_hit"):
        return [
            m.UsageLine(
                **common,
                attempt=0,
                deployment_id=None,
                model=str(record.get("model") or "")[:200],
                status=str(record.get("status") or "ok")[:32],
                cached=True,
                estimated=record_usage.estimated,
                prompt_tokens=record_usage.prompt_tokens,
                completion_tokens=record_usage.completion_tokens,
                cached_tokens=record_usage.cached_tokens,
                reasoning_tokens=record_usage.reasoning_tokens,
                cost=ZERO,
                basis=m.CostBasis.CACHED,
                reason="served from Steward's response cache: no upstream call",
            )
        ]
    attempts = record.get("attempts") or []
    if not attempts and (record_usage.prompt_tokens or record_usage.completion_tokens):
        # A proxy path that does not itemise attempts still owes the request's cost.
        attempts = [
            {
                "n": 1,
                "deployment_id": record.get("deployment_id"),
                "model": record.get("model"),
                "status": record.get("status"),
                "usage": record.get("usage"),
            }
        ]
    lines = []
    for index, attempt in enumerate(attempts, start=1):
        model = str(attempt.get("model") or record.get("model") or "")[:200]
        deployment_id = _int_or_none(attempt.get("deployment_id"))
        usage = _usage_from(attempt.get("usage"))
        status = str(attempt.get("status") or "")[:32]
        if usage is None:
            cost = Cost(total=ZERO, basis=m.CostBasis.NO_USAGE, reason=f"attempt ended '{status}' with no tokens")
            usage = Usage()
        else:
            cost = cost_compute(
                organisation_id=organisation_id, model=model, deployment_id=deployment_id, usage=usage, at=started_at
            )
        lines.append(
            m.UsageLine(
                **common,
                attempt=int(attempt.get("n") or index),
                deployment_id=deployment_id,
                model=model,
                status=status,
                cached=False,
                estimated=usage.estimated,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cost=cost.total,
                currency=cost.currency,
                basis=cost.basis,
                reason=cost.reason[:200],
                price_id=cost.price_id,
            )
        )
    return lines


def usage_lines_record(*, records: list[dict]) -> int:
    """Write ledger lines for finished request records: one line per attempt (retries and
    fallbacks are separate lines), one zero-cost line for a cached response, none for a request
    rejected before any upstream call.

    Idempotent per (request_id, attempt): a record delivered twice adds nothing. Side effects, in
    the same transaction: the touched days are queued for the rollup task, and soft thresholds
    crossed by these lines raise a budget alert (audit event + webhook after commit).
    A malformed record is skipped with a log line rather than blocking the batch. Returns the
    number of lines offered to the ledger (lines already present are skipped by the database).
    """
    lines: list[m.UsageLine] = []
    for record in records:
        try:
            lines.extend(_lines_for_record(record))
        except (KeyError, TypeError, ValueError, ApplicationError):
            logger.exception("billing: skipping malformed usage record %r", record.get("request_id"))
    if not lines:
        return 0
    with transaction.atomic():
        created = m.UsageLine.objects.bulk_create(lines, ignore_conflicts=True, batch_size=500)
        organisations = {line.organisation_id for line in lines}
        configs = {org_id: billing_config_get(org_id) for org_id in organisations}
        pending = {
            (line.organisation_id, local_day(line.started_at, configs[line.organisation_id].time_zone))
            for line in lines
        }
        m.RollupPending.objects.bulk_create(
            [m.RollupPending(organisation_id=o, day=d) for o, d in pending], ignore_conflicts=True
        )
        for org_id, config in configs.items():
            _thresholds_check(config=config, lines=[line for line in lines if line.organisation_id == org_id])
    return len(created)


def _thresholds_check(*, config: BillingConfig, lines: list[m.UsageLine]) -> None:
    now = timezone.now()
    for rule in config.rules:
        if rule.soft_threshold_percent is None:
            continue
        scopes = [BudgetScope(config.organisation_id, ln.api_key_id, ln.team_id, ln.prompt_id) for ln in lines]
        if not any(rule.applies(s) for s in scopes):
            continue
        start, end = period_bounds(rule.period, at=now, time_zone=config.time_zone)
        if m.BudgetAlert.objects.filter(budget_id=rule.id, period_start=start).exists():
            continue  # already alerted this period: skip the SUM over the period's ledger
        threshold = money(rule.amount * rule.soft_threshold_percent / 100)
        spent = budget_spent_from_ledger(rule=rule, organisation_id=config.organisation_id, start=start, end=end)
        if spent < threshold or spent == ZERO:
            continue
        budget_alert_raise(rule=rule, organisation_id=config.organisation_id, period_start=start, spent=spent)


def budget_alert_raise(*, rule: BudgetRule, organisation_id: int, period_start: datetime, spent: Decimal) -> bool:
    """Record that a budget crossed its soft threshold in this period, once: audit event and, if
    the organisation configured a webhook, a signed delivery after commit. Returns False if the
    alert already existed."""
    with transaction.atomic():
        alert, created = m.BudgetAlert.objects.get_or_create(
            budget_id=rule.id, period_start=period_start, defaults={"spent": spent}
        )
        if not created:
            return False
        audit_event_record(
            organisation_id=organisation_id,
            actor=Actor.system("billing"),
            action=Action.BUDGET_THRESHOLD_CROSSED,
            target_type="budget",
            target_id=rule.id,
            after={
                "budget": rule.name,
                "spent": str(spent),
                "amount": str(rule.amount),
                "threshold_percent": rule.soft_threshold_percent,
                "period_start": period_start.isoformat(),
            },
        )
        billing = m.BillingSettings.objects.filter(organisation_id=organisation_id).first()
        if billing and billing.webhook_url:
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="pending")
            from billing.tasks import budget_alert_webhook_deliver

            transaction.on_commit(lambda: budget_alert_webhook_deliver.delay(alert.pk))
    return True


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex. Receivers reject old timestamps (replay)."""
    import hashlib
    import hmac

    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class WebhookTransientError(Exception):
    pass


def budget_alert_webhook_send(*, alert_id: int) -> str:
    """POST the alert to the organisation's webhook, signed. Idempotent: an alert already sent is
    not sent again (the receiver can also de-duplicate on the body's `id`). The attempt is counted
    and committed before the HTTP call, which runs outside any transaction. Raises
    WebhookTransientError for connection errors and 5xx/429 answers (the task retries those)."""
    import json

    import requests

    from core import egress

    with transaction.atomic():
        alert = m.BudgetAlert.objects.select_for_update().select_related("budget").filter(pk=alert_id).first()
        if alert is None or alert.webhook_status == "sent":
            return "skipped"
        billing = m.BillingSettings.objects.filter(organisation_id=alert.budget.organisation_id).first()
        if not billing or not billing.webhook_url:
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="none")
            return "skipped"
        secret = secret_decrypt(billing.webhook_secret_encrypted)
        if not secret:
            # Retrying cannot help: the key that encrypted the secret is gone until an admin sets it again.
            logger.error(
                "budget alert %s: the webhook secret cannot be decrypted (encryption key changed); set it again",
                alert.pk,
            )
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="failed")
            return "failed"
        m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_attempts=alert.webhook_attempts + 1)
    budget = alert.budget
    body = json.dumps(
        {
            "id": f"budget-alert-{alert.pk}",
            "type": "budget.threshold_crossed",
            "organisation_id": budget.organisation_id,
            "budget": {"id": budget.pk, "name": budget.name, "amount": str(budget.amount), "period": budget.period},
            "threshold_percent": budget.soft_threshold_percent,
            "spent": str(alert.spent),
            "period_start": alert.period_start.isoformat(),
            "created_at": alert.created_at.isoformat(),
        },
        separators=(",", ":"),
    ).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Steward-Timestamp": str(timestamp),
        "X-Steward-Signature": "sha256=" + webhook_signature(secret=secret, timestamp=timestamp, body=body),
        "User-Agent": "Steward-Webhook/1",
    }
    # Through the egress policy (the URL is an admin's; the check is on the address connected to).
    # A refused address is not retried: it stays refused until the URL or the policy changes.
    try:
        with egress.requests_session() as session:
            response = session.post(billing.webhook_url, data=body, headers=headers, timeout=5, allow_redirects=False)
    except egress.EgressDenied as exc:
        logger.warning("budget alert %s: webhook not sent: %s", alert.pk, exc)
        m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="failed")
        return "failed"
    except requests.RequestException as exc:
        raise WebhookTransientError(str(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise WebhookTransientError(f"webhook answered {response.status_code}")
    outcome = "sent" if response.status_code < 300 else "failed"
    m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status=outcome)
    return outcome


def budget_alert_webhook_failed(*, alert_id: int) -> None:
    m.BudgetAlert.objects.filter(pk=alert_id).exclude(webhook_status="sent").update(webhook_status="failed")


# --- rollups ----------------------------------------------------------------------------------

ROLLUP_DIMENSIONS = ("team_id", "api_key_id", "model", "prompt_id", "prompt_version_id")


def rollup_rows_compute(*, organisation_id: int, day: dt.date, time_zone: str) -> list[m.UsageDaily]:
    from django.db.models import Count, Max

    start, end = day_bounds(day, time_zone)
    groups = (
        m.UsageLine.objects.filter(organisation_id=organisation_id, started_at__gte=start, started_at__lt=end)
        .values(*ROLLUP_DIMENSIONS)
        .annotate(
            requests=Count("request_id", distinct=True),
            lines=Count("id"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cached_tokens=Sum("cached_tokens"),
            reasoning_tokens=Sum("reasoning_tokens"),
            cost=Sum("cost"),
            # One prompt version has one name and number; Max only keeps them out of the GROUP BY.
            prompt_name=Max("prompt_name"),
            prompt_version_number=Max("prompt_version_number"),
        )
        .order_by()
    )
    return [m.UsageDaily(organisation_id=organisation_id, day=day, **g) for g in groups]


def rollup_day_rebuild(*, organisation_id: int, day: dt.date, time_zone: str | None = None) -> int:
    """Replace one organisation-day of rollups with a fresh aggregate of the ledger. Idempotent."""
    time_zone = time_zone or billing_config_load(organisation_id).time_zone
    with transaction.atomic():
        rows = rollup_rows_compute(organisation_id=organisation_id, day=day, time_zone=time_zone)
        m.UsageDaily.objects.filter(organisation_id=organisation_id, day=day).delete()
        m.UsageDaily.objects.bulk_create(rows)
    return len(rows)


def rollups_update(*, limit: int = 200) -> int:
    """Rebuild the days queued by `usage_lines_record`. Safe to run concurrently: each queued day is
    claimed with SKIP LOCKED and removed in the transaction that rebuilds it."""
    done = 0
    while done < limit:
        with transaction.atomic():
            item = m.RollupPending.objects.select_for_update(skip_locked=True).order_by("id").first()
            if item is None:
                break
            rollup_day_rebuild(organisation_id=item.organisation_id, day=item.day)
            item.delete()
        done += 1
    return done

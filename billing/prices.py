"""Prices: resolving the price of a model at a time, costing usage, the worst case of a request,
seeding and setting prices."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.actions import Action
from audit.services import audit_event_record
from billing import models as m
from billing.contract import Cost, Usage
from billing.money import EPOCH, ZERO, decimal_from_price, money
from billing.store import PRICES_NAMESPACE, _adb_read, _caches_invalidate, _price_cache
from core.actors import Actor
from core.conf import hot
from core.errors import ValidationFailed

DEV_MODEL_PRICES = {
    # Development upstream models: demo prices (USD per million tokens) so the demo shows real costs.
    "dev-small": {"input": "0.50", "output": "1.50", "cached": "0.05", "max_output": 4096},
    "dev-large": {"input": "3.00", "output": "15.00", "cached": "0.30", "max_output": 8192},
    "dev-embed": {"input": "0.02", "output": "0", "cached": None, "max_output": 1},
}
PER_MILLION = Decimal(1_000_000)
# Tokens a provider adds around the body's text (role markers, the chat template's start and end
# of turn), which the body's bytes do not count: a margin that keeps the worst case an upper bound.
INPUT_OVERHEAD_TOKENS = 16
# A price "from now" sent by a client whose clock is a little behind is not refused as backdated.
PRICE_START_TOLERANCE = dt.timedelta(minutes=1)
# Rows per INSERT when seeding litellm's price list (a few thousand models): one statement each
# would be slow, one statement for all would be a very large one.
PRICES_SEED_BATCH = 1000


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
    Price.objects.bulk_create(rows, ignore_conflicts=True, batch_size=PRICES_SEED_BATCH)
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
    if effective_from < now - PRICE_START_TOLERANCE:
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

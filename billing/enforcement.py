"""Budget enforcement in Redis: per budget and period a spent counter, a sum of held
reservations, the reservations and their expiry times, changed only by the scripts in
billing/lua/. Amounts there are integer nano-dollars rounded up."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from django.db.models import Sum
from django.utils import timezone

from billing import models as m
from billing.budgets import BillingConfig, BudgetRule, abilling_config_get
from billing.contract import (
    BudgetExceeded,
    BudgetScope,
    BudgetUnavailable,
    CostCeilingExceeded,
    PriceUnknown,
    Reservation,
)
from billing.money import EPOCH, ZERO, nano_ceil, nano_to_decimal, period_bounds
from billing.prices import aprice_resolve, worst_case_cost
from billing.store import _adb_read
from core.conf import hot
from core.redis import Script, ScriptCall, abatch, redis_client

logger = logging.getLogger(__name__)


# Counters outlive their period a little so the usage page can still read them at the turn.
COUNTERS_OUTLIVE_PERIOD = dt.timedelta(days=2)
# Retry-After (seconds) of a refusal by a budget: when its period resets, but at least a second
# (clients treat 0 as "now") and at most a day (an hour for a budget that never resets), since a
# client will not usefully sleep for weeks on a monthly budget and an administrator may raise it.
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 86400
RETRY_AFTER_NEVER_RESETS = 3600
# Retry-After (seconds) while Redis is unreachable: an outage is usually a restart or failover.
BUDGET_STORE_RETRY_AFTER = 5
# The settle script's done marker outlives the reservation (twice its TTL), so a settle or release
# repeated after the reservation has expired still finds it and changes nothing.
DONE_MARKER_TTL_FACTOR = 2
# Keys per SCAN round trip of the sweep: Redis' own guidance is tens to hundreds per call, so the
# sweep never holds Redis for long.
SWEEP_SCAN_COUNT = 500

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
    return int((period_end + COUNTERS_OUTLIVE_PERIOD).timestamp() * 1000)


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


# The memo of budget_windows holds one entry per (API key, team, prompt) seen since the config
# was loaded; past this many it starts again rather than grow with a tenant's number of keys.
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
        return RETRY_AFTER_NEVER_RESETS
    return max(RETRY_AFTER_MIN, min((resets_at - now).total_seconds(), RETRY_AFTER_MAX))


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
                extra={"retry_after": BUDGET_STORE_RETRY_AFTER},
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
    The key's per-request ceiling counts the same way: the request may now cost one more worst case,
    so a retry that would take it past the ceiling is refused with `CostCeilingExceeded`.
    Nothing more to do for a request no hard budget covers. The settle stage gives back the unused rest."""
    scope = reservation.scope
    if scope.api_key_id is not None:
        config = await abilling_config_get(scope.organisation_id)
        ceiling = config.ceilings.get(scope.api_key_id)
        could_cost = reservation.worst_case * (reservation.worst_cases_held + 1)
        if ceiling is not None and could_cost > ceiling:
            raise CostCeilingExceeded(
                f"A retry of this request, after an attempt that timed out and may be billed, could bring its "
                f"cost to {could_cost} USD, above this key's limit of {ceiling} USD per request.",
                budget_name="per-request ceiling",
                resets_at=None,
                retry_after=None,
            )
    if reservation.empty or not reservation.windows:
        reservation.worst_cases_held += 1
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
            extra={"retry_after": BUDGET_STORE_RETRY_AFTER},
        ) from exc
    status = int(result[0])
    if status == 1:
        for rule_key in rule_keys:
            reservation.amounts[rule_key] = nano_to_decimal(nano_ceil(reservation.amounts[rule_key]) + extra)
        reservation.worst_cases_held += 1
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
    done_ttl_ms = int(hot.STEWARD_BILLING_RESERVATION_TTL_SECONDS * 1000) * DONE_MARKER_TTL_FACTOR
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
    for key in client.scan_iter(match="billing:bp:*:exp", count=SWEEP_SCAN_COUNT):
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

"""Money and period arithmetic: pure functions, Decimal only.

Rounding rules (explicit, so two computations of the same call always agree):
- a line's cost is rounded half-even to 12 decimal places (`COST_QUANTUM`, a pico-dollar);
- Redis budget counters hold integer nano-dollars (`NANO`), and every amount put there is rounded
  *up*, so enforcement is conservative. Lua numbers are doubles: integers stay exact up to 2**53
  nano-dollars, which is why a budget amount may not exceed `MAX_BUDGET_AMOUNT`.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

COST_QUANTUM = Decimal("0.000000000001")
NANO = Decimal("0.000000001")
MAX_BUDGET_AMOUNT = Decimal("9000000")
ZERO = Decimal("0")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def money(value) -> Decimal:
    """A cost rounded to the ledger's precision. Floats are refused: they are never exact."""
    if isinstance(value, float):
        raise TypeError("money must not be a float; convert with Decimal(str(x)) at the boundary")
    return Decimal(value).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def decimal_from_price(value) -> Decimal | None:
    """litellm's map holds floats; their shortest repr is the price the provider published."""
    if value is None:
        return None
    return Decimal(str(value))


def nano_ceil(amount: Decimal) -> int:
    return int((amount / NANO).to_integral_value(rounding=ROUND_CEILING))


def nano_to_decimal(value: int) -> Decimal:
    return Decimal(value) * NANO


def period_bounds(period: str, *, at: dt.datetime, time_zone: str) -> tuple[dt.datetime, dt.datetime | None]:
    """[start, end) of the calendar period containing `at` in the organisation's time zone
    (week starts on Monday); `total` starts at the epoch and never ends."""
    if period == "total":
        return EPOCH, None
    # Every priced request asks; the answer only changes at the period's end.
    cached = _period_cache.get((period, time_zone))
    if cached is not None and cached[0] <= at < cached[1]:
        return cached
    bounds = _period_bounds(period, at, time_zone)
    _period_cache[(period, time_zone)] = bounds
    return bounds


_period_cache: dict[tuple[str, str], tuple[dt.datetime, dt.datetime]] = {}


def _period_bounds(period: str, at: dt.datetime, time_zone: str) -> tuple[dt.datetime, dt.datetime]:
    tz = ZoneInfo(time_zone or "UTC")
    local = at.astimezone(tz)
    day = local.date()
    if period == "day":
        start, end = day, day + dt.timedelta(days=1)
    elif period == "week":
        start = day - dt.timedelta(days=day.weekday())
        end = start + dt.timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return (
        dt.datetime.combine(start, dt.time(), tzinfo=tz).astimezone(dt.UTC),
        dt.datetime.combine(end, dt.time(), tzinfo=tz).astimezone(dt.UTC),
    )


def local_day(at: dt.datetime, time_zone: str) -> dt.date:
    return at.astimezone(ZoneInfo(time_zone or "UTC")).date()


def day_bounds(day: dt.date, time_zone: str) -> tuple[dt.datetime, dt.datetime]:
    tz = ZoneInfo(time_zone or "UTC")
    return (
        dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC),
        dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC),
    )

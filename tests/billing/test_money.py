"""Properties of the money arithmetic (billing.money): ledger rounding, nano-dollar conversion, periods.

Budgets are enforced on integer nano-dollars in Redis, so the properties that matter are the
directions of rounding: an amount put in a counter is never less than the amount it stands for, and
never more than one nano-dollar above it.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from billing.money import (
    COST_QUANTUM,
    MAX_BUDGET_AMOUNT,
    NANO,
    money,
    nano_ceil,
    nano_to_decimal,
    period_bounds,
)

# No example database: the tests stay in tests/ and leave no .hypothesis/ behind in the checkout.
pure = settings(database=None, deadline=None)

# Costs as the ledger holds them: at most 12 decimal places, up to the largest budget.
amounts = st.decimals(min_value=0, max_value=MAX_BUDGET_AMOUNT, places=12, allow_nan=False, allow_infinity=False)
# Anything a price times a token count can give before rounding: more places than the ledger keeps.
raw_costs = st.decimals(min_value=0, max_value=MAX_BUDGET_AMOUNT, places=20, allow_nan=False, allow_infinity=False)
nanos = st.integers(min_value=0, max_value=nano_ceil(MAX_BUDGET_AMOUNT))


@pure
@given(raw_costs)
@example(Decimal("0.0000000000005"))  # a tie: half-even goes to 0
@example(Decimal("0.0000000000015"))  # a tie: half-even goes to 2
def test_money_rounds_to_the_nearest_pico_dollar(value):
    rounded = money(value)
    assert rounded.as_tuple().exponent == COST_QUANTUM.as_tuple().exponent
    assert abs(rounded - value) <= COST_QUANTUM / 2
    assert money(rounded) == rounded


@pytest.mark.parametrize(("value", "expected"), [("0.0000000000005", "0"), ("0.0000000000015", "0.000000000002")])
def test_money_breaks_ties_to_even(value, expected):
    assert money(Decimal(value)) == Decimal(expected)


@pure
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_money_refuses_floats(value):
    with pytest.raises(TypeError):
        money(value)


@pure
@given(amounts)
def test_nano_ceil_never_holds_less_and_at_most_one_nano_more(amount):
    held = nano_to_decimal(nano_ceil(amount))
    assert amount <= held < amount + NANO


@pure
@given(nanos)
def test_whole_nano_dollars_convert_both_ways_exactly(count):
    assert nano_ceil(nano_to_decimal(count)) == count


@pure
@given(amounts, amounts)
def test_nano_ceil_is_monotonic_and_never_undercounts_a_sum(a, b):
    low, high = sorted((a, b))
    assert nano_ceil(low) <= nano_ceil(high)
    # Reservations are rounded up one by one: together they cover what the sum of the costs needs.
    assert nano_ceil(a) + nano_ceil(b) >= nano_ceil(a + b)


def test_the_largest_budget_stays_an_exact_integer_in_lua():
    # Lua numbers are doubles; integers are exact up to 2**53.
    assert nano_ceil(MAX_BUDGET_AMOUNT) <= 2**53


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Kiritimati"]
instants = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC))


@pure
@given(instants, st.sampled_from(["day", "week", "month"]), st.sampled_from(ZONES))
def test_a_period_contains_its_instant_and_the_next_one_starts_where_it_ends(at, period, zone):
    start, end = period_bounds(period, at=at, time_zone=zone)
    assert start <= at < end
    following_start, _ = period_bounds(period, at=end, time_zone=zone)
    assert following_start == end

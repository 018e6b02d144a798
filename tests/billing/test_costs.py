"""Exact cost of every call, through the ledger writer the proxy's log consumer calls."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.utils import timezone

from billing.models import Price, UsageLine
from billing.services import Usage, cost_compute, price_set, usage_lines_record

pytestmark = pytest.mark.django_db


def lines_of(record) -> list[UsageLine]:
    return list(UsageLine.objects.filter(request_id=record["request_id"]).order_by("attempt"))


def test_litellm_prices_are_seeded_as_exact_decimals():
    gpt = Price.objects.get(organisation__isnull=True, model="gpt-4o", deployment_id__isnull=True)
    # 2.5e-06 as a float is 2.50000000000000010...e-06; the table holds the published price.
    assert gpt.input_per_token == Decimal("0.0000025")
    assert gpt.output_per_token == Decimal("0.00001")
    assert gpt.cached_input_per_token == Decimal("0.00000125")
    assert gpt.source == "litellm"
    for name in ("dev-small", "dev-large", "dev-embed"):
        assert Price.objects.get(organisation__isnull=True, model=name).input_per_token > 0


def test_non_streamed_call_costs_exactly(record_factory):
    record = record_factory(model="dev-small", usage={"prompt_tokens": 10, "completion_tokens": 5})
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    # dev-small: 0.50 USD / M input, 1.50 USD / M output
    assert line.cost == Decimal("0.0000125")
    assert line.basis == "priced" and line.price_id is not None
    assert (line.prompt_tokens, line.completion_tokens) == (10, 5)


def test_streamed_call_costs_exactly_from_the_usage_chunk(record_factory):
    usage = {"prompt_tokens": 31, "completion_tokens": 244}
    record = record_factory(
        model="dev-large",
        stream=True,
        usage=usage,
        attempts=[{"n": 1, "deployment_id": 3, "model": "dev-large", "status": "ok", "usage": usage}],
    )
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert line.cost == Decimal("31") * Decimal("0.000003") + Decimal("244") * Decimal("0.000015")
    assert line.cost == Decimal("0.003753")


def test_cached_and_cache_write_tokens_are_priced_at_their_own_rates(record_factory, test_price):
    usage = {"prompt_tokens": 1000, "cached_tokens": 600, "cache_write_tokens": 100, "completion_tokens": 100}
    record = record_factory(model="acme-model", usage=usage, attempts=None)
    record["attempts"][0]["usage"] = usage
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    expected = (
        Decimal("0.0001")  # request fee
        + 300 * Decimal("0.000003")  # plain input
        + 600 * Decimal("0.0000003")  # cache reads
        + 100 * Decimal("0.00000375")  # cache writes
        + 100 * Decimal("0.000015")  # output
    )
    assert line.cost == expected == Decimal("0.003055")
    assert (line.cached_tokens, line.cache_write_tokens) == (600, 100)


def test_reasoning_tokens_are_priced_at_the_reasoning_rate(record_factory, test_price):
    usage = {"prompt_tokens": 100, "completion_tokens": 500, "reasoning_tokens": 300}
    record = record_factory(model="acme-model", usage=usage)
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert line.cost == Decimal("0.0001") + 100 * Decimal("0.000003") + 200 * Decimal("0.000015") + 300 * Decimal(
        "0.00002"
    )
    assert line.reasoning_tokens == 300


def test_estimated_usage_is_priced_and_marked(record_factory):
    usage = {"prompt_tokens": 12, "completion_tokens": 40, "estimated": True}
    record = record_factory(model="dev-small", usage=usage)
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert line.estimated is True
    assert line.basis == "estimated"
    assert line.cost == Decimal("0.000066") and "counted" in line.reason


def test_estimated_usage_counted_with_the_models_tokenizer():
    from core.llm import token_count

    produced = "The quick brown fox jumps over the lazy dog. " * 4
    usage = Usage(prompt_tokens=0, completion_tokens=token_count(model="gpt-4o", text=produced), estimated=True)
    assert 30 < usage.completion_tokens < 60
    cost = cost_compute(organisation_id=0, model="gpt-4o", deployment_id=None, usage=usage, at=timezone.now())
    assert cost.basis == "estimated"
    assert cost.total == usage.completion_tokens * Decimal("0.00001")


def test_price_change_applies_from_its_start_and_never_rewrites_past_costs(record_factory, organisation, system_actor):
    now = timezone.now()
    change_at = now + dt.timedelta(hours=1)
    first = record_factory(model="dev-small", started_at=now)
    usage_lines_record(records=[first])
    new_price = price_set(
        organisation=organisation,
        model="dev-small",
        actor=system_actor,
        effective_from=change_at,
        input_per_token=Decimal("0.000001"),
        output_per_token=Decimal("0.000004"),
    )
    second = record_factory(model="dev-small", started_at=change_at + dt.timedelta(seconds=1))
    usage_lines_record(records=[second])
    [old_line], [new_line] = lines_of(first), lines_of(second)
    assert old_line.cost == Decimal("0.0000125")
    assert new_line.cost == 10 * Decimal("0.000001") + 5 * Decimal("0.000004")
    assert new_line.price_id == new_price.pk and old_line.price_id != new_price.pk
    # The earlier line keeps its cost and price row; the database refuses to rewrite it.
    with pytest.raises(DatabaseError), transaction.atomic():
        UsageLine.objects.filter(pk=old_line.pk).update(cost=Decimal("0"))
    old_line.refresh_from_db()
    assert old_line.cost == Decimal("0.0000125")


def test_price_cannot_start_in_the_past(organisation, system_actor):
    from core.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        price_set(
            organisation=organisation,
            model="dev-small",
            actor=system_actor,
            effective_from=timezone.now() - dt.timedelta(days=1),
            input_per_token=Decimal("1"),
            output_per_token=Decimal("1"),
        )
    assert err.value.param == "effective_from"


def test_deployment_override_beats_model_override_beats_global(organisation, system_actor):
    at = timezone.now() + dt.timedelta(minutes=5)
    usage = Usage(prompt_tokens=1000, completion_tokens=0)

    def cost(deployment_id):
        return cost_compute(
            organisation_id=organisation.pk, model="dev-small", deployment_id=deployment_id, usage=usage, at=at
        ).total

    assert cost(7) == Decimal("0.0005")
    price_set(
        organisation=organisation,
        model="dev-small",
        actor=system_actor,
        input_per_token=Decimal("0.000002"),
        output_per_token=Decimal("0"),
    )
    assert cost(7) == Decimal("0.002")
    price_set(
        organisation=organisation,
        model="dev-small",
        deployment_id=7,
        actor=system_actor,
        input_per_token=Decimal("0.000004"),
        output_per_token=Decimal("0"),
    )
    assert cost(7) == Decimal("0.004")
    assert cost(8) == Decimal("0.002")
    # Another organisation still pays the global price.
    assert cost_compute(
        organisation_id=organisation.pk + 999, model="dev-small", deployment_id=7, usage=usage, at=at
    ).total == Decimal("0.0005")


def test_retries_and_fallbacks_are_separate_lines(record_factory):
    ok_usage = {"prompt_tokens": 20, "completion_tokens": 10}
    record = record_factory(
        model="dev-small",
        attempts=[
            {"n": 1, "deployment_id": 1, "model": "dev-small", "status": "upstream_error", "usage": None},
            {"n": 2, "deployment_id": 2, "model": "dev-small", "status": "timeout", "usage": None},
            {"n": 3, "deployment_id": 5, "model": "dev-large", "status": "ok", "usage": ok_usage},
        ],
    )
    usage_lines_record(records=[record])
    first, second, fallback = lines_of(record)
    assert (first.attempt, first.deployment_id, first.cost, first.basis) == (1, 1, Decimal("0"), "no_usage")
    assert "upstream_error" in first.reason and "timeout" in second.reason
    assert (fallback.attempt, fallback.model, fallback.deployment_id) == (3, "dev-large", 5)
    assert fallback.cost == 20 * Decimal("0.000003") + 10 * Decimal("0.000015")


def test_cancelled_stream_pays_for_the_tokens_produced(record_factory):
    usage = {"prompt_tokens": 50, "completion_tokens": 7}
    record = record_factory(
        model="dev-small",
        status="cancelled",
        attempts=[{"n": 1, "deployment_id": 1, "model": "dev-small", "status": "cancelled", "usage": usage}],
    )
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert line.status == "cancelled"
    assert line.cost == 50 * Decimal("0.0000005") + 7 * Decimal("0.0000015") > 0


def test_cached_response_is_one_zero_cost_line_that_says_so(record_factory):
    record = record_factory(model="dev-small", cache_hit=True, attempts=[])
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert (line.attempt, line.cost, line.cached, line.basis) == (0, Decimal("0"), True, "cached")
    assert "cache" in line.reason


def test_unknown_model_is_recorded_at_zero_with_a_reason(record_factory):
    record = record_factory(model="no-such-model-xyz")
    usage_lines_record(records=[record])
    [line] = lines_of(record)
    assert line.cost == 0 and line.basis == "no_price" and "no-such-model-xyz" in line.reason


def test_no_zero_cost_line_without_a_reason(record_factory, test_price):
    records = [
        record_factory(model="dev-small"),
        record_factory(model="dev-small", cache_hit=True, attempts=[]),
        record_factory(model="nope-model"),
        record_factory(
            model="dev-small",
            attempts=[{"n": 1, "deployment_id": 1, "model": "dev-small", "status": "error", "usage": None}],
        ),
    ]
    usage_lines_record(records=records)
    assert UsageLine.objects.count() == 4
    assert not UsageLine.objects.filter(cost=0, reason="").exists()


def test_recording_is_idempotent_per_request_and_attempt(record_factory):
    record = record_factory(model="dev-small")
    usage_lines_record(records=[record])
    usage_lines_record(records=[record, record])
    assert UsageLine.objects.filter(request_id=record["request_id"]).count() == 1


def test_malformed_record_is_skipped_not_blocking_the_batch(record_factory):
    good = record_factory(model="dev-small")
    bad = record_factory(model="dev-small", usage={"prompt_tokens": -3})
    bad["attempts"][0]["usage"] = {"prompt_tokens": -3}
    usage_lines_record(records=[bad, good])
    assert list(UsageLine.objects.values_list("request_id", flat=True)) == [good["request_id"]]


def test_a_million_small_calls_sum_exactly(organisation):
    """Would fail with floats: a million 1.23456789e-07 costs do not add up to 0.123456789 in binary."""
    usage = Usage(prompt_tokens=7, completion_tokens=3)
    one = cost_compute(
        organisation_id=organisation.pk, model="gpt-4o-mini", deployment_id=None, usage=usage, at=timezone.now()
    ).total
    assert one == 7 * Decimal("0.00000015") + 3 * Decimal("0.0000006") == Decimal("0.00000285")
    total = sum([one] * 1_000_000, Decimal(0))
    assert total == Decimal("2.85")
    assert sum([float(one)] * 1_000_000) != 2.85  # the bug this design avoids

    # And the database adds a ledger of 200,000 such lines exactly (numeric, not double precision).
    n = 200_000
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_usageline (request_id, attempt, organisation_id, model, status, cached, estimated,
                prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, cost, currency,
                basis, reason, started_at, recorded_at)
            SELECT 'bulk-' || g, 1, %s, 'gpt-4o-mini', 'ok', false, false, 7, 3, 0, 0, 0, %s, 'USD', 'priced', '',
                now(), now()
            FROM generate_series(1, %s) AS g
            """,
            [organisation.pk, one, n],
        )
    from django.db.models import Sum

    db_total = UsageLine.objects.filter(organisation_id=organisation.pk).aggregate(s=Sum("cost"))["s"]
    assert db_total == one * n == Decimal("0.57")
    assert sum([float(one)] * n) != 0.57


def test_request_rejected_before_any_upstream_call_has_no_line(record_factory):
    rejected = record_factory(
        model="dev-small",
        status="rejected",
        attempts=[],
        usage={"prompt_tokens": 0, "completion_tokens": 0, "estimated": False},
    )
    usage_lines_record(records=[rejected])
    assert not UsageLine.objects.exists()

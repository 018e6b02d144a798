"""Daily rollups maintained from the ledger, and billing_reconcile comparing them."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.models import RollupPending, UsageDaily
from billing.services import rollups_update, usage_lines_record
from billing.tasks import rollups_update as rollups_update_task

pytestmark = pytest.mark.django_db


def test_rollups_follow_the_ledger_per_day_and_dimension(organisation, record_factory, api_key_factory):
    key, _ = api_key_factory()
    yesterday = timezone.now() - dt.timedelta(days=1)
    usage_lines_record(
        records=[
            record_factory(model="dev-small", api_key_id=key.pk, prompt_id=3, prompt_version_id=9),
            record_factory(model="dev-small", api_key_id=key.pk, prompt_id=3, prompt_version_id=9),
            record_factory(model="dev-large", started_at=yesterday),
            record_factory(
                model="dev-small",
                attempts=[
                    {"n": 1, "deployment_id": 1, "model": "dev-small", "status": "error", "usage": None},
                    {
                        "n": 2,
                        "deployment_id": 2,
                        "model": "dev-small",
                        "status": "ok",
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
                    },
                ],
            ),
        ]
    )
    assert RollupPending.objects.count() == 2
    assert rollups_update_task.run() == 2
    assert not RollupPending.objects.exists()
    today = UsageDaily.objects.get(api_key_id=key.pk)
    assert (today.requests, today.lines, today.prompt_tokens, today.cost) == (2, 2, 20, Decimal("0.000025"))
    assert (today.prompt_id, today.prompt_version_id, today.model) == (3, 9, "dev-small")
    retried = UsageDaily.objects.get(api_key_id=None, model="dev-small")
    assert (retried.requests, retried.lines, retried.cost) == (1, 2, Decimal("0.0000125"))
    assert UsageDaily.objects.get(model="dev-large").day == yesterday.date()
    assert rollups_update() == 0  # nothing queued: idempotent


def test_reconcile_reports_differences_and_exits_non_zero(organisation, record_factory, capsys):
    usage_lines_record(records=[record_factory(model="dev-small") for _ in range(3)])
    rollups_update()
    call_command("billing_reconcile")
    assert "match" in capsys.readouterr().out

    UsageDaily.objects.filter(organisation_id=organisation.pk).update(cost=Decimal("1"))
    with pytest.raises(SystemExit) as exit_:
        call_command("billing_reconcile")
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "differ" in out and "0.000037500000" in out

    with pytest.raises(SystemExit):
        call_command("billing_reconcile", "--fix")
    call_command("billing_reconcile")
    assert UsageDaily.objects.get().cost == Decimal("0.0000375")


def test_reconcile_notices_a_missing_rollup(organisation, record_factory):
    usage_lines_record(records=[record_factory(model="dev-small")])
    # The rollup task has not run yet: the ledger has a day the rollups lack.
    with pytest.raises(SystemExit):
        call_command("billing_reconcile")

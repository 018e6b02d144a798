"""Daily rollups of the ledger, rebuilt per organisation-day from the ledger."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Sum

from billing import models as m
from billing.budgets import billing_config_load
from billing.money import day_bounds

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

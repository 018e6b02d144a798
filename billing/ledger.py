"""The ledger: one append-only line per attempt of a finished request, written off the hot path."""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from billing import models as m
from billing.alerts import _thresholds_check
from billing.budgets import billing_config_get
from billing.contract import Cost, Usage
from billing.money import ZERO, local_day
from billing.prices import cost_compute
from core.errors import ApplicationError, ValidationFailed

logger = logging.getLogger(__name__)


# The ledger's column widths: values from a record are cut to fit rather than lose the line.
_COLUMN_WIDTH = {f.name: f.max_length for f in m.UsageLine._meta.get_fields() if getattr(f, "max_length", None)}
# Rows per INSERT: the request-log consumer hands over batches of records, a few lines each.
LEDGER_INSERT_BATCH = 500


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
    request_id = str(record["request_id"])[: _COLUMN_WIDTH["request_id"]]
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
        "prompt_name": str(record.get("prompt_name") or "")[: _COLUMN_WIDTH["prompt_name"]],
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
                model=str(record.get("model") or "")[: _COLUMN_WIDTH["model"]],
                status=str(record.get("status") or "ok")[: _COLUMN_WIDTH["status"]],
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
        model = str(attempt.get("model") or record.get("model") or "")[: _COLUMN_WIDTH["model"]]
        deployment_id = _int_or_none(attempt.get("deployment_id"))
        usage = _usage_from(attempt.get("usage"))
        status = str(attempt.get("status") or "")[: _COLUMN_WIDTH["status"]]
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
                reason=cost.reason[: _COLUMN_WIDTH["reason"]],
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
        created = m.UsageLine.objects.bulk_create(lines, ignore_conflicts=True, batch_size=LEDGER_INSERT_BATCH)
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

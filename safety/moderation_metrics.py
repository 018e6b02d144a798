"""Queue metrics for /metrics, computed from the database when Prometheus scrapes.

Decisions are made in web processes and escalations in workers, so per-process counters would
each see a fraction; the rows are the one place that sees everything. Labels are ids, not names:
/metrics answers anonymous callers, and policy and reviewer names are an organisation's own.
"""

from __future__ import annotations

import logging

from django.db.models import Count, F, Min, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from safety.models import ModerationDecision, ModerationItem, ModerationStatus

logger = logging.getLogger(__name__)


class ModerationCollector:
    def describe(self):
        # Names only: without this, registering would run the queries once, at import time.
        ids = ["organisation_id", "policy_id"]
        yield GaugeMetricFamily("steward_moderation_queue_depth", "", labels=ids)
        yield GaugeMetricFamily("steward_moderation_oldest_pending_seconds", "", labels=ids)
        yield CounterMetricFamily("steward_moderation_decided", "", labels=[*ids, "status"])
        yield CounterMetricFamily("steward_moderation_decision_seconds", "", labels=ids)
        yield CounterMetricFamily(
            "steward_moderation_reviewer_decisions", "", labels=["organisation_id", "reviewer_id", "action"]
        )

    def collect(self):
        try:
            yield from self._collect()
        except Exception:
            # A scrape must not fail because the database is down; the readiness check reports that.
            logger.warning("moderation metrics unavailable", exc_info=True)

    def _collect(self):
        now = timezone.now()
        labels = ["organisation_id", "policy_id"]
        depth = GaugeMetricFamily("steward_moderation_queue_depth", "Pending moderation items", labels=labels)
        oldest = GaugeMetricFamily(
            "steward_moderation_oldest_pending_seconds", "Age of the oldest pending item", labels=labels
        )
        rows = (
            ModerationItem.objects.filter(status=ModerationStatus.PENDING)
            .values("organisation_id", "policy_id")
            .annotate(n=Count("id"), first=Min("created_at"))
            .order_by()
        )
        for row in rows:
            key = [str(row["organisation_id"]), str(row["policy_id"] or "")]
            depth.add_metric(key, row["n"])
            oldest.add_metric(key, (now - row["first"]).total_seconds())
        yield depth
        yield oldest

        decided = CounterMetricFamily(
            "steward_moderation_decided", "Items decided, by outcome", labels=[*labels, "status"]
        )
        wait = CounterMetricFamily(
            "steward_moderation_decision_seconds",
            "Seconds from hold to decision, summed over decided items (divide by steward_moderation_decided)",
            labels=labels,
        )
        rows = (
            ModerationItem.objects.exclude(status=ModerationStatus.PENDING)
            .values("organisation_id", "policy_id", "status")
            .annotate(n=Count("id"), waited=Sum(F("decided_at") - F("created_at")))
            .order_by()
        )
        totals: dict[tuple[str, str], float] = {}
        for row in rows:
            key = (str(row["organisation_id"]), str(row["policy_id"] or ""))
            decided.add_metric([*key, row["status"]], row["n"])
            seconds = row["waited"].total_seconds() if row["waited"] is not None else 0.0
            totals[key] = totals.get(key, 0.0) + seconds
        for key, seconds in totals.items():
            wait.add_metric(list(key), seconds)
        yield decided
        yield wait

        by_reviewer = CounterMetricFamily(
            "steward_moderation_reviewer_decisions",
            "Decisions by reviewer and action (approval rate: approve+edit over all)",
            labels=["organisation_id", "reviewer_id", "action"],
        )
        rows = (
            ModerationDecision.objects.values("item__organisation_id", "reviewer_id", "action")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            by_reviewer.add_metric(
                [str(row["item__organisation_id"]), str(row["reviewer_id"] or ""), row["action"]], row["n"]
            )
        yield by_reviewer


_registered = False


def metrics_register() -> None:
    global _registered
    if _registered:
        return
    from prometheus_client import REGISTRY

    REGISTRY.register(ModerationCollector())
    _registered = True

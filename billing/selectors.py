"""Reads for the usage page, its CSV export and the API (the same numbers everywhere).

Reports read the daily rollups, plus the ledger for days whose rollup is still queued, so
numbers are current to the last recorded request. Budget consumption reads the ledger for the
current period (the source of truth) and Redis for reservations in flight.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, F, Max, Q, QuerySet, Sum
from django.utils import timezone

from billing import models as m
from billing.money import ZERO, day_bounds, local_day, period_bounds
from billing.services import (
    ROLLUP_DIMENSIONS,
    billing_config_load,
    budget_counters_read,
    budget_spent_from_ledger,
    rollup_rows_compute,
)
from core.crypto import secret_decrypt

logger = logging.getLogger(__name__)

BREAKDOWNS = {
    "model": "model",
    "team": "team_id",
    "api_key": "api_key_id",
    "prompt": "prompt_id",
    "prompt_version": "prompt_version_id",
}


@dataclass(frozen=True)
class UsageFilters:
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    team_id: int | None = None
    api_key_id: int | None = None
    model: str = ""
    prompt_id: int | None = None
    prompt_version_id: int | None = None


@dataclass
class UsageRow:
    key: object
    label: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = ZERO


@dataclass
class UsageReport:
    date_from: dt.date
    date_to: dt.date
    series: list[UsageRow] = field(default_factory=list)  # one per day, oldest first
    breakdown: list[UsageRow] = field(default_factory=list)
    total: UsageRow = field(default_factory=lambda: UsageRow(key=None, label="Total"))


def _range(*, organisation, filters: UsageFilters) -> tuple[dt.date, dt.date]:
    today = local_day(timezone.now(), organisation.time_zone)
    date_to = filters.date_to or today
    date_from = filters.date_from or (date_to - dt.timedelta(days=29))
    return date_from, date_to


def _filtered(qs: QuerySet, filters: UsageFilters) -> QuerySet:
    if filters.team_id is not None:
        qs = qs.filter(team_id=filters.team_id)
    if filters.api_key_id is not None:
        qs = qs.filter(api_key_id=filters.api_key_id)
    if filters.model:
        qs = qs.filter(model=filters.model)
    if filters.prompt_id is not None:
        qs = qs.filter(prompt_id=filters.prompt_id)
    if filters.prompt_version_id is not None:
        qs = qs.filter(prompt_version_id=filters.prompt_version_id)
    return qs


def _daily_rows(*, organisation, filters: UsageFilters, date_from: dt.date, date_to: dt.date) -> list[m.UsageDaily]:
    """Rollup rows in range, with queued days computed from the ledger on the fly."""
    pending = set(
        m.RollupPending.objects.filter(
            organisation_id=organisation.pk, day__gte=date_from, day__lte=date_to
        ).values_list("day", flat=True)
    )
    today = local_day(timezone.now(), organisation.time_zone)
    if date_from <= today <= date_to:
        pending.add(today)  # the current day is always read live
    rows = list(
        _filtered(
            m.UsageDaily.objects.filter(organisation_id=organisation.pk, day__gte=date_from, day__lte=date_to).exclude(
                day__in=pending
            ),
            filters,
        )
    )
    for day in sorted(pending):
        live = rollup_rows_compute(organisation_id=organisation.pk, day=day, time_zone=organisation.time_zone)
        rows.extend(r for r in live if _matches(r, filters))
    return rows


def _matches(row: m.UsageDaily, filters: UsageFilters) -> bool:
    return (
        (filters.team_id is None or row.team_id == filters.team_id)
        and (filters.api_key_id is None or row.api_key_id == filters.api_key_id)
        and (not filters.model or row.model == filters.model)
        and (filters.prompt_id is None or row.prompt_id == filters.prompt_id)
        and (filters.prompt_version_id is None or row.prompt_version_id == filters.prompt_version_id)
    )


def _labels(*, organisation, dimension: str, keys) -> dict:
    from accounts.models import ApiKey, Team

    keys = [k for k in keys if k is not None]
    if dimension == "team_id":
        return {t.pk: t.name for t in Team.objects.filter(organisation=organisation, pk__in=keys)}
    if dimension == "api_key_id":
        return {k.pk: f"{k.name} ({k.prefix}…)" for k in ApiKey.objects.filter(organisation=organisation, pk__in=keys)}
    return {}


def _prompt_label(row: m.UsageDaily, dimension: str) -> str:
    """A prompt (version) named as the ledger recorded it; the registry is not read, and the
    ledger outlives the prompts it names."""
    if not row.prompt_name:
        return ""
    if dimension == "prompt_version_id" and row.prompt_version_number is not None:
        return f"{row.prompt_name} v{row.prompt_version_number}"
    return row.prompt_name


def usage_report(*, organisation, filters: UsageFilters, breakdown: str = "model") -> UsageReport:
    """Cost and tokens per day, a breakdown by one dimension (largest cost first) and the total."""
    if breakdown not in BREAKDOWNS:
        breakdown = "model"
    dimension = BREAKDOWNS[breakdown]
    date_from, date_to = _range(organisation=organisation, filters=filters)
    report = UsageReport(date_from=date_from, date_to=date_to)
    rows = _daily_rows(organisation=organisation, filters=filters, date_from=date_from, date_to=date_to)
    days: dict[dt.date, UsageRow] = {}
    day = date_from
    while day <= date_to:
        days[day] = UsageRow(key=day, label=day.isoformat())
        day += dt.timedelta(days=1)
    groups: dict[object, UsageRow] = {}
    for row in rows:
        for target in (
            days.setdefault(row.day, UsageRow(key=row.day, label=row.day.isoformat())),
            groups.setdefault(getattr(row, dimension), UsageRow(key=getattr(row, dimension), label="")),
            report.total,
        ):
            target.requests += row.requests
            target.prompt_tokens += row.prompt_tokens
            target.completion_tokens += row.completion_tokens
            target.cost += row.cost
    if dimension in ("prompt_id", "prompt_version_id"):
        # The latest day's name wins for a prompt renamed within the range.
        labels = {}
        for row in sorted(rows, key=lambda r: r.day):
            label = _prompt_label(row, dimension)
            if label:
                labels[getattr(row, dimension)] = label
    else:
        labels = _labels(organisation=organisation, dimension=dimension, keys=groups.keys())
    for key, group in groups.items():
        if key is None:
            group.label = "(none)"
        else:
            group.label = labels.get(key, str(key))
    report.series = [days[d] for d in sorted(days)]
    report.breakdown = sorted(groups.values(), key=lambda r: (-r.cost, r.label))
    return report


def top_spenders(*, organisation, filters: UsageFilters, limit: int = 5) -> dict[str, list[UsageRow]]:
    """The API keys and teams that spent most in the range."""
    report_keys = usage_report(organisation=organisation, filters=filters, breakdown="api_key")
    report_teams = usage_report(organisation=organisation, filters=filters, breakdown="team")
    return {
        "api_keys": [r for r in report_keys.breakdown if r.key is not None][:limit],
        "teams": [r for r in report_teams.breakdown if r.key is not None][:limit],
    }


@dataclass(frozen=True)
class SpendSummary:
    today: dt.date
    month_start: dt.date
    today_cost: Decimal
    today_requests: int
    month_cost: Decimal
    month_requests: int


def spend_summary(*, organisation) -> SpendSummary:
    """Spend today and this calendar month, in the organisation's time zone: the usage report for
    the first of the month to today (`GET /api/v1/billing/usage/?date_from=…&date_to=…`), its
    total and its last day. Reads the month's daily rollups and today's ledger (at most 31 days)."""
    today = local_day(timezone.now(), organisation.time_zone)
    month_start = today.replace(day=1)
    report = usage_report(organisation=organisation, filters=UsageFilters(date_from=month_start, date_to=today))
    last = report.series[-1]
    return SpendSummary(
        today=today,
        month_start=month_start,
        today_cost=last.cost,
        today_requests=last.requests,
        month_cost=report.total.cost,
        month_requests=report.total.requests,
    )


@dataclass
class BudgetStatus:
    budget: m.Budget
    spent: Decimal
    reserved: Decimal
    period_start: dt.datetime
    resets_at: dt.datetime | None
    alerted: bool
    prompt_name: str = ""  # a prompt budget's prompt, by name

    @property
    def percent(self) -> int:
        """The share of the amount spent, uncapped: a soft budget spent twice over says 200."""
        if self.budget.amount <= 0:
            return 100
        return int(self.spent * 100 / self.budget.amount)

    @property
    def bar_percent(self) -> int:
        """The bar's width: full at 100 %, however far past it the spend is."""
        return min(100, self.percent)

    @property
    def over(self) -> bool:
        return self.spent > self.budget.amount or (self.budget.amount <= 0 and self.spent > 0)

    @property
    def over_threshold(self) -> bool:
        pct = self.budget.soft_threshold_percent
        return pct is not None and self.spent * 100 >= self.budget.amount * pct


def budgets_status(*, organisation, api_key_id: int | None = None) -> list[BudgetStatus]:
    """Every budget of the organisation (or those applying to one key) with its consumption in the
    current period: the larger of the ledger and Redis' settled counter (the ledger lags the proxy
    by the log consumer's batch), plus reservations in flight."""
    from billing.services import BudgetScope

    config = billing_config_load(organisation.pk)
    budgets = {b.pk: b for b in m.Budget.objects.filter(organisation=organisation).select_related("team", "api_key")}
    now = timezone.now()
    out = []
    key_scope = None
    if api_key_id is not None:
        from accounts.models import ApiKey

        key = ApiKey.objects.filter(organisation=organisation, pk=api_key_id).first()
        key_scope = BudgetScope(organisation.pk, api_key_id, key.team_id if key else None)
    for rule in config.rules:
        budget = budgets.get(rule.id)
        if budget is None or (
            key_scope is not None and rule.scope != m.BudgetScope.PROMPT and not rule.applies(key_scope)
        ):
            continue
        if key_scope is not None and rule.scope == m.BudgetScope.PROMPT:
            continue
        start, end = period_bounds(rule.period, at=now, time_zone=config.time_zone)
        spent = budget_spent_from_ledger(rule=rule, organisation_id=organisation.pk, start=start, end=end)
        reserved = ZERO
        try:
            counted, reserved = budget_counters_read(rule=rule, period_start=start)
            if counted is not None and counted > spent:
                spent = counted
        except Exception:
            logger.warning("billing: Redis counters unavailable; budget status from the ledger only")
        alerted = m.BudgetAlert.objects.filter(budget_id=rule.id, period_start=start).exists()
        out.append(
            BudgetStatus(
                budget=budget, spent=spent, reserved=reserved, period_start=start, resets_at=end, alerted=alerted
            )
        )
    names = prompt_names(organisation=organisation, ids=[s.budget.prompt_id for s in out if s.budget.prompt_id])
    for status in out:
        status.prompt_name = names.get(status.budget.prompt_id, "")
    return out


# --- names for pickers and tables ------------------------------------------------------------


def _ledger_prompt_rows(*, organisation, prompt_id: int | None = None) -> list[dict]:
    """(prompt, version) pairs the organisation's ledger has recorded, each with the names it last
    recorded for them and when: the rollups, plus the ledger for days not rolled up yet."""
    today = local_day(timezone.now(), organisation.time_zone)
    pending = set(m.RollupPending.objects.filter(organisation_id=organisation.pk).values_list("day", flat=True))
    since, _ = day_bounds(min(pending | {today}), organisation.time_zone)
    dims = ("prompt_id", "prompt_name", "prompt_version_id", "prompt_version_number")
    daily = m.UsageDaily.objects.filter(organisation_id=organisation.pk, prompt_id__isnull=False)
    live = m.UsageLine.objects.filter(organisation_id=organisation.pk, prompt_id__isnull=False, started_at__gte=since)
    if prompt_id is not None:
        daily, live = daily.filter(prompt_id=prompt_id), live.filter(prompt_id=prompt_id)
    rows = list(daily.values(*dims).annotate(seen=Max("day")).order_by()) + [
        {**r, "seen": local_day(r["seen"], organisation.time_zone)}
        for r in live.values(*dims).annotate(seen=Max("started_at")).order_by()
    ]
    return sorted(rows, key=lambda r: r["seen"])


def usage_models(*, organisation) -> list[str]:
    """The models the organisation's usage names, sorted (the usage page's model picker)."""
    today = local_day(timezone.now(), organisation.time_zone)
    pending = set(m.RollupPending.objects.filter(organisation_id=organisation.pk).values_list("day", flat=True))
    since, _ = day_bounds(min(pending | {today}), organisation.time_zone)
    daily = m.UsageDaily.objects.filter(organisation_id=organisation.pk).values_list("model", flat=True)
    live = m.UsageLine.objects.filter(organisation_id=organisation.pk, started_at__gte=since).values_list(
        "model", flat=True
    )
    return sorted(set(daily.distinct()) | set(live.distinct()))


def usage_prompt_choices(*, organisation) -> list[tuple[int, str]]:
    """The prompts the organisation's usage names, by the name last recorded (the ledger outlives
    prompts, so a deleted prompt's spend can still be picked), sorted by name."""
    names: dict[int, str] = {}
    for row in _ledger_prompt_rows(organisation=organisation):
        if row["prompt_name"] or row["prompt_id"] not in names:
            names[row["prompt_id"]] = row["prompt_name"] or f"prompt #{row['prompt_id']}"
    return sorted(names.items(), key=lambda item: (item[1].lower(), item[0]))


def usage_prompt_version_choices(*, organisation, prompt_id: int) -> list[tuple[int, str]]:
    """The versions of one prompt the organisation's usage names ("v3"), newest number first."""
    numbers: dict[int, int | None] = {}
    for row in _ledger_prompt_rows(organisation=organisation, prompt_id=prompt_id):
        if row["prompt_version_id"] is not None:
            numbers[row["prompt_version_id"]] = row["prompt_version_number"] or numbers.get(row["prompt_version_id"])
    ordered = sorted(numbers.items(), key=lambda item: (-(item[1] or 0), item[0]))
    return [(pk, f"v{number}" if number is not None else f"version #{pk}") for pk, number in ordered]


def prompt_choices(*, organisation) -> list[tuple[int, str]]:
    """The organisation's prompts a budget can apply to, by name (the registry's, through the lookup
    the proxy registers; the ledger's names without one)."""
    from billing.targets import PROMPT, target_choices, target_lookup

    if target_lookup(PROMPT) is None:
        return usage_prompt_choices(organisation=organisation)
    return [(t.id, t.name) for t in target_choices(organisation_id=organisation.pk, kind=PROMPT)]


def prompt_names(*, organisation, ids) -> dict[int, str]:
    """Names of prompt ids: the registry's current ones, else the last the ledger recorded."""
    from billing.targets import PROMPT, target_names

    ids = [i for i in ids if i is not None]
    if not ids:
        return {}
    names = dict(usage_prompt_choices(organisation=organisation))
    names = {i: names[i] for i in ids if i in names}
    names.update(target_names(organisation_id=organisation.pk, kind=PROMPT, ids=ids))
    return names


def deployment_choices(*, organisation):
    """The organisation's deployments a price can apply to ("route / deployment", with its model)."""
    from billing.targets import DEPLOYMENT, target_choices

    return target_choices(organisation_id=organisation.pk, kind=DEPLOYMENT)


def deployment_names(*, organisation, ids) -> dict[int, str]:
    from billing.targets import DEPLOYMENT, target_names

    return target_names(organisation_id=organisation.pk, kind=DEPLOYMENT, ids=[i for i in ids if i is not None])


def budget_alerts_current(*, organisation) -> list[BudgetStatus]:
    """Budgets past their soft threshold in the current period (the banner)."""
    return [s for s in budgets_status(organisation=organisation) if s.alerted or s.over_threshold]


def budget_get(*, organisation, budget_id: int) -> m.Budget:
    return m.Budget.objects.get(organisation=organisation, pk=budget_id)


def budgets_list(*, organisation) -> QuerySet[m.Budget]:
    return m.Budget.objects.filter(organisation=organisation).select_related("team", "api_key").order_by("name")


def prices_list(*, organisation, model: str = "", include_global: bool = True, limit: int = 200) -> list[m.Price]:
    """The organisation's own prices (all, newest first) and, when searched, global ones."""
    qs = m.Price.objects.filter(
        Q(organisation=organisation) | Q(organisation__isnull=True) if include_global else Q(organisation=organisation)
    )
    if model:
        qs = qs.filter(model__icontains=model)
    elif include_global:
        qs = qs.filter(Q(organisation=organisation) | Q(source=m.PriceSource.DEMO))
    return list(qs.order_by(F("organisation_id").desc(nulls_last=True), "model", "-effective_from")[:limit])


def billing_settings_get(*, organisation) -> m.BillingSettings:
    return m.BillingSettings.objects.filter(organisation=organisation).first() or m.BillingSettings(
        organisation=organisation
    )


def webhook_secret_state(*, settings_row: m.BillingSettings) -> str:
    """ "unset", "set", or "unreadable": stored under an encryption key that has since changed, so
    alerts fail unsent until an admin sets the secret again."""
    if not settings_row.webhook_secret_encrypted:
        return "unset"
    return "set" if secret_decrypt(settings_row.webhook_secret_encrypted) is not None else "unreadable"


@dataclass
class ReconcileDifference:
    organisation_id: int
    day: dt.date
    dims: tuple
    expected: tuple | None
    found: tuple | None


def rollups_compare(*, organisation_ids: list[int] | None = None) -> list[ReconcileDifference]:
    """Recompute every rollup from the ledger and list where the stored rollups differ."""
    differences = []
    orgs = organisation_ids
    if orgs is None:
        orgs = sorted(
            set(m.UsageLine.objects.values_list("organisation_id", flat=True).distinct())
            | set(m.UsageDaily.objects.values_list("organisation_id", flat=True).distinct())
        )
    for org_id in orgs:
        tz = billing_config_load(org_id).time_zone
        first = m.UsageLine.objects.filter(organisation_id=org_id).order_by("started_at").first()
        last = m.UsageLine.objects.filter(organisation_id=org_id).order_by("-started_at").first()
        days = set(m.UsageDaily.objects.filter(organisation_id=org_id).values_list("day", flat=True))
        if first and last:
            day = local_day(first.started_at, tz)
            while day <= local_day(last.started_at, tz):
                days.add(day)
                day += dt.timedelta(days=1)
        for day in sorted(days):
            expected = {
                _dims(r): _measures(r) for r in rollup_rows_compute(organisation_id=org_id, day=day, time_zone=tz)
            }
            found = {_dims(r): _measures(r) for r in m.UsageDaily.objects.filter(organisation_id=org_id, day=day)}
            for dims in sorted(set(expected) | set(found), key=repr):
                if expected.get(dims) != found.get(dims):
                    differences.append(ReconcileDifference(org_id, day, dims, expected.get(dims), found.get(dims)))
    return differences


def _dims(row: m.UsageDaily) -> tuple:
    return tuple(getattr(row, d) for d in ROLLUP_DIMENSIONS)


def _measures(row: m.UsageDaily) -> tuple:
    return (
        row.requests,
        row.lines,
        row.prompt_tokens,
        row.completion_tokens,
        row.cached_tokens,
        row.reasoning_tokens,
        row.cost,
    )


def key_spend(*, organisation, api_key_id: int, since: dt.datetime) -> dict:
    """A key's own spend since `since`, straight from the ledger (real time)."""
    agg = m.UsageLine.objects.filter(
        organisation_id=organisation.pk, api_key_id=api_key_id, started_at__gte=since
    ).aggregate(
        cost=Sum("cost"),
        requests=Count("request_id", distinct=True),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
    )
    return {
        "cost": agg["cost"] or ZERO,
        "requests": agg["requests"] or 0,
        "prompt_tokens": agg["prompt_tokens"] or 0,
        "completion_tokens": agg["completion_tokens"] or 0,
    }


def model_price_known(*, organisation_id: int, model: str, deployment_id: int | None = None) -> bool:
    """Whether a price (an administrator's deliberate "free" included) is in force now for `model`
    as the organisation's deployment `deployment_id` would be billed. Without one, a hard budget
    cannot bound the model's calls: deployments of it are not enabled and budgeted calls refused."""
    from billing.services import price_resolve

    at = timezone.now()
    return price_resolve(organisation_id=organisation_id, model=model, deployment_id=deployment_id, at=at) is not None


def models_unpriced(*, organisation_id: int, targets: list[tuple[str, int | None]]) -> list[str]:
    """The models among (model, deployment id) pairs that have no price in force now, each once, in order."""
    missing: list[str] = []
    for model, deployment_id in targets:
        if model not in missing and not model_price_known(
            organisation_id=organisation_id, model=model, deployment_id=deployment_id
        ):
            missing.append(model)
    return missing


def requests_unpriced(*, organisation_id: int, request_ids: list[str]) -> set[str]:
    """Those of the requests whose ledger has a line priced at nothing because no price was known."""
    if not request_ids:
        return set()
    return set(
        m.UsageLine.objects.filter(
            organisation_id=organisation_id, request_id__in=request_ids, basis=m.CostBasis.NO_PRICE
        ).values_list("request_id", flat=True)
    )


def request_usage_lines(*, organisation_id: int, request_id: str) -> list[m.UsageLine]:
    """The ledger lines of one request, one per attempt."""
    return list(m.UsageLine.objects.filter(organisation_id=organisation_id, request_id=request_id).order_by("attempt"))


def unpriced_usage(*, organisation, filters: UsageFilters) -> list[dict]:
    """Per model, the calls recorded at no cost because no price was known, in the report's range:
    their real cost is unknown, so the usage page says so rather than let them pass as free."""
    date_from, date_to = _range(organisation=organisation, filters=filters)
    start, _ = day_bounds(date_from, organisation.time_zone)
    _, end = day_bounds(date_to, organisation.time_zone)
    lines = m.UsageLine.objects.filter(
        organisation_id=organisation.pk, basis=m.CostBasis.NO_PRICE, started_at__gte=start, started_at__lt=end
    )
    if filters.team_id is not None:
        lines = lines.filter(team_id=filters.team_id)
    if filters.api_key_id is not None:
        lines = lines.filter(api_key_id=filters.api_key_id)
    if filters.model:
        lines = lines.filter(model=filters.model)
    return list(
        lines.values("model")
        .annotate(lines=Count("id"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"))
        .order_by("model")
    )


# --- requestlog helper (#17): a page of the request log's costs in one query ----------------------


@dataclass(frozen=True)
class RequestCost:
    """What the ledger says one request cost: the sum of its attempts' lines.

    `unpriced`: a line was recorded at nothing because no price was known (the real cost is unknown);
    `estimated`: a line was priced from estimated usage; `cached`: served from Steward's cache."""

    total: Decimal
    currency: str
    unpriced: bool
    estimated: bool
    cached: bool

    @property
    def display(self) -> str:
        """The total without the ledger's trailing zeros (0.000017, not 0.000017000000)."""
        return f"{self.total.normalize():f}"


def request_costs(*, organisation_id: int, request_ids: list[str]) -> dict[str, RequestCost]:
    """Request id -> its cost, for the requests that have ledger lines (one query, by the ledger's
    (request_id, attempt) unique index: a page of 50 requests reads about 50 index entries)."""
    if not request_ids:
        return {}
    rows = (
        m.UsageLine.objects.filter(organisation_id=organisation_id, request_id__in=request_ids)
        .values("request_id")
        .annotate(
            total=Sum("cost"),
            currency=Max("currency"),
            unpriced=Count("id", filter=Q(basis=m.CostBasis.NO_PRICE)),
            estimated=Count("id", filter=Q(basis=m.CostBasis.ESTIMATED)),
            cached=Count("id", filter=Q(basis=m.CostBasis.CACHED)),
        )
        .order_by()
    )
    return {
        row["request_id"]: RequestCost(
            total=row["total"] or ZERO,
            currency=row["currency"] or "USD",
            unpriced=row["unpriced"] > 0,
            estimated=row["estimated"] > 0,
            cached=row["cached"] > 0,
        )
        for row in rows
    }
